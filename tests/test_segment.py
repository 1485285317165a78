"""Segmentation of real notes (seed 001 round-table notes), prose, .docx and survey exports."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import docx
import openpyxl
import pandas as pd
import pytest

from qualcode.demo import skane_notes
from qualcode.segmentation import (
    SEGMENT_COLUMNS,
    segment,
    segment_id,
    segment_text,
    split_sentences,
)

from .conftest import error_of

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "corpora" / "seeds"
SEED_NAMES = [
    "000_eec67be2146255fe.txt",
    "001_7f727ce3aee8fb1a.txt",
    "002_dcebba742a4ca32e.txt",
    "003_0f3a7ff52bc35824.txt",
    "004_eb30d2dc003e89ab.txt",
]


def seed(name: str) -> Path:
    path = SEEDS / name
    assert path.is_file(), f"{path} is part of the repository"
    return path


@pytest.fixture(scope="module")
def notes() -> pd.DataFrame:
    return segment([seed(SEED_NAMES[1])])


def by_text(frame: pd.DataFrame, text: str) -> pd.Series:
    match = frame[frame["text"] == text]
    assert len(match) == 1, f"expected one segment {text!r}, got {len(match)}"
    return match.iloc[0]


# --------------------------------------------------------------------------- golden ids

# sha256 of the ids `qualcode segment` gives the five seed documents, one per line, in order.
# Labels are joined to segments by these ids: a change here orphans every analyst's labels.
GOLDEN_SEED_IDS = "435e9081fad3d11136ec0e91f0063f65171be61d2236648c07fec3f9bf3388bf"


def test_segment_ids_of_the_seed_documents_are_golden():
    ids = segment([seed(name) for name in SEED_NAMES])["segment_id"]
    assert len(ids) == 274
    assert hashlib.sha256("\n".join(ids).encode()).hexdigest() == GOLDEN_SEED_IDS


def test_label_files_ids_are_what_the_segmenter_gives():
    labels = pd.read_csv(ROOT / "corpora" / "labels" / "seed_set.csv", dtype=str)
    labels = labels.fillna("")
    recomputed = [
        segment_id(d, s, t)
        for d, s, t in zip(labels["document"], labels["section"], labels["text"])
    ]
    assert recomputed == labels["segment_id"].tolist()
    dev = pd.read_csv(ROOT / "corpora" / "labels" / "notes_dev.csv", dtype=str)
    assert skane_notes(ROOT / "corpora")["segment_id"].tolist() == dev["segment_id"].tolist()


# --------------------------------------------------------------------------- seed 001


def test_seed_001_columns_and_document(notes):
    assert list(notes.columns) == SEGMENT_COLUMNS
    assert set(notes["document"]) == {"001_7f727ce3aee8fb1a.txt"}
    assert notes["segment_id"].is_unique
    assert notes["segment_id"].str.startswith("001-7f727ce3aee8fb1a-").all()
    assert notes["line_start"].dtype == "int64"
    assert (notes["line_start"] <= notes["line_end"]).all()


def test_bullet_with_continuation_line_is_one_segment(notes):
    row = by_text(
        notes, "Neutral koordinator/funktion som komplement till delregional tjänstemannaberedning"
    )
    assert (row.line_start, row.line_end) == (178, 179)
    assert row.section == "DISKUSSIONSGRUPP ?"
    assert not (notes["text"] == "som komplement till delregional tjänstemannaberedning").any()


def test_sub_bullets_join_their_parent(notes):
    row = by_text(notes, "Utvärdering och koppling till effekt: Ekonomi; Livskvalitet; Evidens")
    assert (row.line_start, row.line_end) == (167, 170)
    assert not notes["text"].isin(["Ekonomi", "Livskvalitet", "Evidens"]).any()


def test_caps_heading_is_section_not_segment(notes):
    assert not notes["text"].str.contains("DISKUSSIONSGRUPP").any()
    group = notes[notes["section"] == "DISKUSSIONSGRUPP NORDOST 1"]
    assert group["text"].tolist()[:3] == [
        "Falckbil placerad i nordost behövs – inte alla enbart i Malmö",
        "Närsjukvårdsteam från bägge sjukhusen behövs enligt VGR-modellen. "
        "Finns redan i Hässleholm",
        "Oskarhamnsmodell startas",
    ]
    assert len(group) == 17
    assert group["line_start"].min() == 115


def test_label_before_list_nests_under_caps_heading(notes):
    texts = notes[notes["section"] == "DISKUSSIONSGRUPP SYDVÄST 1 › Hälsostatus"]["text"]
    assert texts.tolist() == [
        "Se över befintlig handlingsplan och pågående processer",
        "Öka inskrivningstakt",
        "Visam-utbildning för fler",
        "Utveckla gemensam uppföljning av vilka effekter vi ser",
    ]


def test_fragments_without_letters_markers_and_numbering_are_dropped(notes):
    assert notes["text"].str.contains(r"[^\W\d_]", regex=True).all()
    assert not notes["text"].isin(["?", "1)"]).any()
    assert not notes["text"].str.contains(r"\*\*|^\d+\)|^[-•–] ", regex=True).any()
    assert not (notes["line_start"] == 100).any()  # the lone "?" line
    # Short content fragments in the notes are kept, not mistaken for headings.
    assert {"Specialistkompetens", "eller både och"} <= set(notes["text"])


def test_lines_point_at_the_source(notes):
    lines = seed(SEED_NAMES[1]).read_text(encoding="utf-8").split("\n")
    for row in notes.itertuples():
        first_word = row.text.split()[0].strip('"”(')
        assert first_word in lines[row.line_start - 1], (row.line_start, row.text)


def test_seed_001_prose_paragraphs(notes):
    row = notes[notes["text"].str.startswith("Den 21 oktober samlades")].iloc[0]
    assert row.line_start == row.line_end == 17
    assert row.section == (
        "Bakgrund – Insatser för att ytterligare utveckla samverkan och teamarbete"
    )


# --------------------------------------------------------------------------- other seeds


def test_label_heading_becomes_section_in_seed_000():
    frame = segment([seed(SEED_NAMES[0])])
    row = by_text(frame, "Vilka aktörer samverkar/har ni samverkat med under coronapandemin?")
    assert row.section == "Frågor till kommunrepresentant › Vilka?"
    assert not frame["text"].isin(["Frågor till kommunrepresentant", "Vilka?"]).any()
    quote = by_text(
        frame,
        "”Helt klart stärkt vår samverkan och givit oss nya viktiga nätverk. "
        "Önskar att tid och utrymmer fanns för mer av detta framöver.”",
    )
    assert quote.section == "Samverkansstrukturerna"


def test_seminar_headings_and_speech_dashes_in_seed_004():
    frame = segment([seed(SEED_NAMES[4])])
    assert "Nära invånarna" not in set(frame["text"])
    speech = frame[frame["text"].str.startswith("Våra behov förändras")].iloc[0]
    assert speech.section == "Göra på nya sätt och möta nya behov"
    bullets = frame[frame["section"] == "Framgångsfaktorer"]
    assert len(bullets) == 5


@pytest.mark.parametrize("name", SEED_NAMES)
@pytest.mark.parametrize("unit", ["paragraph", "sentence"])
def test_every_seed_segments_cleanly(name, unit):
    frame = segment([seed(name)], unit=unit)
    assert len(frame) >= 10
    assert frame["segment_id"].is_unique
    assert not frame["text"].str.contains(r"\s{2,}|\u00ad|^\s|\s$", regex=True).any()
    assert frame["text"].str.contains(r"[^\W\d_]", regex=True).all()


# --------------------------------------------------------------------------- ids


def test_ids_are_stable_across_runs_and_edits_elsewhere(tmp_path):
    path = tmp_path / "notes.txt"
    shutil.copyfile(seed(SEED_NAMES[1]), path)
    first = segment([path])
    assert segment([path])["segment_id"].tolist() == first["segment_id"].tolist()
    original = path.read_text(encoding="utf-8")
    path.write_text("Ny inledande mening om något helt annat.\n\n" + original, encoding="utf-8")
    edited = segment([path])
    assert len(edited) == len(first) + 1
    kept = edited.iloc[1:].reset_index(drop=True)
    assert kept["segment_id"].tolist() == first["segment_id"].tolist()
    assert (kept["line_start"] == first["line_start"] + 2).all()


def test_repeated_segments_get_numbered_ids():
    frame = segment_text("- Kvalitetssäkra SIP\n- Annat\n- Kvalitetssäkra SIP\n", "Möte 1.txt")
    ids = frame["segment_id"].tolist()
    assert ids[0].startswith("mote-1-") and len(ids[0]) == len("mote-1-") + 8
    assert ids[2] == ids[0] + "-2"


# --------------------------------------------------------------------------- text rules


def test_notes_structure_rules():
    text = (
        "# Workshop\n\n"
        "DISKUSSIONSGRUPP\nNORDOST 2\n\n"
        "Frågor till regionen:\n"
        "- 1) **Gemensam** journal\n"
        "  som alla kan läsa\n"
        "  - *Ekonomi*\n"
        "  - Juridik\n"
        "2. Fler\u00a0 mötesplatser\n"
        "a) Tydligare\u00adroller\n\n"
        "---\n\n"
        "1)\n\n"
        "Samverkan fungerar bra. Men det finns brister.\n"
    )
    frame = segment_text(text, "notes.md", unit="sentence")
    section = "DISKUSSIONSGRUPP NORDOST 2 › Frågor till regionen"
    assert frame[["section", "line_start", "line_end", "text"]].values.tolist() == [
        [section, 7, 10, "Gemensam journal som alla kan läsa: Ekonomi; Juridik"],
        [section, 11, 11, "Fler mötesplatser"],
        [section, 12, 12, "Tydligareroller"],
        [section, 18, 18, "Samverkan fungerar bra."],
        [section, 18, 18, "Men det finns brister."],
    ]


def test_markdown_heading_hierarchy_and_paragraph_unit():
    text = (
        "# Del 1\n\nText ett. Mer text.\n\n## Avsnitt\n\nText två\nfortsätter här.\n\n"
        "# Del 2\n\nText tre."
    )
    frame = segment_text(text, "x.md")
    assert frame[["section", "line_start", "line_end", "text"]].values.tolist() == [
        ["Del 1", 3, 3, "Text ett. Mer text."],
        ["Del 1 › Avsnitt", 7, 8, "Text två fortsätter här."],
        ["Del 2", 12, 12, "Text tre."],
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Vi har t.ex. SIP och bl.a. mobila team. Det s.k. klustret fungerar.",
            ["Vi har t.ex. SIP och bl.a. mobila team.", "Det s.k. klustret fungerar."],
        ),
        (
            "Det kostar ca. 3.5 miljoner, d.v.s. mycket. Nästa år blir det nr. 2 i ordningen.",
            ["Det kostar ca. 3.5 miljoner, d.v.s. mycket.", "Nästa år blir det nr. 2 i ordningen."],
        ),
        (
            "Anna K. Svensson ledde mötet. Hon sa ja! Varför? Ingen vet.",
            ["Anna K. Svensson ledde mötet.", "Hon sa ja!", "Varför?", "Ingen vet."],
        ),
        (
            "Vi träffar rehab, ASIH m.m. Därefter följer vi upp.",
            ["Vi träffar rehab, ASIH m.m.", "Därefter följer vi upp."],
        ),
        (
            "”Det var bra. Mycket bra.” Sedan gick vi hem.",
            ["”Det var bra. Mycket bra.”", "Sedan gick vi hem."],
        ),
        (
            "Vi måste göra på nya sätt.För att vi ska må bra.",
            ["Vi måste göra på nya sätt.", "För att vi ska må bra."],
        ),
        (
            "Mötet hölls kl. 13.00 den 7 febr. 2020 i Malmö.",
            ["Mötet hölls kl. 13.00 den 7 febr. 2020 i Malmö."],
        ),
        (
            "Besök www.founu.se för mer. info finns där.",
            ["Besök www.founu.se för mer. info finns där."],
        ),
    ],
)
def test_split_sentences(text, expected):
    assert [text[a:b] for a, b in split_sentences(text)] == expected


def test_bullets_are_not_split_into_sentences():
    text = "Lista:\n- Första punkten. Den har två meningar.\n- Andra punkten\n"
    frame = segment_text(text, "a.txt", unit="sentence")
    assert frame["text"].tolist() == ["Första punkten. Den har två meningar.", "Andra punkten"]


# --------------------------------------------------------------------------- docx


def test_docx_paragraphs_lists_headings_and_tables(tmp_path):
    document = docx.Document()
    document.add_heading("Workshop Malmö", level=1)  # paragraph 1
    document.add_paragraph("Vi diskuterade samverkan. Det var bra.")  # 2
    document.add_heading("Förslag", level=2)  # 3
    document.add_paragraph("Neutral koordinator", style="List Bullet")  # 4
    document.add_paragraph("Ekonomi", style="List Bullet 2")  # 5
    document.add_paragraph("Gemensamma utbildningar", style="List Number")  # 6
    document.add_paragraph("")  # 7
    document.add_paragraph("Sista stycket om uppföljning.")  # 8
    table = document.add_table(rows=1, cols=2)
    table.cell(0, 0).text = "Cell om IT-stöd"  # 9
    table.cell(0, 1).text = "ANNAN CELL"  # 10
    path = tmp_path / "workshop.docx"
    document.save(path)

    frame = segment([path])
    assert frame[["section", "line_start", "line_end", "text"]].values.tolist() == [
        ["Workshop Malmö", 2, 2, "Vi diskuterade samverkan. Det var bra."],
        ["Workshop Malmö › Förslag", 4, 5, "Neutral koordinator: Ekonomi"],
        ["Workshop Malmö › Förslag", 6, 6, "Gemensamma utbildningar"],
        ["Workshop Malmö › Förslag", 8, 8, "Sista stycket om uppföljning."],
        ["Workshop Malmö › Förslag", 9, 9, "Cell om IT-stöd"],
        ["Workshop Malmö › Förslag", 10, 10, "ANNAN CELL"],
    ]
    assert set(frame["document"]) == {"workshop.docx"}
    assert len(segment([path], unit="sentence")) == 7


def test_invalid_docx(tmp_path):
    path = tmp_path / "broken.docx"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a valid Word .docx" in error_of(segment, [path])


# --------------------------------------------------------------------------- surveys


@pytest.fixture
def survey(tmp_path) -> Path:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["respondent", "kommun", "Svar", "text"])
    sheet.append([1, "Malmö", "Bättre samverkan behövs. Mer IT-stöd.", "x"])
    sheet.append([2, "Lund", "", "y"])
    sheet.append([3, "Ystad", "-", "z"])
    sheet.append([4, "Lund", "  Gemensam\nuppföljning  ", "w"])
    path = tmp_path / "enkät.xlsx"
    workbook.save(path)
    return path


def test_xlsx_survey_export_with_column(survey):
    frame = segment([survey], column="Svar")
    columns = [*SEGMENT_COLUMNS, "respondent", "kommun", "meta_text", "non_answer"]
    assert list(frame.columns) == columns
    assert frame[
        ["section", "line_start", "line_end", "text", "kommun", "meta_text", "non_answer"]
    ].values.tolist() == [
        ["Svar", 2, 2, "Bättre samverkan behövs. Mer IT-stöd.", "Malmö", "x", "false"],
        ["Svar", 4, 4, "-", "Ystad", "z", "true"],  # kept, counted, marked: not coded
        ["Svar", 5, 5, "Gemensam uppföljning", "Lund", "w", "false"],
    ]
    assert frame.attrs["empty_answers"] == 1 and frame.attrs["non_answers"] == 1
    assert frame["segment_id"].str.startswith("enkat-").all()
    sentences = segment([survey], column="svar", unit="sentence")
    assert sentences["text"].tolist()[:2] == ["Bättre samverkan behövs.", "Mer IT-stöd."]
    assert set(sentences["section"]) == {"Svar"}  # the file's spelling, not the option's


def test_survey_without_or_with_wrong_column(survey):
    message = error_of(segment, [survey])
    assert "--column" in message and "'respondent', 'kommun', 'Svar', 'text'" in message
    assert "missing required column(s) 'answer'" in error_of(segment, [survey], column="answer")


def test_csv_survey_mixed_with_documents(tmp_path):
    answers = tmp_path / "svar.csv"
    answers.write_text("id;svar\n1;Vi vill ha en koordinator.\n2;\n", encoding="cp1252")
    notes = tmp_path / "anteckningar.txt"
    notes.write_text("- Neutral koordinator\n- Digitala möten\n", encoding="utf-8")
    frame = segment([answers, notes], column="svar")
    assert frame["document"].tolist() == ["svar.csv", "anteckningar.txt", "anteckningar.txt"]
    assert frame["id"].tolist() == ["1", "", ""]


# --------------------------------------------------------------------------- bad input


def test_bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text(" \n\n\t\n")
    (tmp_path / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")
    (tmp_path / "slides.pdf").write_bytes(b"%PDF-1.4")
    (tmp_path / "only.txt").write_text("DISKUSSIONSGRUPP 1\n\n?\n")
    assert "not found" in error_of(segment, [tmp_path / "missing.txt"])
    assert "is empty" in error_of(segment, [tmp_path / "empty.txt"])
    assert "only whitespace" in error_of(segment, [tmp_path / "blank.txt"])
    assert "binary" in error_of(segment, [tmp_path / "image.txt"])
    assert "convert it to .txt or .docx" in error_of(segment, [tmp_path / "slides.pdf"])
    assert "no text segments" in error_of(segment, [tmp_path / "only.txt"])
    assert "unknown segmentation unit" in error_of(segment, [tmp_path / "only.txt"], unit="word")
    assert "no input files" in error_of(segment, [])


def test_duplicate_inputs(tmp_path):
    first = tmp_path / "a" / "notes.txt"
    second = tmp_path / "b" / "notes.txt"
    for path in (first, second):
        path.parent.mkdir()
        path.write_text("- Samverkan\n- Koordinator\n")
    assert "given twice" in error_of(segment, [first, first])
    assert "two inputs are named 'notes.txt'" in error_of(segment, [first, second])
