"""The whole human-in-the-loop cycle on the seed corpora (issue 4, "Done when"):

label a few Skåne notes in the real terminal labeller → train on the seed set + those labels →
classify the Skåne report → export review.csv → resolve rows in a copy saved the way Swedish Excel
saves it → apply (after a refused attempt on labels that changed meanwhile) → retrain, and the
resolved segments carry the analyst's themes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qualcode.codebook import load_codebook
from qualcode.files.labels import audit_path
from qualcode.files.tables import read_table, write_table
from qualcode.labelling import LABEL_COLUMNS, read_labels_table
from qualcode.model.storage import load_model
from qualcode.segmentation import segment

from .conftest import cli_succeeds, labeller_ready

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK = ROOT / "corpora" / "codebook.yaml"
SEED_SET = ROOT / "corpora" / "labels" / "seed_set.csv"
SKANE = next((ROOT / "corpora" / "seeds").glob("001_*.txt"))
QUALCODE = ROOT / ".venv" / "bin" / "qualcode"
PROMPT = re.compile(r"Theme \[([\d ]*)\]: ")
HEADER = re.compile(r"labelled by (\S+) \S* (\S+) ")


def write_like_excel(frame: pd.DataFrame, path: Path) -> None:
    """Save as Swedish Excel saves "CSV (semikolonavgränsad)": cp1252, ';', CRLF, and text
    cells starting with = + - @ kept with a leading apostrophe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(frame.columns)
    for row in frame.astype(str).itertuples(index=False):
        writer.writerow(["'" + v if v[:1] in ("=", "+", "-", "@") else v for v in row])
    path.write_bytes(buffer.getvalue().encode("cp1252", errors="replace"))


