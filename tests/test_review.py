"""Review export (model vs coder, coder vs coder, likely label errors), agreement statistics and
`review apply` with files that went through Swedish Excel."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from qualcode.agreement import agreement_table, cohen_kappa, krippendorff_alpha
from qualcode.cli.label_review import review as review_cmd
from qualcode.codebook import load_codebook
from qualcode.errors import QualcodeError
from qualcode.files.labels import AUDIT_COLUMNS, audit_path
from qualcode.files.tables import file_sha256, read_table, write_table
from qualcode.labelling import LABEL_COLUMNS
from qualcode.review import apply_review, build_review, write_review

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK = ROOT / "corpora" / "codebook.yaml"

TEXTS = {
    "s1": "Vi behöver en gemensam koordinator för samverkan.",
    "s2": "=SUMMA(A1:A3) är inte en formel här",
    "s3": "Videomöten fungerar bra mellan vårdcentral och kommun; tekniken krånglar ibland.",
    "s4": "Ledningsgruppen måste ge mandat.",
    "s5": "Mobila team besöker patienten i hemmet.",
    "s6": "Vi följer upp resultaten varje kvartal.",
}


def write_like_excel(frame: pd.DataFrame, path: Path, *, encoding: str = "cp1252") -> None:
    """Save a table the way Swedish Excel saves "CSV (semikolonavgränsad)": ';', CRLF, cp1252
    (or UTF-8 with BOM), and text cells that start with = + - @ kept with their apostrophe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=";", lineterminator="\r\n")
    writer.writerow(frame.columns)
    for row in frame.astype(str).itertuples(index=False):
        writer.writerow(["'" + v if v[:1] in ("=", "+", "-", "@") else v for v in row])
    data = buffer.getvalue()
    raw = (
        data.encode("cp1252", errors="replace")
        if encoding == "cp1252"
        else (b"\xef\xbb\xbf" + data.encode("utf-8"))
    )
    path.write_bytes(raw)


def labels_file(path: Path, coder: str, themes: dict[str, str]) -> Path:
    rows = [
        {
            "segment_id": sid,
            "document": "doc.txt",
            "section": "",
            "text": TEXTS[sid],
            "theme": theme,
            "coder": coder,
            "labelled_at": "2025-01-01T10:00:00+01:00",
            "note": f"{coder} tvekade" if sid == "s4" else "",
        }
        for sid, theme in themes.items()
    ]
    write_table(pd.DataFrame(rows, columns=list(LABEL_COLUMNS)), path)
    return path


@pytest.fixture(scope="module")
def codebook():
    return load_codebook(CODEBOOK)


# --------------------------------------------------------------------------- agreement


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 0.743.
    n = None
    a = [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n]
    b = [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3]
    c = [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n]
    d = [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n]
    assert krippendorff_alpha(list(zip(a, b, c, d))) == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]]) == 1.0
    assert math.isnan(krippendorff_alpha([[1, 1], [1, 1]]))  # no variation: undefined
    assert math.isnan(krippendorff_alpha([[1], [2, None]]))  # nothing pairable


def test_cohen_kappa_and_agreement_table():
    from sklearn.metrics import cohen_kappa_score

    a = ["x", "x", "y", "y", "z", "x"]
    b = ["x", "y", "y", "y", "z", "x"]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert math.isnan(cohen_kappa(["x", "x"], ["x", "x"]))
    coded = pd.DataFrame({"anna": ["x", "x;z", "y", "", "z"], "bo": ["x", "y", "y", "y", "z"]})
    table = agreement_table(coded, ["x", "y", "z"]).set_index("theme")
    assert table.loc["overall", "statistic"] == "cohen_kappa"
    assert table.loc["overall", "segments"] == 4  # the segment only bo labelled is not compared
    assert table.loc["overall", "value"] == pytest.approx(
        round(cohen_kappa_score(["x", "x", "y", "z"], ["x", "y", "y", "z"]), 3)
    )
    # per theme: present / absent, so anna's second theme z counts
    assert table.loc["z", "value"] == pytest.approx(
        round(cohen_kappa_score([0, 1, 0, 1], [0, 0, 0, 1]), 3)
    )
    three = agreement_table(coded.assign(cecilia=["x", "y", "y", "y", "z"]), ["x", "y", "z"])
    assert set(three["statistic"]) == {"krippendorff_alpha"}
    assert three.set_index("theme").loc["overall", "segments"] == 5


# --------------------------------------------------------------------------- export


