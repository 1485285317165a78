"""Theme discovery: keywords and compounds, tiny and covered inputs, one huge cluster,
determinism, and the command end to end on the sample corpora (real encoder, real model)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from qualcode import discovery
from qualcode.codebook import load_codebook, parse_codebook
from qualcode.discovery import discover
from qualcode.files.tables import read_table
from qualcode.model.keywords import Vocabulary, class_keywords, stem, words

from .conftest import CORPORA, run_cli

CODEBOOK = CORPORA / "codebook.yaml"
SEED_SET = CORPORA / "labels" / "seed_set.csv"

PLACES = ["vårdcentralen", "sjukhuset", "kommunhuset", "akuten", "äldreboendet", "hälsocentralen"]
WHO = ["patienterna", "de anhöriga", "personalen", "hemtjänsten", "besökarna", "läkarna"]
PARKING = [
    f"Det saknas parkeringsplatser vid {place} och {who} får gå långt."
    for place in PLACES
    for who in WHO
]


@pytest.fixture(scope="module")
def codebook():
    return load_codebook(CODEBOOK)


@pytest.fixture(scope="module")
def labels():
    """A stratified third of the seed set (quick to embed and fit)."""
    table = read_table(SEED_SET)
    table["first"] = table["theme"].str.split(";").str[0]
    small = pd.concat(g.head(8) for _, g in table.groupby("first")).drop(columns="first")
    return small.reset_index(drop=True)


@pytest.fixture(scope="module")
def model(codebook, labels, encoder):
    from qualcode.training import train

    return train(labels, codebook, progress=False)


@pytest.fixture(scope="module")
def notes(model):
    """The Skåne round-table notes, classified."""
    from qualcode.classification import classify
    from qualcode.demo import skane_notes

    return classify(model, skane_notes(CORPORA), progress=False)


# --------------------------------------------------------------------------- keywords


def test_swedish_stems_and_stop_words():
    assert stem("utbildningar") == stem("utbildningen") == "utbildning"
    assert stem("kommunerna") == "kommun"
    assert stem("hemsjukvårdens") == "hemsjukvård"
    assert words("Vi behöver och ska ha gemensamma utbildningar") == [
        "gemensamma",
        "utbildningar",
    ]


def test_compounds_count_their_known_parts():
    vocabulary = Vocabulary(["hemsjukvården och teamet", "ett hemsjukvårdsteam", "vårdcentral"])
    assert vocabulary.parts("hemsjukvårdsteam") == ("hemsjukvård", "team")
    assert vocabulary.parts("vårdcentralen") == ()  # not a compound of known words
    # parts need stems of four letters: "resenärer" is not "rese" + "närer" beside "nära"
    assert Vocabulary(["resenärer", "nära", "resa"]).parts("resenärer") == ()
    stems = [s for s, _ in vocabulary.terms("hemsjukvårdsteam behövs")]
    assert stems == ["hemsjukvårdsteam", "hemsjukvård", "team"]


def test_class_keywords_name_what_sets_a_group_apart():
    texts = [*PARKING[:6], "Gemensamma utbildningar för personalen", "Utbildningar i SIP"]
    groups = ["parking"] * 6 + ["training"] * 2
    keywords = class_keywords(texts, groups)
    assert keywords["parking"][0] == "parkeringsplatser"
    assert keywords["training"][0] == "utbildningar"


# --------------------------------------------------------------------------- the step


@pytest.mark.parametrize("n", [0, 1, 3])
def test_tiny_inputs_say_too_few(codebook, n):
    table = pd.DataFrame({"text": PARKING[:n]})
    result = discover(table, codebook)
    assert result.clusters == []
    assert "too few" in result.messages[0]
    assert result.summary().startswith("nothing to discover")
    assert result.suggestions()["themes"] == []


@pytest.mark.slow  # trains a model on the real encoder
def test_everything_covered_says_nothing_new(codebook, labels, model):
    """The model's own labelled segments: every group found lies within a known theme."""
    result = discover(labels, codebook, model=model)
    assert result.new == [], [(c.keywords, c.nearest_theme) for c in result.new]
    assert result.summary().startswith(("nothing to discover", "no new themes"))
    assert result.suggestions()["themes"] == []


@pytest.mark.slow  # trains a model on the real encoder
def test_a_single_huge_cluster_is_found_whole(codebook, model, notes):
    table = pd.concat([notes, pd.DataFrame({"text": PARKING})], ignore_index=True)
    result = discover(table, codebook, model=model, seed=1)
    parking = set(range(len(notes), len(table)))
    about_parking = [c for c in result.clusters if "parkeringsplatser" in c.keywords[:2]]
    assert about_parking and all(c.verdict == "new" for c in about_parking)
    found = {int(i) for c in about_parking for i in c.members}
    assert len(found & parking) >= 0.9 * len(parking)
    assert len(found - parking) <= 0.1 * len(found)  # and little else
    ids = [t["id"] for t in result.suggestions()["themes"]]
    assert any(i.startswith("ny_parkeringsplatser") for i in ids), ids


