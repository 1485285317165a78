"""The command line: the main job, and the bad-input matrix (one line on stderr, exit 2, no
partial output)."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from qualcode.files.tables import read_table

from .conftest import CORPORA, exit_code

CODEBOOK = str(CORPORA / "codebook.yaml")
SEED_SET = CORPORA / "labels" / "seed_set.csv"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = exit_code(*args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("qualcode: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.slow
def test_console_script_runs_and_reports_bad_input(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "qualcode", "--help"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and "segment" in ok.stdout and "classify" in ok.stdout
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "qualcode",
            "train",
            str(empty),
            "--codebook",
            CODEBOOK,
            "-o",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert_one_line_error(bad.returncode, bad.stderr, "empty.csv")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_classify_writes_predictions_and_summary(capsys, model_dir, tmp_path):
    notes = CORPORA / "seeds" / "002_dcebba742a4ca32e.txt"
    out = tmp_path / "pred.csv"
    code, stdout, err = run(capsys, "classify", model_dir, notes, "-o", out, "--quiet")
    assert code == 0, err
    predictions = read_table(out)
    assert {"segment_id", "document", "theme", "confidence", "needs_review"} <= set(predictions)
    assert set(predictions["needs_review"]) <= {"true", "false"}
    code, stdout, err = run(capsys, "classify", model_dir, notes, "-o", out)
    assert "flagged" in stdout and "total" in stdout


@pytest.mark.parametrize(
    "content, fragments",
    [
        ("", ["empty"]),
        ("text,theme\n", ["no data rows"]),
        ("text,kod\nHej,steering\n", ["theme"]),
        ("segment,theme\nHej,steering\n", ["text"]),
        ("text,theme\nHej,styrning_x\nHopp,steering\n", ["styrning_x"]),
        ("text,theme\nHej,steering\nHopp,steering\n", ["at least two themes"]),
    ],
    ids=["empty", "header-only", "no-theme-column", "no-text-column", "unknown-theme", "one-theme"],
)
def test_train_bad_labels(capsys, tmp_path, content, fragments):
    labels = tmp_path / "labels.csv"
    labels.write_text(content, encoding="utf-8")
    out = tmp_path / "model"
    code, _, err = run(capsys, "train", labels, "--codebook", CODEBOOK, "-o", out, "-q")
    assert_one_line_error(code, err, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".model-*"))


def test_binary_and_missing_inputs(capsys, tmp_path, model_dir):
    binary = tmp_path / "labels.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    code, _, err = run(capsys, "train", binary, "--codebook", CODEBOOK, "-o", tmp_path / "m")
    assert_one_line_error(code, err, "labels.csv")
    code, _, err = run(capsys, "classify", tmp_path / "nomodel", binary, "-o", tmp_path / "p.csv")
    assert_one_line_error(code, err, "nomodel")
    code, _, err = run(capsys, "classify", model_dir, binary, "-o", tmp_path / "p.csv")
    assert_one_line_error(code, err, "labels.csv")
    assert not (tmp_path / "p.csv").exists()


def test_duplicate_segment_ids(capsys, tmp_path, model_dir):
    segments = tmp_path / "segments.csv"
    pd.DataFrame({"segment_id": ["x-1", "x-1"], "text": ["Ett", "Två"]}).to_csv(
        segments, index=False
    )
    code, _, err = run(capsys, "classify", model_dir, segments, "-o", tmp_path / "p.csv")
    assert_one_line_error(code, err, "x-1")
    assert not (tmp_path / "p.csv").exists()


def test_truncated_model_directory(capsys, tmp_path, model_dir):
    import shutil

    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    (broken / "model.json").write_text('{"format": 1')
    notes = CORPORA / "seeds" / "002_dcebba742a4ca32e.txt"
    code, _, err = run(capsys, "classify", broken, notes, "-o", tmp_path / "p.csv")
    assert_one_line_error(code, err, "model")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("dialect", ["semicolon-cp1252", "utf8-bom", "excel-flag"])
@pytest.mark.slow
def test_excel_files_are_read(capsys, tmp_path, small_labels, dialect):
    labels = tmp_path / "labels.csv"
    small_labels = read_table(small_labels)
    if dialect == "semicolon-cp1252":
        small_labels.to_csv(labels, index=False, sep=";", encoding="cp1252", errors="replace")
    elif dialect == "utf8-bom":
        small_labels.to_csv(labels, index=False, encoding="utf-8-sig")
    else:
        from qualcode.files.tables import write_table

        write_table(small_labels, labels, excel=True)
        assert labels.read_bytes().startswith(b"\xef\xbb\xbf")
    code, _, err = run(capsys, "train", labels, "--codebook", CODEBOOK, "-o", tmp_path / "m", "-q")
    assert code == 0, err
    assert (tmp_path / "m" / "model.json").exists()


def test_exported_cells_are_neutralised_and_read_back(capsys, tmp_path, model_dir):
    segments = tmp_path / "segments.csv"
    texts = ['=HYPERLINK("x")', "+46 70 123", "-minus ett", "@kommunen"]
    pd.DataFrame({"segment_id": list("abcd"), "text": texts}).to_csv(segments, index=False)
    out = tmp_path / "pred.csv"
    code, _, err = run(capsys, "classify", model_dir, segments, "-o", out, "--excel", "-q")
    assert code == 0, err
    raw = out.read_bytes().decode("utf-8-sig")
    assert "'=HYPERLINK" in raw and "'+46" in raw and "'@kommunen" in raw
    assert read_table(out)["text"].tolist() == texts


def test_a_survey_export_without_column_points_to_segment(capsys, tmp_path, model_dir):
    survey = tmp_path / "enkat.csv"
    pd.DataFrame(
        {
            "Respondent": ["1", "2"],
            "Kommun": ["Malmö", "Lund"],
            "Svar": ["Vi behöver gemensamma utbildningar för personalen", "Bra samarbete"],
        }
    ).to_csv(survey, index=False)
    for args in (
        ("classify", model_dir, survey, "-o", tmp_path / "p.csv"),
        ("label", survey, "--codebook", CODEBOOK, "-o", tmp_path / "l.csv"),
    ):
        code, _, err = run(capsys, *args)
        assert_one_line_error(code, err, "qualcode segment enkat.csv --column 'Svar'")


def test_next_step_hints_name_the_codebook_only_when_it_would_not_be_found(
    capsys, tmp_path, monkeypatch
):
    import shutil

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("QUALCODE_CODEBOOK", raising=False)
    shutil.copy(SEED_SET, "labels.csv")
    code, _, err = run(capsys, "label", "--template", "labels.csv", "--codebook", CODEBOOK,
                       "-o", "t.xlsx")  # fmt: skip
    assert code == 0, err
    assert f"`qualcode label --import t.xlsx --codebook {CODEBOOK} -o labels.csv`" in err
    shutil.copy(CODEBOOK, "codebook.yaml")  # beside the files: found without --codebook
    code, _, err = run(capsys, "label", "--template", "labels.csv", "-o", "t.xlsx")
    assert code == 0, err
    assert "`qualcode label --import t.xlsx -o labels.csv`" in err
