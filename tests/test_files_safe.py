"""What qualcode never does to an analyst's files: write over its own inputs or over coded
labels, replace an input column, lose a model or a decision when killed, or choke on a hostile
file. The crash matrix runs the real CLI in subprocesses and kills them (SIGKILL) at named
points (``$QUALCODE_CRASH_AT``, see :func:`qualcode.errors.crash_point`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qualcode.files.tables import file_sha256, read_table, write_table

from .conftest import CORPORA
from .test_cli import assert_one_line_error, run

CODEBOOK = str(CORPORA / "codebook.yaml")
SEED_SET = CORPORA / "labels" / "seed_set.csv"


def qualcode(
    *args, crash_at: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("QUALCODE_CRASH_AT", None)
    if crash_at:
        env["QUALCODE_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "qualcode", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL


def hidden(folder: Path) -> list[str]:
    return sorted(
        p.name for p in folder.iterdir() if p.name.startswith(".") and "lock" not in p.name
    )


# --------------------------------------------------------------------------- outputs and inputs


def test_no_command_writes_over_its_own_input(capsys, tmp_path, small_labels, model_dir):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(small_labels.read_bytes())
    before = file_sha256(labels)
    survey = tmp_path / "enkat.csv"
    write_table(pd.DataFrame({"Svar": ["Vi behöver mer samverkan.", "Bra möten."]}), survey)
    cases = [
        ("segment", survey, "--column", "Svar", "-o", survey),
        ("classify", model_dir, labels, "-o", labels),
        ("review", "--labels", labels, "--codebook", CODEBOOK, "-o", labels),
        ("report", labels, "--codebook", CODEBOOK, "-o", labels),
        ("export", "xlsx", labels, "--codebook", CODEBOOK, "-o", labels),
        ("label", "--template", labels, "--codebook", CODEBOOK, "-o", labels),
    ]
    for case in cases:
        code, _, err = run(capsys, *case)
        assert_one_line_error(code, err, "input")
    link = tmp_path / "LABELS-link.csv"
    link.symlink_to(labels)
    code, _, err = run(capsys, "classify", model_dir, labels, "-o", link)
    assert_one_line_error(code, err, "input")
    code, _, err = run(capsys, "train", labels, "--codebook", CODEBOOK, "-o", labels)
    assert_one_line_error(code, err)
    assert file_sha256(labels) == before
    assert survey.read_text(encoding="utf-8").startswith("Svar")


def test_coded_labels_are_only_replaced_with_force_and_a_backup(capsys, tmp_path, model_dir):
    labels = tmp_path / "anna.csv"
    write_table(
        pd.DataFrame({"text": ["Gemensamma utbildningar"], "theme": ["shared_training"]}), labels
    )
    notes = tmp_path / "notes.txt"
    notes.write_text("- Erfarenhetsutbyte\n- Mobila team\n", encoding="utf-8")
    code, _, err = run(capsys, "classify", model_dir, notes, "-o", labels)
    assert_one_line_error(code, err, "--force")
    assert read_table(labels)["theme"].tolist() == ["shared_training"]
    code, _, err = run(capsys, "classify", model_dir, notes, "-o", labels, "--force", "-q")
    assert code == 0, err
    backups = list(tmp_path.glob("anna.csv.*.bak"))
    assert len(backups) == 1 and pd.read_csv(backups[0])["theme"].tolist() == ["shared_training"]
    # Model output is not labels: classifying again over predictions needs no --force.
    code, _, err = run(capsys, "classify", model_dir, notes, "-o", labels, "-q")
    assert code == 0, err


def test_a_coders_theme_column_survives_classification(capsys, tmp_path, model_dir):
    out = tmp_path / "compared.csv"
    code, _, err = run(capsys, "classify", model_dir, SEED_SET, "-o", out, "-q")
    assert code == 0, err
    table, given = read_table(out), read_table(SEED_SET)
    assert table["theme"].tolist() == given["theme"].tolist()  # the coder's, untouched
    assert {"model_theme", "themes", "confidence", "needs_review"} <= set(table.columns)
    disagree = sum(m not in t.split(";") for m, t in zip(table["model_theme"], table["theme"]))
    assert disagree > 0
    # report and review read the model's themes from such a file
    html = tmp_path / "r.html"
    code, _, err = run(capsys, "report", out, "--codebook", CODEBOOK, "-o", html, "-q")
    assert code == 0, err
    counts = table["model_theme"].value_counts()
    assert f"{counts.iloc[0]}" in html.read_text(encoding="utf-8")
    review = tmp_path / "review.csv"
    code, _, err = run(
        capsys,
        "review",
        "--predictions",
        out,
        "--labels",
        SEED_SET,
        "--codebook",
        CODEBOOK,
        "-o",
        review,
        "--no-label-errors",
    )
    assert code == 0, err
    rows = read_table(review)
    assert (rows["disagreement"] == "model_vs_coder").sum() == disagree
    # an input column named like the model's review reason: exports show the model's
    own = tmp_path / "own.csv"
    write_table(given.assign(review_reason="analytikerns egen kolumn"), own)
    code, _, err = run(capsys, "classify", model_dir, own, "-o", out, "-q")
    assert code == 0, err
    model_reasons = set(read_table(out)["model_review_reason"]) - {""}
    assert model_reasons
    workbook = tmp_path / "kodat.xlsx"
    code, _, err = run(capsys, "export", "xlsx", out, "--codebook", CODEBOOK, "-o", workbook)
    assert code == 0, err
    sheets = pd.read_excel(workbook, sheet_name=None, dtype=str)
    shown = set().union(*(set(v["review_reason"].dropna()) for v in sheets.values()
                          if "review_reason" in v.columns))  # fmt: skip
    assert shown and shown <= model_reasons


@pytest.mark.slow
def test_retrain_keeps_an_analysts_note_in_the_model_folder(capsys, tmp_path, small_labels):
    out = tmp_path / "model"
    out.mkdir()
    (out / "anteckning.txt").write_text("min viktiga anteckning", encoding="utf-8")
    code, _, err = run(capsys, "train", small_labels, "--codebook", CODEBOOK, "-o", out, "-q")
    assert_one_line_error(code, err, "anteckning.txt")
    assert (out / "anteckning.txt").read_text(encoding="utf-8") == "min viktiga anteckning"


# --------------------------------------------------------------------------- crash matrix


@pytest.mark.slow
@pytest.mark.parametrize("point", ["model-swap"])
def test_a_killed_retrain_always_leaves_a_loadable_model(tmp_path, small_labels, model_dir, point):
    import shutil

    out = tmp_path / "model"
    shutil.copytree(model_dir, out)
    before = json.loads((out / "model.json").read_text())["created"]
    result = qualcode(
        "train", small_labels, "--codebook", CODEBOOK, "-o", out, "-q", crash_at=point
    )
    assert killed(result), result.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("- Gemensamma utbildningar\n", encoding="utf-8")
    done = qualcode("classify", out, notes, "-o", tmp_path / "p.csv", "-q")
    assert done.returncode == 0, done.stderr  # the old model, back in place
    assert json.loads((out / "model.json").read_text())["created"] == before
    again = qualcode("train", small_labels, "--codebook", CODEBOOK, "-o", out, "-q")
    assert again.returncode == 0, again.stderr
    assert hidden(tmp_path) == []  # no staging or aside copy left behind


def _review_fixture(tmp_path: Path, small_labels: Path, capsys) -> tuple[Path, Path]:
    """A labels file of one coder and a review file that resolves its first three segments as
    ``other``, made for exactly these labels (as `qualcode review` makes it)."""
    labels = tmp_path / "labels.csv"
    table = read_table(small_labels)
    table = table[table["theme"].str.split(";").str[0] != "other"].head(6)
    table["coder"] = "anna"
    write_table(table, labels)
    review = tmp_path / "review.csv"
    sheet = pd.DataFrame(
        {
            "segment_id": table["segment_id"].head(3),
            "text": table["text"].head(3),
            "resolved_theme": ["other"] * 3,
            "labels_sha256": "sha256:" + file_sha256(labels),
        }
    )
    write_table(sheet, review)
    return labels, review


def _audit_lines(labels: Path) -> int:
    log = labels.with_name(f"{labels.stem}.audit.csv")
    return len(read_table(log)) if log.exists() else 0


@pytest.mark.slow
def test_review_apply_is_a_transaction_whatever_the_kill(tmp_path, small_labels, capsys):
    labels, review = _review_fixture(tmp_path, small_labels, capsys)
    before = file_sha256(labels)
    apply = ("review", "apply", review, "--labels", labels, "--codebook", CODEBOOK)
    # Killed after the audit lines are written ahead, before the labels change: nothing happened.
    assert killed(qualcode(*apply, crash_at="apply-pending"))
    assert file_sha256(labels) == before
    # Killed after the labels changed, before the audit log: the next run completes the log.
    assert killed(qualcode(*apply, crash_at="apply-replaced"))
    assert file_sha256(labels) != before
    again = qualcode(*apply)
    assert again.returncode == 2 and "has changed" in again.stderr  # applied once, not twice
    assert (read_table(labels)["theme"] == "other").sum() == 3
    assert _audit_lines(labels) == 3
    assert hidden(tmp_path) == []


@pytest.mark.slow
def test_two_applies_at_once_lose_no_decision(tmp_path, small_labels, capsys):
    labels, review = _review_fixture(tmp_path, small_labels, capsys)
    env = dict(os.environ)
    command = [
        sys.executable,
        "-m",
        "qualcode",
        "review",
        "apply",
        str(review),
        "--labels",
        str(labels),
        "--codebook",
        CODEBOOK,
    ]
    first = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    codes = sorted([first.wait(timeout=120), second.wait(timeout=120)])
    assert codes == [0, 2]  # one applies, the other sees the labels changed and writes nothing
    assert (read_table(labels)["theme"] == "other").sum() == 3
    assert _audit_lines(labels) == 3


@pytest.mark.slow
def test_a_killed_write_leaves_no_output_and_its_leftovers_are_cleaned(tmp_path, model_dir):
    notes = tmp_path / "notes.txt"
    notes.write_text("- Gemensamma utbildningar\n- Mobila team\n", encoding="utf-8")
    out = tmp_path / "p.csv"
    assert killed(qualcode("classify", model_dir, notes, "-o", out, "-q", crash_at="before-rename"))
    assert not out.exists()
    leftovers = list(tmp_path.glob(".p.csv.*.tmp"))
    assert len(leftovers) == 1
    old = time.time() - 3600
    os.utime(leftovers[0], (old, old))
    done = qualcode("classify", model_dir, notes, "-o", out, "-q")
    assert done.returncode == 0 and out.exists()
    assert not list(tmp_path.glob(".p.csv.*.tmp"))


@pytest.mark.slow
def test_two_classify_runs_share_the_embedding_cache(tmp_path, model_dir):
    lines = [
        f"- Anteckning {i}: vi behöver gemensamma utbildningar och mobila team" for i in range(40)
    ]
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = dict(os.environ, QUALCODE_HOME=str(tmp_path / "home"))
    Path(env["QUALCODE_HOME"]).mkdir()
    # the converted encoder is reused: link it into the fresh home
    source_home = Path(os.environ["QUALCODE_HOME"])
    (Path(env["QUALCODE_HOME"]) / "encoders").symlink_to(source_home / "encoders")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qualcode",
                "classify",
                str(model_dir),
                str(notes),
                "-o",
                str(tmp_path / f"p{i}.csv"),
                "-q",
                "--no-adapt",
            ],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    assert [p.wait(timeout=240) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    a, b = read_table(tmp_path / "p0.csv"), read_table(tmp_path / "p1.csv")
    assert len(a) == 40 and a.equals(b)


# --------------------------------------------------------------------------- hostile files


def _docx_with(tmp_path: Path, name: str, document_xml: bytes, extra: dict | None = None) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        z.writestr("word/document.xml", document_xml)
        for k, v in (extra or {}).items():
            z.writestr(k, v)
    return path


@pytest.mark.slow
def test_hostile_documents_get_one_line(capsys, tmp_path):
    bomb = _docx_with(
        tmp_path, "bomb.docx", b"<w:document/>", {"word/big.xml": b"\0" * (420 * 2**20)}
    )
    xxe = _docx_with(
        tmp_path,
        "xxe.docx",
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><d>&x;</d>',
    )
    huge = tmp_path / "huge.txt"
    with huge.open("wb") as handle:
        handle.truncate(200 * 2**20)  # sparse: 200 MB without using the disk
    giant = tmp_path / "giant.csv"
    write_table(pd.DataFrame({"Svar": ["ord " * 1_300_000]}), giant)
    for path, fragment in ((bomb, "MB"), (xxe, "entities"), (huge, "100 MB")):
        started = time.perf_counter()
        code, _, err = run(capsys, "segment", path, "-o", tmp_path / "s.csv")
        assert_one_line_error(code, err, fragment)
        assert time.perf_counter() - started < 20
    code, _, err = run(capsys, "segment", giant, "--column", "Svar", "-o", tmp_path / "s.csv")
    assert_one_line_error(code, err, "100,000")
    assert "giant.csv line 2" in err
    labels = tmp_path / "labels.csv"
    long_text = "ord " * 30_000
    write_table(pd.DataFrame({"text": [long_text, "kort"], "theme": ["other", "steering"]}), labels)
    code, _, err = run(capsys, "train", labels, "--codebook", CODEBOOK, "-o", tmp_path / "m")
    assert_one_line_error(code, err, "100,000")


def test_a_forged_xlsx_grid_is_read_in_bounded_memory(capsys, tmp_path):
    import openpyxl

    path = tmp_path / "grid.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Svar"])
    sheet.append(["Vi behöver gemensamma utbildningar."])
    book.save(path)
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    xml = xml.replace('<dimension ref="A1:A2"/>', '<dimension ref="A1:XFD1048576"/>')
    empty_rows = "".join(f'<row r="{r}"/>' for r in range(3, 200_003))
    xml = xml.replace("</sheetData>", empty_rows + "</sheetData>")
    parts["xl/worksheets/sheet1.xml"] = xml.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)
    started = time.perf_counter()
    code, _, err = run(capsys, "segment", path, "--column", "Svar", "-o", tmp_path / "s.csv")
    assert code == 0, err
    assert len(read_table(tmp_path / "s.csv")) == 1
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize(
    "text, fragment",
    [
        ('a: &a ["x","x"]\nb: &b [*a,*a]\nthemes: [*b]\n', "aliases"),
        ("name: x\nthemes: !!python/object/apply:os.system ['echo hi']\n", "constructor"),
        ("themes:\n  " + "[" * 3000 + "]" * 3000 + "\n", "nested"),
    ],
)
def test_hostile_codebooks(capsys, tmp_path, text, fragment):
    path = tmp_path / "codebook.yaml"
    path.write_text(text, encoding="utf-8")
    labels = tmp_path / "labels.csv"
    write_table(pd.DataFrame({"text": ["a", "b"], "theme": ["x", "y"]}), labels)
    code, _, err = run(capsys, "train", labels, "--codebook", path, "-o", tmp_path / "m")
    assert_one_line_error(code, err, fragment)


def test_a_damaged_model_or_cache_gives_one_line(capsys, tmp_path, model_dir):
    import shutil

    from qualcode.model.encoders import write_manifest

    notes = tmp_path / "notes.txt"
    notes.write_text("- Gemensamma utbildningar\n", encoding="utf-8")
    no_encoder = tmp_path / "no_encoder"
    shutil.copytree(model_dir, no_encoder)
    card = json.loads((no_encoder / "model.json").read_text())
    del card["encoder"]
    (no_encoder / "model.json").write_text(json.dumps(card))
    write_manifest(no_encoder, kind="qualcode-model", format=card["format"])
    code, _, err = run(capsys, "classify", no_encoder, notes, "-o", tmp_path / "p.csv")
    assert_one_line_error(code, err, "model card")

    linked = tmp_path / "linked"
    shutil.copytree(model_dir, linked)
    outside = tmp_path / "outside.yaml"
    outside.write_bytes((linked / "codebook.yaml").read_bytes())
    (linked / "codebook.yaml").unlink()
    (linked / "codebook.yaml").symlink_to(outside)
    code, _, err = run(capsys, "classify", linked, notes, "-o", tmp_path / "p.csv")
    assert_one_line_error(code, err, "link")


def test_nan_vectors_in_the_cache_are_embedded_again(tmp_path, encoder):
    from qualcode.model.encoders import EmbeddingCache, embed, encoder_identity

    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    text = "Vi behöver gemensamma utbildningar."
    good = embed([text], encoder, cache=False, progress=False)
    cache.put(encoder_identity(encoder), [text], np.full_like(good, np.nan))
    again = embed([text], encoder, cache=cache, progress=False)
    np.testing.assert_allclose(again, good, atol=1e-5)


def test_mixed_encodings_are_refused_not_garbled(capsys, tmp_path):
    path = tmp_path / "enkat.csv"
    path.write_bytes("Svar\nVi träffas på mötet\n".encode() + "Vården är bra\n".encode("cp1252"))
    code, _, err = run(capsys, "segment", path, "--column", "Svar", "-o", tmp_path / "s.csv")
    assert_one_line_error(code, err, "line 3")
    whole = tmp_path / "ansi.csv"
    whole.write_bytes("Svar\nVården är bra\nPå mötet\n".encode("cp1252"))  # Excel's ANSI CSV
    code, _, err = run(capsys, "segment", whole, "--column", "Svar", "-o", tmp_path / "s.csv")
    assert code == 0, err
    assert read_table(tmp_path / "s.csv")["text"].tolist() == ["Vården är bra", "På mötet"]


def test_cells_that_excel_could_run_are_neutralised(tmp_path):
    from qualcode.files.tables import _neutralise

    assert _neutralise("\r=cmd") == "'\r=cmd"
    frame = pd.DataFrame({"text": ["\t=1+1", "=SUM(A1)", "-5", "vanlig text"]})
    path = tmp_path / "t.csv"
    write_table(frame, path, excel=True)
    raw = path.read_text(encoding="utf-8-sig")
    assert "'\t=1+1" in raw and "'=SUM(A1)" in raw
    assert read_table(path)["text"].tolist() == frame["text"].tolist()


def test_a_review_saved_without_swedish_letters_is_refused(tmp_path, small_labels, capsys):
    labels, review = _review_fixture(tmp_path, small_labels, capsys)
    sheet = read_table(review)
    sheet["segment_id"] = ["nytt-1", "nytt-2", "nytt-3"]
    sheet["text"] = ["P? tr?ffarna var det bra", "Ny rad", "Annan rad"]
    write_table(sheet, review)
    before = file_sha256(labels)
    code, _, err = run(
        capsys, "review", "apply", review, "--labels", labels, "--codebook", CODEBOOK
    )
    assert_one_line_error(code, err, "lost characters")
    assert file_sha256(labels) == before


def test_a_report_folder_is_all_or_nothing(tmp_path):
    from qualcode.codebook import load_codebook
    from qualcode.errors import QualcodeError
    from qualcode.reporting.report import report

    table = read_table(SEED_SET)
    out = tmp_path / "rapport"
    with pytest.raises(QualcodeError):
        report(table, load_codebook(CODEBOOK), out, sources=[tmp_path / "missing.txt"])
    assert not out.exists() or not any(out.iterdir())
    assert hidden(tmp_path) == []
    left = tmp_path / ".rapport-k1lled_x"  # what a killed run would leave (mkdtemp's shape)
    left.mkdir()
    os.utime(left, (time.time() - 3600, time.time() - 3600))
    report(table, load_codebook(CODEBOOK), out)
    assert {"report.html", "theme_counts.csv", "codes.qdpx"} <= {p.name for p in out.iterdir()}
    assert not left.exists()


def test_unfitted_or_multi_label_estimators_keep_the_sklearn_contract(small_labels, encoder):
    from sklearn.exceptions import NotFittedError

    from qualcode.codebook import load_codebook
    from qualcode.model.classifier import ThemeClassifier

    with pytest.raises(NotFittedError):
        ThemeClassifier().predict(["Gemensamma utbildningar"])
    table = read_table(small_labels)
    clf = ThemeClassifier(codebook=load_codebook(CODEBOOK), multi_label=True)
    clf.fit(table["text"].tolist(), table["theme"].tolist())
    scores = clf.decision_function(["Gemensamma utbildningar"])
    proba = clf.predict_proba(["Gemensamma utbildningar"])
    # the probabilities are the log-odds, Platt-scaled on out-of-fold predictions
    calibrated = scores / clf.temperature_ + clf.calibration_bias_
    np.testing.assert_allclose(1 / (1 + np.exp(-calibrated)), proba, atol=1e-6)


def test_a_re_answered_segment_trains_on_its_last_answer(tmp_path):
    from qualcode.codebook import load_codebook
    from qualcode.training import read_labels

    path = tmp_path / "labels.csv"
    write_table(
        pd.DataFrame(
            {
                "segment_id": ["a", "b", "a"],
                "text": ["Gemensamma utbildningar", "Mobila team", "Gemensamma utbildningar"],
                "theme": ["steering", "teams_care_models", "shared_training"],
                "coder": ["anna", "anna", "anna"],
            }
        ),
        path,
    )
    table = read_labels(path, load_codebook(CODEBOOK))
    assert dict(zip(table["segment_id"], table["theme"])) == {
        "b": "teams_care_models",
        "a": "shared_training",
    }


@pytest.mark.slow
def test_two_retrains_of_one_model_folder_leave_one_loadable_model(tmp_path, small_labels):
    out = tmp_path / "model"
    command = [
        sys.executable,
        "-m",
        "qualcode",
        "train",
        str(small_labels),
        "--codebook",
        CODEBOOK,
        "-o",
        str(out),
        "-q",
    ]
    procs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    from qualcode.model.storage import load_model

    assert load_model(out).card["training_data"]["segments"] == len(read_table(small_labels))
    assert hidden(tmp_path) == []


@pytest.mark.slow
def test_a_killed_import_leaves_the_labels_as_they_were(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    write_table(
        pd.DataFrame(
            {
                "segment_id": ["s-1"],
                "text": ["Gemensamma utbildningar"],
                "theme": ["shared_training"],
                "coder": ["anna"],
                "labelled_at": ["2026-01-01"],
            }
        ),
        labels,
    )
    before = file_sha256(labels)
    segments = tmp_path / "segments.csv"
    write_table(
        pd.DataFrame(
            {"segment_id": ["s-2"], "document": ["d"], "section": [""], "text": ["Mobila team"]}
        ),
        segments,
    )
    template = tmp_path / "to_label.xlsx"
    code, _, err = run(
        capsys, "label", "--template", segments, "--codebook", CODEBOOK, "-o", template
    )
    assert code == 0, err
    import openpyxl

    book = openpyxl.load_workbook(template)
    book["segments"].cell(row=2, column=5).value = "teams_care_models"
    book.save(template)
    result = qualcode(
        "label",
        "--import",
        template,
        "--codebook",
        CODEBOOK,
        "-o",
        labels,
        crash_at="before-rename",
    )
    assert killed(result), result.stderr
    assert file_sha256(labels) == before


def test_label_files_with_different_columns_keep_every_answer(tmp_path):
    from qualcode.codebook import load_codebook
    from qualcode.training import read_label_files

    seed = tmp_path / "seed.csv"
    write_table(
        pd.DataFrame(
            {"segment_id": ["s1"], "text": ["Styrning"], "theme": ["steering"], "coder": ["seed"]}
        ),
        seed,
    )
    batch = tmp_path / "batch.csv"  # no segment_id, no coder: keyed by text
    write_table(
        pd.DataFrame(
            {
                "text": ["Mobila team", "Erfarenhetsutbyte", "Uppföljning"],
                "theme": ["teams_care_models", "shared_training", "follow_up"],
            }
        ),
        batch,
    )
    table = read_label_files([seed, batch], load_codebook(CODEBOOK))
    assert len(table) == 4


def test_a_review_being_filled_in_is_not_an_output(capsys, tmp_path, small_labels):
    review = tmp_path / "review.csv"
    write_table(
        pd.DataFrame(
            {
                "segment_id": ["a"],
                "text": ["x"],
                "model_theme": ["steering"],
                "model_confidence": ["0.4"],
                "resolved_theme": ["other"],
            }
        ),
        review,
    )
    code, _, err = run(
        capsys,
        "review",
        "--labels",
        small_labels,
        "--codebook",
        CODEBOOK,
        "-o",
        review,
        "--no-label-errors",
    )
    assert_one_line_error(code, err, "--force")
    assert read_table(review)["resolved_theme"].tolist() == ["other"]