def label_in_terminal(segments: Path, output: Path, answers: list[str]) -> list[str]:
    """Answer the real labeller (default active order) through a pseudo-terminal."""
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        str(QUALCODE),
        [
            "label",
            str(segments),
            "--codebook",
            str(CODEBOOK),
            "-o",
            str(output),
            "--coder",
            "analyst",
        ],
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 120),
        env=dict(os.environ),
    )
    asked = []
    for answer in answers:
        child.expect(PROMPT)
        asked.append(HEADER.findall(child.before)[-1][1])
        child.sendline(answer)
    child.expect(PROMPT)
    child.sendline("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    return asked


@pytest.mark.skipif(not QUALCODE.exists(), reason="needs the installed console script")
@pytest.mark.slow
def test_label_train_classify_review_apply_retrain(tmp_path, capsys):
    codebook = load_codebook(CODEBOOK)
    report = segment([SKANE])
    notes = report[report["line_start"].astype(int) >= 77]
    write_table(notes, tmp_path / "notes.csv")
    write_table(report, tmp_path / "skane.csv")

    # 1. label four round-table notes in the terminal
    mine = tmp_path / "analyst.csv"
    labeller_ready(tmp_path / "notes.csv", CODEBOOK, tmp_path)
    asked = label_in_terminal(tmp_path / "notes.csv", mine, ["5", "1", "", "3"])
    labelled = read_labels_table(mine, codebook)
    assert labelled["segment_id"].tolist() == asked and len(set(asked)) == 4
    assert labelled["theme"].tolist()[0] == "shared_view_continuity"

    # 2. the training labels: the seed set plus the analyst's labels, one labels file
    seed = read_table(SEED_SET).assign(labelled_at="", note="")
    labels = tmp_path / "labels.csv"
    write_table(pd.concat([seed[list(LABEL_COLUMNS)], labelled], ignore_index=True), labels)
    cli_succeeds("train", labels, "--codebook", CODEBOOK, "-o", tmp_path / "model", "--quiet")

    # 3. classify the Skåne report (its narrative part is in the seed set under other ids)
    predictions = tmp_path / "predictions.csv"
    cli_succeeds(
        "classify", tmp_path / "model", tmp_path / "skane.csv", "-o", predictions, "--quiet"
    )

    # 4. export the review, for Swedish Excel
    review = tmp_path / "review.csv"
    cli_succeeds(
        "review",
        "--predictions",
        predictions,
        "--labels",
        labels,
        "--codebook",
        CODEBOOK,
        "--folds",
        "2",
        "--excel",
        "-o",
        review,
    )
    capsys.readouterr()
    table = read_table(review)
    assert table.columns[:5].tolist() == ["segment_id", "document", "section", "text", "theme_seed"]
    kinds = table["disagreement"].tolist()
    # (model_vs_coder rows occur too, but here the model, trained on these very labels, only
    # disagrees where cross-validation also calls the label a likely error, which ranks first)
    assert {"likely_label_error", "low_confidence"} <= set(kinds)
    assert set(kinds) <= {"likely_label_error", "model_vs_coder", "low_confidence"}
    ranks = [
        ["likely_label_error", "model_vs_coder", "coder_vs_coder", "low_confidence"].index(k)
        for k in kinds
    ]
    assert ranks == sorted(ranks)  # most consequential kinds first

    # 5. the analyst resolves one row of each kind, with a theme the model did not choose
    first = {kind: table.index[table["disagreement"] == kind][0] for kind in set(kinds)}
    decisions = {}
    for kind, i in first.items():
        given = {table.at[i, c] for c in table.columns if c.startswith("theme_")}
        theme = next(t for t in codebook.ids if t != table.at[i, "model_theme"] and t not in given)
        decisions[table.at[i, "segment_id"] or table.at[i, "text"]] = theme
        # Swedish label instead of the id in one row, and a note Excel would take for a formula
        table.at[i, "resolved_theme"] = (
            codebook.get(theme).label if kind == "low_confidence" else theme
        )
        table.at[i, "note"] = f"=analytikerns beslut ({kind})"
    resolved = tmp_path / "review_from_excel.csv"
    write_like_excel(table, resolved)

    # 6. labels that changed after the export are refused, and nothing is lost
    changed = tmp_path / "changed" / "labels.csv"
    changed.parent.mkdir()
    shutil.copy(labels, changed)
    with changed.open("a", encoding="utf-8") as handle:
        handle.write("x-1,doc.txt,,En ny etikett under tiden,steering,bo,\n")
    before = changed.read_bytes()
    proc = subprocess.run(
        [
            str(QUALCODE),
            "review",
            "apply",
            str(resolved),
            "--labels",
            str(changed),
            "--codebook",
            str(CODEBOOK),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "has changed since" in proc.stderr
    assert changed.read_bytes() == before
    # Nothing but the labels (and the lock that keeps labelling and applying apart).
    names = sorted(p.name for p in changed.parent.iterdir() if not p.name.endswith(".lock"))
    assert names == ["labels.csv"]

    # 7. apply to the labels the review was made from
    old_rows = read_table(labels)
    cli_succeeds(
        "review",
        "apply",
        resolved,
        "--labels",
        labels,
        "--codebook",
        CODEBOOK,
        "--coder",
        "analyst",
    )
    assert "changed" in capsys.readouterr().err
    new_rows = read_table(labels)
    assert len(new_rows) == len(old_rows) + 1  # the flagged new segment is added, none dropped
    assert old_rows["segment_id"].tolist() == new_rows["segment_id"].tolist()[: len(old_rows)]
    by_id = dict(zip(new_rows["segment_id"], new_rows["theme"]))
    by_text = dict(zip(new_rows["text"], new_rows["theme"]))
    for key, theme in decisions.items():
        assert by_id.get(key, by_text.get(key)) == theme
    log = read_table(audit_path(labels))
    assert len(log) == len(decisions)
    assert set(log["note"]) == {f"=analytikerns beslut ({k})" for k in first}
    assert list(tmp_path.glob("labels.csv.*.bak"))

    # 8. retrain: the resolved segments now carry the analyst's themes
    cli_succeeds("train", labels, "--codebook", CODEBOOK, "-o", tmp_path / "model2", "--quiet")
    card = json.loads((tmp_path / "model2" / "model.json").read_text(encoding="utf-8"))
    assert card["training_data"]["segments"] == len(new_rows)
    texts = [
        new_rows.loc[(new_rows["segment_id"] == k) | (new_rows["text"] == k), "text"].iloc[0]
        for k in decisions
    ]
    themes = list(decisions.values())
    old, new = load_model(tmp_path / "model"), load_model(tmp_path / "model2")
    columns = [list(codebook.ids).index(t) for t in themes]
    rows = np.arange(len(texts))
    p_old = old.predict_proba(texts)[rows, columns]
    p_new = new.predict_proba(texts)[rows, columns]
    assert (p_new > p_old).all(), (p_old, p_new)