@pytest.mark.slow  # trains a model on the real encoder
def test_same_seed_same_clusters(codebook, model, notes):
    first = discover(notes, codebook, model=model, seed=3)
    again = discover(notes, codebook, model=model, seed=3)
    assert (first.assigned == again.assigned).all()
    assert [c.keywords for c in first.clusters] == [c.keywords for c in again.clusters]
    assert first.table().equals(again.table())


def test_a_cluster_settles_where_its_members_are(monkeypatch):
    """k-means put the cluster on the border with a known theme; the members that joined pull
    its centroid away, the border segments go back to the theme, and segments near the members
    (but far from the first centroid) join."""
    rng = np.random.default_rng(0)

    def around(direction, n):
        return discovery._unit(np.asarray(direction, float) + rng.normal(0, 0.03, (n, 3)))

    theme = np.array([[1.0, 0.0, 0.0]])
    border, members, beyond = (
        around([1, 1.2, 0], 4),
        around([0.2, 0.5, 0.84], 10),
        around([0.3, 0, 0.95], 10),
    )
    x = np.vstack([border, members, beyond])
    clustered = np.r_[np.zeros(4, dtype=int), np.full(20, -1)]  # k-means saw the border only
    everyone = np.ones(len(x), dtype=bool)
    settled = discovery._compete(x, clustered, theme, everyone)
    assert (settled[:4] == 0).all() and (settled[4:] == 1).all(), settled
    monkeypatch.setattr(discovery, "ROUNDS", 0)
    once = discovery._compete(x, clustered, theme, everyone)
    assert (once[:4] == 1).all() and (once[14:] == 0).all(), once  # what one round gives


def test_a_member_on_the_edge_of_a_theme_is_left_out():
    """A segment that joins a cluster only by a hair, so that another subset of the labelled
    segments would keep it with their theme, is not a member; the cluster's core stays."""
    rng = np.random.default_rng(0)
    labelled = discovery._unit(np.array([1.0, 0, 0]) + rng.normal(0, 0.25, (30, 3)))
    themes = np.array(["a"] * 30)
    core = discovery._unit(np.array([0, 0.3, 1.0]) + rng.normal(0, 0.03, (40, 3)))
    prototypes = discovery._prototypes(labelled, themes, ["a"], 0)

    def run(alpha: float, vote: bool) -> np.ndarray:
        nearest = prototypes[np.argmax(prototypes @ core.mean(axis=0))]
        edge = discovery._unit((alpha * core.mean(axis=0) + (1 - alpha) * nearest)[None])
        x = np.vstack([core, edge])
        everyone = np.ones(len(x), dtype=bool)
        joined = discovery._compete(x, np.r_[np.zeros(40, dtype=int), -1], prototypes, everyone)
        if vote:
            joined = discovery._vote(x, joined, labelled, themes, ["a"], everyone, 0)
        return joined

    low, high = 0.0, 1.0  # the edge: where the segment starts to join the cluster
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (low, middle) if run(middle, vote=False)[-1] else (middle, high)
    assert run(high, vote=False)[-1] == 1
    voted = run(high, vote=True)
    assert voted[-1] == 0 and (voted[:-1] == 1).all(), voted
    assert (run(1.0, vote=True) == 1).all()  # well inside: still a member


@pytest.mark.slow  # trains a model on the real encoder
def test_novelty_comes_from_the_labelled_segments_not_the_confidence(codebook, model, notes):
    """Self-training makes a model confident where nobody labelled anything: the novelty must
    not move with the confidence, and must follow the distance to the labelled segments."""
    sure = notes.assign(confidence="0.99")
    first = discover(notes, codebook, model=model)
    again = discover(sure, codebook, model=model)
    assert np.allclose(first.novelty, again.novelty)
    from scipy.stats import spearmanr

    similarity = notes["similarity"].astype(float).to_numpy()
    assert spearmanr(first.novelty, similarity).statistic < -0.5


# --------------------------------------------------------------------------- the command


