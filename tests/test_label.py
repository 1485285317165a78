"""The labeller: durable answers, undo, resume, active ordering with a background model, the XLSX
template round trip, and the real terminal UI driven through a pseudo-terminal."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qualcode.cli.labeller import Labeller
from qualcode.codebook import load_codebook
from qualcode.errors import QualcodeError
from qualcode.files.tables import read_table, write_table
from qualcode.labelling import (
    LABEL_COLUMNS,
    LabelStore,
    import_template,
    pick_diverse,
    read_labels_table,
    read_segments,
    uncertainty,
    write_template,
)
from qualcode.segmentation import segment
from qualcode.training import read_labels

from .conftest import labeller_ready

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK = ROOT / "corpora" / "codebook.yaml"
SKANE = next((ROOT / "corpora" / "seeds").glob("001_*.txt"))
QUALCODE = ROOT / ".venv" / "bin" / "qualcode"


@pytest.fixture(scope="module")
def codebook():
    return load_codebook(CODEBOOK)


@pytest.fixture(scope="module")
def notes(tmp_path_factory) -> Path:
    """The first 12 round-table notes of the Skåne report (line 77 on) as a segments file."""
    table = segment([SKANE])
    table = table[table["line_start"].astype(int) >= 77].head(12)
    path = tmp_path_factory.mktemp("notes") / "segments.csv"
    write_table(table, path)
    return path


# --------------------------------------------------------------------------- the labels file


def test_store_appends_durably_and_undo_removes_only_the_coders_last_row(tmp_path, codebook):
    path = tmp_path / "labels.csv"
    seg = {"segment_id": "a", "document": "d.txt", "section": "S", "text": '=1+1, "citat"\nrad'}
    with LabelStore(path, "anna", codebook) as anna:
        anna.append(seg, ["steering"])
        anna.append(
            {**seg, "segment_id": "b", "text": "Mobila team"}, ["teams_care_models", "steering"]
        )
    with LabelStore(path, "bo") as bo:
        bo.append({**seg, "segment_id": "a"}, ["other"])
    with LabelStore(path, "anna") as anna:
        assert anna.undo() == "b"  # anna's last row, not bo's later one
        assert anna.undo() == "a"
        assert anna.undo() is None
    table = read_labels_table(path)
    assert table[["segment_id", "coder", "theme"]].values.tolist() == [["a", "bo", "other"]]
    assert table["text"].iloc[0] == seg["text"]  # formula-like text round-trips

    with LabelStore(path, "anna") as anna:
        anna.append(seg, ["follow_up"])
    assert list(read_labels(path, codebook)["theme"]) == ["other", "follow_up"]  # train reads it


@pytest.mark.parametrize("torn", ['s3,d.txt,,"Mobila team\nsom', "s3,d.txt,,Mobila team,ste"])
def test_store_repairs_a_row_torn_by_a_crash(tmp_path, torn):
    path = tmp_path / "labels.csv"
    with LabelStore(path, "anna") as store:
        store.append({"segment_id": "s1", "text": "Ett"}, ["steering"])
        store.append({"segment_id": "s2", "text": "Två\nrader"}, ["other"])
    whole = path.read_bytes()
    path.write_bytes(whole + torn.encode())
    with LabelStore(path, "anna") as store:
        assert store.repaired is not None and store.repaired.read_bytes() == whole + torn.encode()
        assert path.read_bytes() == whole
        store.append({"segment_id": "s3", "text": "Tre"}, ["follow_up"])
    assert read_labels_table(path)["segment_id"].tolist() == ["s1", "s2", "s3"]
    with LabelStore(path, "anna") as store:
        assert store.repaired is None


def test_store_refuses_foreign_files_and_a_second_session(tmp_path):
    other = tmp_path / "seed.csv"
    other.write_text("segment_id,text,theme\nx,Text,steering\n", encoding="utf-8")
    with pytest.raises(QualcodeError, match="not a labels file"):
        LabelStore(other, "anna").__enter__()
    path = tmp_path / "labels.csv"
    with LabelStore(path, "anna"):
        with pytest.raises(QualcodeError, match="another `qualcode label` session"):
            LabelStore(path, "bo").__enter__()


def test_notes_are_kept_and_files_from_before_notes_are_upgraded_with_a_backup(tmp_path):
    path = tmp_path / "labels.csv"
    old = "segment_id,document,section,text,theme,coder,labelled_at\ns1,d,,Ett svar,steering,bo,\n"
    path.write_text(old, encoding="utf-8")
    assert read_labels_table(path)["note"].tolist() == [""]  # read as it is, not rewritten
    assert path.read_text(encoding="utf-8") == old
    with LabelStore(path, "anna") as store:
        store.append({"segment_id": "s2", "text": "Två"}, [], "  oklart: två teman?  ")
    (backup,) = tmp_path.glob("labels.csv.*.bak")
    assert backup.read_text(encoding="utf-8") == old
    table = read_labels_table(path)
    assert list(table.columns) == list(LABEL_COLUMNS)
    assert table[["segment_id", "theme", "note"]].values.tolist() == [
        ["s1", "steering", ""],
        ["s2", "", "oklart: två teman?"],
    ]


def test_a_store_can_wait_for_the_lock_instead_of_refusing(tmp_path):
    import threading
    import time

    path = tmp_path / "labels.csv"
    holder = LabelStore(path, "anna").__enter__()
    threading.Timer(0.5, holder.__exit__).start()
    started = time.monotonic()
    with LabelStore(path, "bo", wait=10) as store:  # what the app does
        store.append({"segment_id": "s1", "text": "Ett"}, ["other"])
    assert 0.3 < time.monotonic() - started < 10
    assert read_labels_table(path)["coder"].tolist() == ["bo"]


def test_uncertainty_and_diverse_choice():
    proba = np.array([[0.5, 0.45, 0.05], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33]])
    assert np.allclose(uncertainty(proba), [0.05, 0.85, 0.01])
    assert np.allclose(
        uncertainty(np.array([[0.9, 0.55], [0.1, 0.0]]), multi_label=True), [0.1, 0.8]
    )
    features = np.array([[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.7, 0.714]])
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    # candidates best first: 1 is a near-duplicate of the recently asked 0, so 2 wins
    assert pick_diverse([1, 2, 3], features, recent=[0]) == 2
    assert pick_diverse([1, 2, 3], features, recent=[]) == 1
    assert pick_diverse([1, 2, 3], features, recent=[0], pool=1) == 1


def test_parse_answers(codebook, notes):
    labeller = Labeller(read_segments(notes), codebook, "unused.csv", coder="anna")
    assert labeller.parse("", ["steering"]) == ["steering"]
    assert labeller.parse(" 3 ", ["other"]) == ["steering"]
    assert labeller.parse("Styrning och ledning", []) == ["steering"]
    assert labeller.parse("Q", []) == "q" and labeller.parse("h", []) == "?"
    assert labeller.parse("9", []).startswith("! no theme number 9")
    assert labeller.parse("1 3", []).startswith("! one theme per segment")
    multi = Labeller(read_segments(notes), codebook, "unused.csv", multi_label=True)
    assert multi.parse("1, 3 1", []) == ["coordination_roles", "steering"]


# --------------------------------------------------------------------------- a whole session


@pytest.fixture(scope="module")
def earlier(codebook) -> pd.DataFrame:
    """Two labels per theme from the seed set, as rows another coder wrote earlier."""
    seed = read_table(ROOT / "corpora" / "labels" / "seed_set.csv")
    seed = seed[~seed["theme"].str.contains(";")]
    rows = pd.concat([seed[seed["theme"] == t].head(2) for t in codebook.ids])
    return rows.assign(coder="seed", labelled_at="", note="")[list(LABEL_COLUMNS)]


@pytest.mark.slow
def test_active_session_retrains_in_the_background(tmp_path, codebook, notes, earlier):
    """Scripted input, real encoder and classifier: once every theme has two labels (here from
    another coder's earlier rows) a model is trained in a background thread and its margins
    choose the next segments; nothing is asked twice and a rerun resumes."""
    output = tmp_path / "labels.csv"
    write_table(earlier, output)

    answers = iter(["1", "", "?", "s", "2", "", "q"])
    lines: list[str] = []
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        labeller.session.trainer.wait(120)  # make the test deterministic: the model is ready
        prompts.append(prompt)
        return next(answers)

    segments = read_segments(notes)
    labeller = Labeller(
        segments,
        codebook,
        output,
        coder="anna",
        retrain_every=2,
        ask=ask,
        echo=lines.append,
        progress=False,
    )
    result = labeller.run()
    assert (result.answered, result.skipped, result.labelled) == (4, 1, 4)
    assert labeller.session.trainer.error is None
    text = "\n".join(lines)
    assert "suggestions now from a model trained on 16 labels" in text
    assert "suggestions now from a model trained on 18 labels" in text  # retrained after 2
    assert "model, 16 labels" in text and "zero-shot" not in text.split("saved:")[-1]
    rows = read_labels_table(output)
    mine = rows[rows["coder"] == "anna"]
    assert len(mine) == 5 and mine["segment_id"].is_unique
    assert list(mine["theme"].iloc[:2]) == [
        "coordination_roles",
        codebook.ids[int(prompts[1][7]) - 1],
    ]
    assert "Keys (then Enter)" in text  # the help

    # resume: only the 12 - 5 segments never answered are asked, the skipped one last
    asked: list[str] = []
    again = Labeller(
        segments,
        codebook,
        output,
        coder="anna",
        order="file",
        ask=lambda p: (asked.append(p), "s")[1],
        echo=lines.append,
        progress=False,
    )
    result = again.run()
    assert result.skipped == 7 + 1 and result.finished
    skipped_before = mine.loc[mine["theme"] == "", "segment_id"].iloc[0]
    headers = [line for line in lines[-400:] if "labelled by anna" in line]
    assert skipped_before in headers[-1]


@pytest.mark.slow
def test_multi_label_session(tmp_path, codebook, notes, earlier):
    output = tmp_path / "labels.csv"
    write_table(earlier, output)
    answers = iter(["1 3", "steering; 7", "q"])
    lines: list[str] = []

    def ask(prompt: str) -> str:
        labeller.session.trainer.wait(120)
        return next(answers)

    labeller = Labeller(
        read_segments(notes),
        codebook,
        output,
        coder="anna",
        multi_label=True,
        order="file",
        retrain_every=10,
        ask=ask,
        echo=lines.append,
        progress=False,
    )
    result = labeller.run()
    assert result.answered == 2 and labeller.session.trainer.error is None
    themes = read_labels_table(output)["theme"].tolist()
    assert themes[-2:] == ["coordination_roles;steering", "steering;teams_care_models"]
    assert any("suggestions now from a model trained on 16 labels" in line for line in lines)


# --------------------------------------------------------------------------- spreadsheet


def test_xlsx_template_and_import(tmp_path, codebook, notes):
    import openpyxl

    segments = read_segments(notes)
    segments.loc[1, "text"] = "=SUMMA(A1) ska vara text"
    template = tmp_path / "to_label.xlsx"
    write_template(segments, codebook, template)
    book = openpyxl.load_workbook(template)
    sheet = book["segments"]
    [validation] = sheet.data_validations.dataValidation
    assert validation.type == "list" and "themes!$A$2:$A$9" in validation.formula1
    assert "E2" in str(validation.sqref) and validation.errorStyle == "stop"
    # the drop-down offers the Swedish labels; ids are on the sheet too and both are accepted
    assert [c.value for c in book["themes"]["A"]][1:] == [t.label for t in codebook.themes]
    assert [c.value for c in book["themes"]["B"]][1:] == codebook.ids
    assert sheet["D3"].value == "=SUMMA(A1) ska vara text" and sheet["D3"].data_type == "s"

    sheet["E2"] = "steering"
    sheet["E3"] = "Samsyn och kontinuitet"
    sheet["E4"] = "ekonomi"
    sheet["E6"] = "kvalitet"
    book.save(template)
    output = tmp_path / "labels.csv"
    with pytest.raises(QualcodeError) as err:
        import_template(template, codebook, output, coder="anna")
    assert "'ekonomi' (row 4); 'kvalitet' (row 6)" in str(err.value)
    assert not output.exists()

    sheet["E4"] = "other"
    sheet["E6"] = None
    book.save(template)
    first = import_template(template, codebook, output, coder="anna")
    assert (first.imported, first.replaced, first.blank, first.backup) == (3, 0, 9, None)
    labels = read_labels(output, codebook)
    assert labels["theme"].tolist() == ["steering", "shared_view_continuity", "other"]
    assert labels["text"].iloc[1] == "=SUMMA(A1) ska vara text"

    sheet["E4"] = "follow_up"
    book.save(template)
    second = import_template(template, codebook, output, coder="anna")
    assert (second.imported, second.replaced) == (3, 3) and second.backup.exists()
    assert read_labels_table(output)["theme"].tolist()[-1] == "follow_up"
    assert len(read_labels_table(output)) == 3


# --------------------------------------------------------------------------- the real terminal

HEADER = re.compile(r"(\d+)/(\d+) labelled by (\S+) \S* (\S+) ")
PROMPT = re.compile(r"Theme \[([\d ]*)\]: ")


def spawn(*args: str):
    pexpect = pytest.importorskip("pexpect")
    return pexpect.spawn(
        str(QUALCODE),
        list(args),
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 120),
        env=dict(os.environ),
    )


def next_prompt(child) -> tuple[str, str]:
    """Wait for the next question; return (segment_id, suggested theme number)."""
    child.expect(PROMPT)
    header = HEADER.findall(child.before)
    default = child.match.group(1)
    return header[-1][3], default


@pytest.mark.skipif(not QUALCODE.exists(), reason="needs the installed console script")
@pytest.mark.slow
def test_terminal_labeller_survives_kill_and_resumes(tmp_path, codebook, notes):
    output = tmp_path / "labels.csv"
    ids = read_segments(notes)["segment_id"].tolist()
    labeller_ready(notes, CODEBOOK, tmp_path)
    args = [
        str(notes),
        "--codebook",
        str(CODEBOOK),
        "-o",
        str(output),
        "--coder",
        "anna",
        "--order",
        "file",
    ]
    child = spawn("label", *args)
    seen, expected = [], {}
    sid, _ = next_prompt(child)
    seen.append(sid)
    child.sendline("2")
    expected[sid] = "shared_training"
    sid, default = next_prompt(child)
    seen.append(sid)
    child.sendline("")  # accept the suggestion
    expected[sid] = codebook.ids[int(default) - 1]
    sid, _ = next_prompt(child)
    seen.append(sid)
    child.sendline("s")
    sid, _ = next_prompt(child)
    child.sendline("u")  # undo the skip: that segment is asked again
    child.expect("undone: " + re.escape(seen[2]))
    sid, _ = next_prompt(child)
    assert sid == seen[2]
    child.sendline("7")
    expected[sid] = "teams_care_models"
    sid, _ = next_prompt(child)
    seen.append(sid)
    child.send("5")  # typed, not yet confirmed ...
    child.kill(signal.SIGKILL)  # ... when the power goes
    child.expect(__import__("pexpect").EOF)
    assert seen == ids[:4]

    rows = read_labels_table(output, codebook)
    assert dict(zip(rows["segment_id"], rows["theme"])) == expected  # only the typed one lost
    assert list(rows.columns) == list(LABEL_COLUMNS) and set(rows["coder"]) == {"anna"}

    child = spawn("label", *args)
    sid, _ = next_prompt(child)
    assert sid == ids[3]  # resumes with the unanswered segment, never re-asks
    child.sendline("3")
    sid, _ = next_prompt(child)
    assert sid == ids[4]
    child.sendline("q")
    child.expect(r"1 answered, 0 skipped, 0 undone this session; 4/12 segments labelled")
    child.expect(__import__("pexpect").EOF)
    child.close()
    assert child.exitstatus == 0
    rows = read_labels_table(output, codebook)
    assert rows["segment_id"].tolist() == ids[:4] and rows["theme"].iloc[3] == "steering"


def test_cli_errors_are_one_line(tmp_path, notes):
    from click.testing import CliRunner

    from qualcode.cli.label_review import label

    runner = CliRunner()
    bad = tmp_path / "labels.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    result = runner.invoke(label, [str(notes), "--codebook", str(CODEBOOK), "-o", str(bad)])
    assert isinstance(result.exception, QualcodeError)
    assert "not a labels file" in str(result.exception) and "\n" not in str(result.exception)
    result = runner.invoke(
        label,
        ["--template", str(notes), "--codebook", str(CODEBOOK), "-o", str(tmp_path / "x.csv")],
    )
    assert "name it .xlsx" in str(result.exception)
    result = runner.invoke(
        label,
        ["--template", str(notes), "--codebook", str(CODEBOOK), "-o", str(tmp_path / "x.xlsx")],
    )
    assert result.exit_code == 0 and (tmp_path / "x.xlsx").exists()


def test_a_template_leaves_out_what_any_labels_file_holds(tmp_path):
    from qualcode.labelling import template_segments

    seed = read_table(ROOT / "corpora" / "labels" / "seed_set.csv")  # no labelled_at column
    segments = seed[["segment_id", "document", "section", "text"]].head(10)
    chosen, how = template_segments(
        segments, labelled=[ROOT / "corpora" / "labels" / "seed_set.csv"]
    )
    assert chosen.empty and "10 already labelled left out" in how  # of this batch, not 206
    half = seed.head(5)
    write_table(half, tmp_path / "some.csv")
    chosen, how = template_segments(segments, labelled=[tmp_path / "some.csv"])
    assert len(chosen) == 5 and "5 already labelled" in how
