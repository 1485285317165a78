"""Fine-tuning of the real bundled encoder on a tiny Swedish labelled set of the tests' own
(``tests/data/topics_sv.tsv``: 8 sentences per topic), so CI tests it everywhere."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from .conftest import cli_succeeds

THEMES = ("sports", "health", "travel", "politics")
CODEBOOK_YAML = """\
name: sib-mini
themes:
  - id: sports
    label: sport
    description: idrott, tävlingar, matcher och idrottare
  - id: health
    label: hälsa
    description: sjukdomar, vård, medicin och hälsa
  - id: travel
    label: resor
    description: resor, turism, resmål och att resa utomlands
  - id: politics
    label: politik
    description: politik, val, regeringar och partier
"""

TOPICS = Path(__file__).parent / "data" / "topics_sv.tsv"
pytestmark = pytest.mark.slow


def _subset(per_class: int, offset: int = 0) -> pd.DataFrame:
    table = pd.read_csv(TOPICS, sep="\t")
    parts = [
        table[table["category"] == theme].iloc[offset : offset + per_class] for theme in THEMES
    ]
    return pd.concat(parts, ignore_index=True)


def _state_hash(model) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy())  # hashed in place, not copied
    return h.hexdigest()


def _separation(model, texts: list[str], themes: list[str]) -> float:
    """Mean cosine of same-theme pairs minus mean cosine of different-theme pairs."""
    emb = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    sims = emb @ emb.T
    labels = np.asarray(themes)
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(texts), dtype=bool)
    return float(sims[same & off_diagonal].mean() - sims[~same].mean())


@pytest.fixture(scope="module")
def tiny() -> pd.DataFrame:
    return _subset(4)


FAST = {"steps": 3, "batch_size": 8, "learning_rate": 1e-4, "max_seq_length": 48}


@pytest.fixture(scope="module")
def tuned(encoder, tiny):
    from qualcode.model.finetune import finetune_encoder

    before = _state_hash(encoder)
    model = finetune_encoder(
        encoder, tiny["text"].tolist(), tiny["category"].tolist(), seed=0, progress=False, **FAST
    )
    return model, before


def test_same_theme_segments_move_closer(encoder, tiny, tuned):
    model, _ = tuned
    texts, themes = tiny["text"].tolist(), tiny["category"].tolist()
    before, after = _separation(encoder, texts, themes), _separation(model, texts, themes)
    assert after > before + 0.02, (before, after)
    # ... and it generalises a little to segments it was not trained on
    held = _subset(4, offset=4)
    texts, themes = held["text"].tolist(), held["category"].tolist()
    assert _separation(model, texts, themes) > _separation(encoder, texts, themes)


def test_word_embeddings_frozen_and_base_untouched(encoder, tuned):
    from qualcode.model.encoders import encoder_identity
    from qualcode.model.finetune import _word_embeddings

    model, before = tuned
    assert model is not encoder
    assert torch.equal(_word_embeddings(model).weight, _word_embeddings(encoder).weight)
    assert model[0].tokenizer is encoder[0].tokenizer  # shared, as the frozen embeddings
    assert _state_hash(encoder) == before  # the cached base encoder was not mutated
    assert not encoder.training and not model.training
    assert all(p.requires_grad for p in encoder.parameters())
    assert model.max_seq_length == encoder.max_seq_length
    assert encoder_identity(model) != encoder_identity(encoder)
    # the body did move
    body = "0.auto_model.encoder.layer.11.output.dense.weight"
    base_state = encoder.state_dict()
    if body in base_state:
        assert not torch.equal(model.state_dict()[body], base_state[body])


def test_deterministic_under_seed(encoder, tiny, tuned):
    from qualcode.model.finetune import finetune_encoder

    model, _ = tuned
    texts, themes = tiny["text"].tolist(), tiny["category"].tolist()
    again = finetune_encoder(encoder, texts, themes, seed=0, progress=False, **FAST)
    assert _state_hash(again) == _state_hash(model)
    other = finetune_encoder(encoder, texts, themes, seed=1, progress=False, **FAST)
    assert _state_hash(other) != _state_hash(model)


def test_contrastive_batches_are_balanced_and_reproducible():
    from qualcode.model.finetune import contrastive_batches

    themes = ["a"] * 8 + ["b"] * 8 + ["c"] * 8 + ["d"] * 1
    batches = contrastive_batches(themes, steps=30, batch_size=8, seed=3)
    assert [b.tolist() for b in batches] == [
        b.tolist() for b in contrastive_batches(themes, steps=30, batch_size=8, seed=3)
    ]
    labels = np.asarray(themes)
    for batch in batches:
        present = labels[batch]
        assert len(set(present)) >= 2  # negatives in every batch
        assert any((present == t).sum() >= 2 for t in set(present))  # and positives
    used = np.concatenate(batches)
    counts = np.bincount(used, minlength=len(themes))[:24]
    assert counts.max() - counts.min() <= 3  # segments are visited evenly


def test_finetuned_model_save_load_classify_round_trip(tmp_path, monkeypatch):
    """A fine-tuned model holds its encoder, writes it into the model folder without touching
    the base encoder, and, loaded again, `qualcode classify` predicts what it did in memory."""
    from qualcode.codebook import load_codebook
    from qualcode.model import finetune
    from qualcode.model.classifier import get_encoder
    from qualcode.model.storage import load_model
    from qualcode.training import train

    monkeypatch.setattr(finetune, "DEFAULT_MIN_STEPS", 2)  # keep the test fast
    monkeypatch.setattr(finetune, "DEFAULT_MAX_STEPS", 2)
    monkeypatch.setattr(finetune, "DEFAULT_MAX_SEQ_LENGTH", 48)
    labels = _subset(4)[["text", "category"]].rename(columns={"category": "theme"})
    (tmp_path / "codebook.yaml").write_text(CODEBOOK_YAML, encoding="utf-8")
    base = get_encoder(None)
    before = _state_hash(base)
    model = train(labels, load_codebook(tmp_path / "codebook.yaml"), finetune=True, progress=False)
    assert _state_hash(base) == before
    tuned = model.classifier.encoder
    assert not isinstance(tuned, str) and tuned is not base  # the estimator holds its encoder
    assert model.card["encoder"]["finetuned"] is True
    model.save(tmp_path / "model")
    assert (tmp_path / "model" / "encoder" / "model.safetensors").exists()
    reloaded = load_model(tmp_path / "model")  # loads the saved encoder from the folder
    assert reloaded.classifier.encoder is not tuned
    new = _subset(3, offset=4)
    texts = new["text"].tolist()
    reference = model.predict_proba(texts)
    np.testing.assert_allclose(reloaded.predict_proba(texts), reference, atol=1e-5)
    new[["text"]].to_csv(tmp_path / "new.csv", index=False)
    cli_succeeds(
        "classify", tmp_path / "model", tmp_path / "new.csv", "-o", tmp_path / "p.csv",
        "--no-adapt", "-q",
    )  # fmt: skip
    predictions = pd.read_csv(tmp_path / "p.csv")
    columns = [f"p_{t}" for t in reloaded.classes_]
    np.testing.assert_allclose(predictions[columns].to_numpy(float), reference, atol=1e-4)
    assert (predictions["theme"] == new["category"].to_numpy()).mean() >= 0.5


def test_pair_loss_prefers_separated_embeddings():
    from qualcode.model.finetune import _pair_loss

    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    separated = torch.eye(3).repeat_interleave(2, dim=0) + 0.01 * torch.arange(6.0)[:, None]
    mixed = torch.eye(3)[[0, 1, 2, 0, 1, 2]] + 0.01 * torch.arange(6.0)[:, None]
    assert _pair_loss(separated, labels) < _pair_loss(mixed, labels)


def test_finetuned_head_evidence_is_cross_fitted(monkeypatch, encoder):
    """The review rule of a fine-tuned model comes from segments its encoder never saw."""
    from qualcode.codebook import parse_codebook
    from qualcode.model import finetune
    from qualcode.training import FINETUNED_HEAD_C, FINETUNED_PRIOR_WEIGHT, fit_classifier

    monkeypatch.setattr(finetune, "DEFAULT_MIN_STEPS", 2)
    monkeypatch.setattr(finetune, "DEFAULT_MAX_STEPS", 2)
    monkeypatch.setattr(finetune, "DEFAULT_MAX_SEQ_LENGTH", 48)
    seen: list[set[str]] = []
    real = finetune.finetune_encoder

    def recording(base, texts, themes, *args, **kwargs):
        seen.append(set(texts))
        return real(base, texts, themes, *args, **kwargs)

    monkeypatch.setattr(finetune, "finetune_encoder", recording)
    import yaml

    codebook = parse_codebook(yaml.safe_load(CODEBOOK_YAML), source="test")
    labels = _subset(4)
    texts, themes = labels["text"].tolist(), labels["category"].tolist()
    clf, rule = fit_classifier(texts, themes, codebook, finetune=True, progress=False)
    assert (clf.C_, clf.prior_weight_) == (FINETUNED_HEAD_C, FINETUNED_PRIOR_WEIGHT)
    assert list(clf.cv_scores_) == [(FINETUNED_HEAD_C, FINETUNED_PRIOR_WEIGHT, 0.0)]
    everything, first, second = seen  # the model's own fine-tune, then one per fold
    assert everything == set(texts)
    assert first.isdisjoint(second) and first | second == set(texts)
    assert clf.oof_proba_.shape == (16, 4) and 0 < clf.temperature_ < 100
    assert rule.target_accuracy == 0.9