@pytest.mark.slow  # trains a model on the real encoder
def test_discover_command_end_to_end(tmp_path, capsys, model, notes):
    from qualcode.classification import write_predictions

    model.save(tmp_path / "model")
    predictions = pd.concat([notes, pd.DataFrame({"text": PARKING})], ignore_index=True)
    write_predictions(predictions, tmp_path / "predictions.csv")
    out = tmp_path / "nya"
    code, said = run_cli(
        capsys, "discover", tmp_path / "predictions.csv", "--model", tmp_path / "model", "-o", out
    )
    assert code == 0, said
    assert "candidate new theme" in said and "Traceback" not in said

    raw = (out / "clusters.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b";" in raw.splitlines()[0]  # Swedish Excel
    clusters = read_table(out / "clusters.csv")
    for column in ("segment_id", "text", "cluster", "keywords", "nearest_theme"):
        assert column in clusters.columns
    assert set(clusters.loc[clusters["text"].isin(PARKING), "cluster"]) - {""}

    suggestions = yaml.safe_load((out / "codebook_suggestions.yaml").read_text(encoding="utf-8"))
    themes = suggestions["themes"]
    assert themes and all({"id", "label", "description", "examples"} <= set(t) for t in themes)
    parse_codebook({"themes": [*themes, {"id": "x", "label": "X", "description": "x"}]})

    page = (out / "discover.html").read_text(encoding="utf-8")
    assert "<svg" in page and "<circle" in page and "Nytt tema?" in page
    assert not re.search(r"<script|<link|src=\"http", page)  # self-contained, offline

    book = tmp_path / "codebook.yaml"
    book.write_text(CODEBOOK.read_text(encoding="utf-8"), encoding="utf-8")
    code, said = run_cli(capsys, "codebook", "merge", out / "codebook_suggestions.yaml",
                         "--codebook", book)  # fmt: skip
    assert code == 0, said
    merged = load_codebook(book)
    assert {t["id"] for t in themes} <= set(merged.ids)
    assert list(tmp_path.glob("codebook.yaml.*.bak"))
    code, said = run_cli(capsys, "codebook", "merge", out / "codebook_suggestions.yaml",
                         "--codebook", book)  # fmt: skip
    assert code == 2 and "already in" in said and "Traceback" not in said

    code, said = run_cli(capsys, "report", tmp_path / "predictions.csv", "--codebook", CODEBOOK,
                         "--discover", out, "-o", tmp_path / "rapport.html")  # fmt: skip
    assert code == 0, said
    report = (tmp_path / "rapport.html").read_text(encoding="utf-8")
    assert "Nya teman?" in report and themes[0]["label"] in report


@pytest.mark.slow  # trains two models on the real encoder
def test_discover_finds_the_model_that_made_the_predictions(
    tmp_path, capsys, monkeypatch, codebook, labels, model, notes
):
    """Without --model, the model in models/ whose labelled segments give the predictions'
    similarities is used, not another with the same themes; with none, it says so."""
    import shutil

    from qualcode.classification import write_predictions
    from qualcode.training import train

    model.save(tmp_path / "models" / "samverkan")
    other = train(labels.iloc[::2].reset_index(drop=True), codebook, progress=False)
    other.save(tmp_path / "models" / "annan")  # the same themes, newer: looked at first
    (tmp_path / "models" / "trasig").mkdir()
    (tmp_path / "models" / "trasig" / "model.json").write_text("[1, 2]", encoding="utf-8")
    shutil.copytree(tmp_path / "models" / "annan", tmp_path / "models" / "halv")
    (tmp_path / "models" / "halv" / "head.npz").unlink()  # broken models are passed over
    write_predictions(notes, tmp_path / "predictions.csv")
    monkeypatch.chdir(tmp_path)
    code, said = run_cli(capsys, "discover", "predictions.csv", "--codebook", CODEBOOK, "-o", "a")
    assert code == 0, said
    assert "model: models/samverkan (it made these predictions)" in said, said
    code, said = run_cli(capsys, "discover", "predictions.csv", "--codebook", CODEBOOK,
                         "--model", "models/samverkan", "-o", "b")  # fmt: skip
    assert code == 0, said
    assert (tmp_path / "a" / "clusters.csv").read_bytes() == (
        tmp_path / "b" / "clusters.csv"
    ).read_bytes()

    shutil.rmtree(tmp_path / "models" / "samverkan")
    code, said = run_cli(capsys, "discover", "predictions.csv", "--codebook", CODEBOOK, "-o", "c")
    assert code == 0 and "Traceback" not in said, said
    assert "none beside INPUT or in models/ made these predictions" in said, said
    notes[["text"]].to_csv(tmp_path / "segments.csv", index=False)
    code, said = run_cli(capsys, "discover", "segments.csv", "--codebook", CODEBOOK, "-o", "d")
    assert code == 0 and "no model given (--model): the codebook's" in said, said


def test_discover_command_on_a_tiny_input(tmp_path, capsys):
    path = tmp_path / "segments.csv"
    pd.DataFrame({"text": PARKING[:3]}).to_csv(path, index=False)
    code, said = run_cli(capsys, "discover", path, "--codebook", CODEBOOK, "-o", tmp_path / "d")
    assert code == 0 and "too few" in said and "Traceback" not in said
    assert (
        yaml.safe_load((tmp_path / "d" / "codebook_suggestions.yaml").read_text())["themes"] == []
    )
    header = (tmp_path / "d" / "clusters.csv").read_text(encoding="utf-8-sig").splitlines()
    assert header == ["text;theme;novelty;cluster;cluster_label;keywords;nearest_theme;verdict"]