def test_coder_vs_coder_review_and_agreement(tmp_path, codebook):
    a = labels_file(
        tmp_path / "anna.csv",
        "anna",
        {
            "s1": "coordination_roles",
            "s2": "other",
            "s3": "digital_communication",
            "s4": "steering",
            "s5": "teams_care_models",
        },
    )
    b = labels_file(
        tmp_path / "bo.csv",
        "bo",
        {
            "s1": "coordination_roles",
            "s2": "steering",
            "s3": "Digitala lösningar och informationsutbyte",
            "s4": "follow_up;steering",
            "s6": "follow_up",
        },
    )
    result = build_review([a, b], codebook)
    table = result.table
    assert list(table.columns) == [
        "segment_id",
        "document",
        "section",
        "text",
        "theme_anna",
        "theme_bo",
        "coder_notes",
        "model_theme",
        "model_confidence",
        "disagreement",
        "resolved_theme",
        "note",
        "labels_sha256",
    ]
    assert set(table["segment_id"]) == {"s2", "s4"}  # labels given as Swedish label resolve
    assert set(table["disagreement"]) == {"coder_vs_coder"}
    row = table.set_index("segment_id").loc["s4"]
    assert (row["theme_anna"], row["theme_bo"]) == ("steering", "follow_up;steering")
    assert row["coder_notes"] == "anna: anna tvekade; bo: bo tvekade"
    assert row["labels_sha256"] == f"sha256:{file_sha256(a)};sha256:{file_sha256(b)}"
    overall = result.agreement.set_index("theme").loc["overall"]
    assert overall["segments"] == 4 and overall["statistic"] == "cohen_kappa"

    out = tmp_path / "review.csv"
    runner = CliRunner()
    res = runner.invoke(
        review_cmd,
        ["--labels", str(a), "--labels", str(b), "--codebook", str(CODEBOOK), "-o", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    assert "cohen_kappa" in res.output and "overall" in res.output
    assert read_table(out)["text"].tolist() == table["text"].tolist()  # "=SUMMA…" round-trips


def test_model_vs_coder_review_matches_by_id_or_text_and_orders_rows(tmp_path, codebook):
    labels = labels_file(
        tmp_path / "labels.csv",
        "anna",
        {"s1": "coordination_roles", "s3": "steering", "s4": "steering", "s5": "other"},
    )
    predictions = pd.DataFrame(
        {
            # s5 has another id in the predictions (segmented again) but the same text
            "segment_id": ["s1", "s3", "s4", "new-5", "s6", "s2"],
            "document": "doc.txt",
            "section": "",
            "text": [TEXTS[k] for k in ("s1", "s3", "s4", "s5", "s6", "s2")],
            "theme": [
                "coordination_roles",
                "digital_communication",
                "follow_up",
                "teams_care_models",
                "follow_up",
                "other",
            ],
            "confidence": ["0.9", "0.95", "0.55", "0.7", "0.3", "0.8"],
            "needs_review": ["false", "false", "true", "false", "true", "false"],
        }
    )
    pred_path = tmp_path / "predictions.csv"
    write_table(predictions, pred_path, excel=True)  # decimal commas, ';', BOM
    result = build_review([labels], codebook, predictions=pred_path, label_errors=False)
    table = result.table
    assert result.agreement is None
    assert table["segment_id"].tolist() == ["s3", "s5", "s4", "s6"]
    assert table["disagreement"].tolist() == ["model_vs_coder"] * 3 + ["low_confidence"]
    assert table["model_confidence"].tolist() == [0.95, 0.7, 0.55, 0.3]
    assert table.set_index("segment_id").loc["s5", "theme_anna"] == "other"


def test_likely_label_errors_finds_a_flipped_label(tmp_path, codebook):
    seed = read_table(ROOT / "corpora" / "labels" / "seed_set.csv")
    seed = seed[~seed["theme"].str.contains(";")]
    picked = pd.concat(
        [
            seed[seed["theme"] == t].head(8)
            for t in ("digital_communication", "steering", "teams_care_models")
        ]
    )
    victim = picked.index[2]  # "Kommunikation skedde genom digitala möten/videomöten, telefon,
    # mail etc.": clearly digital_communication, now labelled steering
    picked.loc[victim, "theme"] = "steering"
    path = tmp_path / "labels.csv"
    write_table(picked, path)
    result = build_review([path], codebook, folds=2)
    assert any("likely label errors" in m for m in result.messages)
    errors = result.table[result.table["disagreement"] == "likely_label_error"]
    assert picked.loc[victim, "segment_id"] in errors["segment_id"].tolist()
    row = errors.set_index("segment_id").loc[picked.loc[victim, "segment_id"]]
    assert row["model_theme"] == "digital_communication" and row["theme_seed"] == "steering"


# --------------------------------------------------------------------------- apply


@pytest.fixture
def exported(tmp_path, codebook):
    a = labels_file(
        tmp_path / "anna.csv", "anna", {"s1": "coordination_roles", "s2": "other", "s4": "steering"}
    )
    b = labels_file(
        tmp_path / "bo.csv", "bo", {"s1": "coordination_roles", "s2": "steering", "s4": "follow_up"}
    )
    review = tmp_path / "review.csv"
    write_review(build_review([a, b], codebook).table, review, excel=True)
    return a, b, review


@pytest.mark.parametrize("encoding", ["cp1252", "utf-8-sig"])
def test_apply_after_excel_round_trip(tmp_path, codebook, exported, encoding):
    a, _, review = exported
    before, original = read_table(a), a.read_bytes()
    table = read_table(review)
    table = table.set_index("segment_id")
    table.loc["s2", "resolved_theme"] = "Styrning och ledning"  # a label, not an id
    table.loc["s2", "note"] = "-mandat, se protokoll"
    table.loc["s4", "resolved_theme"] = "follow_up"
    table = pd.concat(
        [
            table.reset_index(),
            pd.DataFrame(
                [
                    {
                        "segment_id": "s5",
                        "text": TEXTS["s5"],
                        "resolved_theme": "teams_care_models",
                        "labels_sha256": table["labels_sha256"].iloc[0],
                    }
                ]
            ),
        ],
        ignore_index=True,
    ).fillna("")
    excel = tmp_path / "review_excel.csv"
    write_like_excel(table, excel, encoding=encoding)

    result = apply_review(excel, a, codebook, coder="lead")
    assert (result.changed, result.added) == (2, 1)
    after = read_table(a)
    assert len(after) == len(before) + 1  # nothing dropped, one appended
    themes = dict(zip(after["segment_id"], after["theme"]))
    assert themes == {
        "s1": "coordination_roles",
        "s2": "steering",
        "s4": "follow_up",
        "s5": "teams_care_models",
    }
    assert after.set_index("segment_id").loc["s2", "text"] == TEXTS["s2"]  # "=…" kept as text
    assert after.set_index("segment_id").loc["s5", "coder"] == "lead"
    assert result.backup.read_bytes() == original
    log = read_table(audit_path(a))
    assert list(log.columns) == list(AUDIT_COLUMNS)
    assert log[["segment_id", "old_theme", "new_theme"]].values.tolist() == [
        ["s2", "other", "steering"],
        ["s4", "steering", "follow_up"],
        ["s5", "", "teams_care_models"],
    ]
    assert log["note"].tolist()[0] == "-mandat, se protokoll"
    assert set(log["resolved_by"]) == {"lead"}

    # the labels changed, so the same review cannot be applied twice
    with pytest.raises(QualcodeError, match="has changed since"):
        apply_review(excel, a, codebook)


def test_apply_refuses_unknown_theme_and_changed_labels_writing_nothing(
    tmp_path, codebook, exported
):
    a, b, review = exported
    table = read_table(review)
    table["resolved_theme"] = ["ekonomi", "steering"][: len(table)]
    bad = tmp_path / "bad.csv"
    write_like_excel(table, bad)
    snapshot = a.read_bytes()
    with pytest.raises(QualcodeError) as err:
        apply_review(bad, a, codebook)
    assert "'ekonomi' (row 2)" in str(err.value) and "\n" not in str(err.value)

    table["resolved_theme"] = "steering"
    good = tmp_path / "good.csv"
    write_like_excel(table, good)
    with a.open("a", encoding="utf-8") as handle:  # the coder labelled one more segment
        handle.write("s6,doc.txt,,Ny rad,follow_up,anna,2025-01-02T10:00:00+01:00\n")
    changed = a.read_bytes()
    with pytest.raises(QualcodeError, match="has changed since"):
        apply_review(good, a, codebook)
    assert a.read_bytes() == changed and snapshot != changed
    assert not list(tmp_path.glob("anna.csv.*.bak")) and not audit_path(a).exists()

    # ... but the other coder's file, unchanged since the export, is accepted
    assert apply_review(good, b, codebook).changed >= 1


def test_apply_cli_refusal_is_one_line_and_exit_2(tmp_path, exported):
    a, _, review = exported
    table = read_table(review)
    table["resolved_theme"] = "no_such_theme"
    bad = tmp_path / "bad.csv"
    write_like_excel(table, bad, encoding="utf-8-sig")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qualcode",
            "review",
            "apply",
            str(bad),
            "--labels",
            str(a),
            "--codebook",
            str(CODEBOOK),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_theme" in lines[0] and "rows 2, 3" in lines[0]


def test_review_without_sha_column_is_refused(tmp_path, codebook, exported):
    a, _, review = exported
    table = read_table(review).drop(columns=["labels_sha256"])
    table["resolved_theme"] = "steering"
    stripped = tmp_path / "stripped.csv"
    write_like_excel(table, stripped)
    with pytest.raises(QualcodeError, match="labels_sha256"):
        apply_review(stripped, a, codebook)
