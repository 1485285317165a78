"""An analyst's first hour with their own survey, through the CLI as the README's walkthrough
types it: `corpora/survey/enkat.xlsx` (40 made-up answers with Respondent, Kommun and Roll; an
empty answer, non-answers such as "Vet ej" and "???", a personnummer with a bad checksum, an
answer with two themes) goes through segment → label (Excel) → train → classify → review →
report → export, outside the project folder, without a `None`, an unexplained flag or a dropped
column."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from qualcode.files.tables import read_table

from .conftest import QUESTION, ROOT, SURVEY, labeller_ready, run_cli

RESPONDENT_COLUMNS = ["Respondent", "Kommun", "Roll"]
# What the analyst picks in the drop-down (Swedish labels), by respondent.
ANSWERS = {
    "R01": ["Koordineringsroller"],
    "R02": ["Gemensamma utbildningar och erfarenhetsutbyte"],
    "R04": ["Digitala lösningar och informationsutbyte"],
    "R05": ["Styrning och ledning"],
    "R07": ["Mobila team och vårdmodeller"],
    "R08": ["Resultatuppföljning och utvärdering"],
    "R09": ["Samsyn och kontinuitet"],
    "R11": ["Koordineringsroller", "Gemensamma utbildningar och erfarenhetsutbyte"],
    "R13": ["Digitala lösningar och informationsutbyte"],
    "R14": ["Gemensamma utbildningar och erfarenhetsutbyte"],
    "R15": ["Styrning och ledning"],
    "R16": ["Övrigt"],
    "R18": ["Resultatuppföljning och utvärdering"],
    "R20": ["Mobila team och vårdmodeller"],
    "R21": ["Digitala lösningar och informationsutbyte"],
    "R23": ["Koordineringsroller"],
    "R24": ["Samsyn och kontinuitet"],
    "R25": ["Styrning och ledning"],
    "R27": ["Resultatuppföljning och utvärdering"],
    "R28": ["Gemensamma utbildningar och erfarenhetsutbyte"],
    "R31": ["Samsyn och kontinuitet"],
    "R40": ["Övrigt"],
}


def no_none(text: str) -> None:
    assert "None" not in text and "nan" not in text.split(), text


@pytest.mark.slow
def test_a_survey_from_excel_export_to_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the analyst's own folder, not the project
    monkeypatch.delenv("QUALCODE_CODEBOOK", raising=False)
    shutil.copy(SURVEY, "enkat.xlsx")
    shutil.copy(ROOT / "corpora" / "codebook.yaml", "codebook.yaml")

    code, said = run_cli(capsys, "segment", "enkat.xlsx", "--column", QUESTION, "-o", "segment.csv")
    assert code == 0, said
    assert "39 segments" in said and "1 empty answer(s) left out" in said
    assert "7 answer(s) with nothing to code" in said and "next: `qualcode label" in said
    segments = read_table("segment.csv")
    assert RESPONDENT_COLUMNS <= list(segments.columns)
    non = set(segments.loc[segments["non_answer"] == "true", "text"])
    assert non == {"Vet ej", "Nej.", "-", "Inget", "Bra", "Vet inte.", "???"}

    # Excel route: Swedish labels in the drop-down, the survey's columns, non-answers last.
    code, said = run_cli(capsys, "label", "--template", "segment.csv", "-o", "att_koda.xlsx")
    assert code == 0 and "codebook: codebook.yaml" in said, said
    book = openpyxl.load_workbook("att_koda.xlsx")
    sheet = book["segments"]
    header = [c.value for c in sheet[1]]
    assert header == [
        "segment_id", "document", "section", *RESPONDENT_COLUMNS, "text", "theme", "note"
    ]  # fmt: skip
    [validation] = sheet.data_validations.dataValidation
    assert "themes!$A$2" in validation.formula1
    assert book["themes"]["A2"].value == "Koordineringsroller"
    rows = list(sheet.iter_rows(min_row=2))
    texts = [r[header.index("text")].value for r in rows]
    assert set(texts[-7:]) == {"Vet ej", "Nej.", "-", "Inget", "Bra", "Vet inte.", "???"}
    for row in rows:
        picked = ANSWERS.get(row[header.index("Respondent")].value)
        if picked:
            row[header.index("theme")].value = ";".join(picked)
            row[header.index("note")].value = "ett citat till rapporten"
    book.save("att_koda.xlsx")
    code, said = run_cli(capsys, "label", "--import", "att_koda.xlsx", "-o", "etiketter.csv")
    assert code == 0 and "22 labels imported" in said, said
    assert set(read_table("etiketter.csv")["note"]) == {"ett citat till rapporten"}

    # A second template leaves out what is labelled.
    code, said = run_cli(
        capsys, "label", "--template", "segment.csv", "--labels", "etiketter.csv", "-o", "mer.xlsx"
    )
    assert code == 0 and "17 segments to label" in said, said

    code, said = run_cli(capsys, "train", "etiketter.csv", "-o", "models/enkat", "-q")
    assert code == 0, said
    no_none(said)
    Path("codebook.yaml").unlink()  # from here on, the model folder's copy is found

    code, said = run_cli(
        capsys, "classify", "models/enkat", "segment.csv", "-o", "prediktioner.csv", "-q"
    )
    assert code == 0, said
    assert "7 non-answer(s) not coded" in said
    text = Path("prediktioner.csv").read_text(encoding="utf-8")
    no_none(text)
    predictions = read_table("prediktioner.csv")
    assert RESPONDENT_COLUMNS <= list(predictions.columns)
    skipped = predictions["non_answer"] == "true"
    assert (predictions.loc[skipped, "theme"] == "").all()
    assert predictions.loc[skipped, "review_reason"].str.contains("vet ej").all()
    flagged = predictions["needs_review"] == "true"
    assert (predictions.loc[flagged, "review_reason"] != "").all()  # every flag says why
    assert (predictions.loc[~skipped, "theme"] != "").all()

    code, said = run_cli(
        capsys, "review", "--predictions", "prediktioner.csv", "--labels", "etiketter.csv",
        "-o", "granskning.csv",
    )  # fmt: skip
    assert code == 0 and "codebook: models/enkat/codebook.yaml" in said, said
    code, said = run_cli(capsys, "review", "apply", "etiketter.csv", "--labels", "granskning.csv")
    assert code == 2 and "look swapped" in said, said

    code, said = run_cli(
        capsys, "report", "prediktioner.csv", "-o", "rapport.html", "--pseudonymise", "-q"
    )
    assert code == 0, said
    assert "(rapport.html)" not in said  # a single file is named once
    html = Path("rapport.html").read_text(encoding="utf-8")
    assert 'id="non-answers">7<' in html
    assert "19450312" not in html and "1234" not in html  # a bad checksum is still personal
    no_none(html)

    code, said = run_cli(capsys, "export", "qdpx", "prediktioner.csv", "-o", "projekt.qdpx")
    assert code == 0, said
    project = zipfile.ZipFile("projekt.qdpx").read("project.qde").decode("utf-8")
    assert '<Variable guid="' in project and 'name="Kommun"' in project
    assert '<Case guid="' in project and 'name="R16"' in project
    code, said = run_cli(capsys, "export", "xlsx", "prediktioner.csv", "-o", "kodat.xlsx")
    assert code == 0, said
    matrix = pd.read_excel("kodat.xlsx", sheet_name="Alla segment", dtype=str)
    assert RESPONDENT_COLUMNS <= list(matrix.columns)
    summary = pd.read_excel("kodat.xlsx", sheet_name="Sammanfattning").set_index("Tema")
    assert summary.at["Icke-svar", "Segment"] == 7  # counted, as in the report


@pytest.mark.slow
def test_the_terminal_labeller_shows_the_respondent_and_asks_non_answers_last(tmp_path, capsys):
    """Driven in a pseudo-terminal: a survey answer comes with its respondent's columns, not
    other respondents' answers above and below, and "Vet ej" and the like come last."""
    from .test_label import HEADER, PROMPT, spawn

    code, said = run_cli(
        capsys, "segment", SURVEY, "--column", QUESTION, "-o", tmp_path / "segment.csv"
    )
    assert code == 0, said
    segments = read_table(tmp_path / "segment.csv")
    non = set(segments.loc[segments["non_answer"] == "true", "segment_id"])
    codebook = ROOT / "corpora" / "codebook.yaml"
    labeller_ready(tmp_path / "segment.csv", codebook, tmp_path)
    child = spawn(
        "label", str(tmp_path / "segment.csv"), "--codebook", str(codebook),
        "-o", str(tmp_path / "labels.csv"), "--coder", "anna", "--order", "file",
    )  # fmt: skip
    asked = []
    for _ in range(len(segments)):
        child.expect(HEADER)
        asked.append(child.match.group(4))
        child.expect(PROMPT)
        screen = child.before
        assert "Kommun: " in screen and "Roll: " in screen, screen
        assert "↑" not in screen and "↓" not in screen, screen
        child.sendline("s")
    child.sendline("q")
    assert set(asked[-len(non) :]) == non and not set(asked[: -len(non)]) & non
