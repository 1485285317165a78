"""Train → save → load → classify → evaluate on the real seed set with the real bundled encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import cross_val_score

from qualcode.classification import PREDICTION_COLUMNS, classify, read_inputs
from qualcode.codebook import load_codebook
from qualcode.demo import skane_notes
from qualcode.errors import QualcodeError
from qualcode.evaluation import evaluate
from qualcode.model.classifier import ThemeClassifier
from qualcode.model.review_rule import confidence_threshold
from qualcode.model.storage import load_model
from qualcode.training import read_labels, train

from .conftest import CORPORA


@pytest.fixture(scope="module")
def codebook():
    return load_codebook(CORPORA / "codebook.yaml")


@pytest.fixture(scope="module")
def labels(codebook):
    return read_labels(CORPORA / "labels" / "seed_set.csv", codebook)


@pytest.fixture(scope="module")
def model(seed_trained):
    return seed_trained


@pytest.fixture(scope="module")
def saved(seed_model):
    return seed_model


def test_seed_set_is_a_real_labelled_set(labels, codebook):
    primary = labels["theme"].str.split(";").str[0].value_counts()
    assert len(labels) >= 150
    assert set(primary.index) == set(codebook.ids)
    assert primary.min() >= 10
    notes = skane_notes(CORPORA)
    assert not set(notes["text"]) & set(labels["text"]), "demo batch leaked into the seed set"


@pytest.mark.slow
def test_classifier_is_a_scikit_learn_estimator(labels, codebook, encoder):
    texts = labels["text"].tolist()
    themes = labels["theme"].str.split(";").str[0].tolist()
    # fixed settings inside cross_val_score (its clones keep them); the last fit chooses its own
    clf = ThemeClassifier(codebook=codebook, C=10.0, prior_weight=0.25)
    scores = cross_val_score(clf, texts, themes, cv=3, scoring="accuracy")
    chance = labels["theme"].str.split(";").str[0].value_counts(normalize=True).max()
    assert scores.mean() > chance + 0.15
    fitted = clf.set_params(C="auto", prior_weight="auto").fit(texts, themes)
    assert list(fitted.classes_) == codebook.ids
    proba = fitted.predict_proba(["Vi behöver gemensamma utbildningsdagar för personalen."])
    assert proba.shape == (1, len(codebook.ids)) and np.isclose(proba.sum(), 1)
    assert fitted.predict(["Vi behöver gemensamma utbildningsdagar för personalen."])[0] == (
        "shared_training"
    )
    assert fitted.C_ in (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)


def test_model_card_and_reload_reproduce_predictions(model, saved, codebook):
    card = json.loads((saved / "model.json").read_text())
    assert card["codebook"]["sha256"] == codebook.sha256
    assert card["encoder"]["identity"].startswith("e5-small@")
    assert card["training_data"]["segments"] >= 150
    assert card["cv"]["macro_f1"] > 0.4
    assert {"qualcode", "scikit-learn", "sentence-transformers", "torch"} <= set(card["versions"])
    assert not list(saved.rglob("*.pkl")) and not list(saved.rglob("*.joblib"))
    with np.load(saved / "head.npz", allow_pickle=False) as arrays:
        assert arrays["coef"].shape[0] == len(codebook.ids)

    reloaded = load_model(saved, codebook)
    texts = skane_notes(CORPORA)["text"].tolist()[:20]
    assert np.allclose(reloaded.predict_proba(texts), model.predict_proba(texts), atol=1e-5)


def test_classify_skane_notes(model, codebook):
    notes = skane_notes(CORPORA)
    predictions = classify(model, notes, progress=False)
    assert len(predictions) == len(notes)
    assert list(predictions.columns[: len(notes.columns)]) == list(notes.columns)
    assert set(PREDICTION_COLUMNS) <= set(predictions.columns)
    assert {f"p_{t}" for t in codebook.ids} <= set(predictions.columns)
    p = predictions[[f"p_{t}" for t in codebook.ids]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1, atol=1e-3)
    assert (predictions["confidence"] >= predictions["margin"]).all()
    assert (predictions["theme"] != predictions["second_theme"]).all()
    flagged = predictions[predictions["needs_review"]]
    assert (flagged["review_reason"] != "").all()
    assert (predictions.loc[~predictions["needs_review"], "review_reason"] == "").all()
    # The notes talk about continuity and mobile teams; the model must see more than one theme.
    assert predictions["theme"].nunique() >= 4
    continuity = predictions[predictions["text"].str.contains("Kontinuitet i SIPen", regex=False)]
    assert continuity["theme"].iloc[0] in {"shared_view_continuity", "coordination_roles"}


def test_target_accuracy_moves_the_flag_threshold(model):
    strict, lenient = model.rule_for(0.95), model.rule_for(0.6)
    assert strict.min_confidence >= lenient.min_confidence
    assert strict.expected_coverage <= lenient.expected_coverage


def test_confidence_threshold_meets_target_on_its_evidence():
    confidence = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0], dtype=bool)
    assert confidence_threshold(confidence, correct, 1.0) == 0.8
    assert confidence_threshold(confidence, correct, 0.8) == 0.6  # 5 of 6 kept
    assert confidence_threshold(confidence, ~correct & False, 0.5) > 1


@pytest.mark.slow
def test_nested_evaluation_is_honest_and_complete(labels, codebook):
    result = evaluate(labels, codebook, folds=3, progress=False)
    summary = result.summary()
    assert summary["folds"] == 3 and summary["segments"] == len(labels)
    assert 0.35 < summary["macro_f1"] < 0.95
    assert result.confusion().to_numpy().sum() == len(labels)
    curve = result.risk_coverage()
    assert curve["accuracy"].iloc[-1] >= curve["accuracy"].iloc[0]
    assert 0 <= summary["review"]["coverage"] <= 1
    assert len(result.per_theme()) == len(codebook.ids)


def test_model_for_another_codebook_or_format_is_refused(saved, codebook, tmp_path):
    other = tmp_path / "codebook.yaml"
    other.write_text(
        (CORPORA / "codebook.yaml").read_text(encoding="utf-8").replace("Övrigt", "Annat"),
        encoding="utf-8",
    )
    with pytest.raises(QualcodeError, match="different codebook"):
        load_model(saved, load_codebook(other))

    old = tmp_path / "old"
    shutil.copytree(saved, old)
    card = json.loads((old / "model.json").read_text())
    card["format"] = 0
    (old / "model.json").write_text(json.dumps(card))
    from qualcode.model.encoders import write_manifest

    write_manifest(old, kind="qualcode-model", format=0)
    with pytest.raises(QualcodeError, match="model format 0"):
        load_model(old)


def test_truncated_or_missing_model_directory(saved, tmp_path):
    with pytest.raises(QualcodeError, match="does not exist"):
        load_model(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    head = broken / "head.npz"
    head.write_bytes(head.read_bytes()[:100])
    with pytest.raises(QualcodeError, match="checksum"):
        load_model(broken)


def test_read_inputs_accepts_segment_tables_and_documents(tmp_path):
    table = tmp_path / "segments.csv"
    pd.DataFrame({"segment_id": ["a", "b"], "text": ["Ett", "Två"]}).to_csv(table, index=False)
    assert read_inputs([table])["text"].tolist() == ["Ett", "Två"]
    document = tmp_path / "anteckningar.txt"
    document.write_text(
        "RUNDA 1\n\n- Mobila team behövs\n- Gemensam utbildning\n", encoding="utf-8"
    )
    segments = read_inputs([document])
    assert segments["text"].tolist() == ["Mobila team behövs", "Gemensam utbildning"]
    dup = tmp_path / "dup.csv"
    pd.DataFrame({"segment_id": ["a", "a"], "text": ["Ett", "Två"]}).to_csv(dup, index=False)
    with pytest.raises(QualcodeError, match="duplicate segment_id"):
        read_inputs([dup])


@pytest.mark.slow
def test_tfidf_baseline_and_multi_label_round_trip(labels, codebook, tmp_path):
    primary = labels["theme"].str.split(";").str[0]
    subset = labels.groupby(primary, group_keys=False).head(8)
    for kwargs in ({"encoder": "tfidf"}, {"multi_label": True}):
        model = train(subset, codebook, progress=False, **kwargs)
        path = model.save(tmp_path / next(iter(kwargs)))
        reloaded = load_model(path)
        texts = labels["text"].tolist()[:10]
        assert np.allclose(reloaded.predict_proba(texts), model.predict_proba(texts), atol=1e-5)
        out = classify(reloaded, labels.head(10), progress=False)
        if kwargs.get("multi_label"):
            assert "themes" in out.columns and out["themes"].str.len().min() > 0


@pytest.mark.slow
def test_demo_writes_predictions_and_report(tmp_path):
    from qualcode.demo import run_demo

    result = run_demo(tmp_path / "out", tmp_path / "model", progress=False)
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"segments.csv", "predictions.csv", "report.html"}
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    total = len(result.predictions)
    assert f'<span id="total-segments">{total}</span>' in page
    flagged = int(result.predictions["needs_review"].sum())
    assert f'<span id="total-flagged">{flagged}</span>' in page
    assert "DISKUSSIONSGRUPP" in page  # grouped by section: the discussion groups
