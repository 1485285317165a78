"""`qualcode report`: counts, charts, quotes, the REFI-QDA export and the code matrix, on a small
predictions file and on the real hand-labelled seed set."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree as ET

import openpyxl
import pandas as pd
import pytest
from click.testing import CliRunner

from qualcode.cli.report import report as report_cmd
from qualcode.codebook import load_codebook
from qualcode.errors import QualcodeError
from qualcode.files.tables import read_table, write_table
from qualcode.reporting.export import QDA_NAMESPACE, write_qdpx
from qualcode.reporting.report import exemplar_quotes, report, theme_counts

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK = ROOT / "corpora" / "codebook.yaml"
SEED_SET = ROOT / "corpora" / "labels" / "seed_set.csv"
Q = f"{{{QDA_NAMESPACE}}}"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (document, section, line, text, theme, confidence, needs_review)
ROWS = [
    (
        "anteckningar.txt",
        "GRUPP 1",
        3,
        "Vi behöver en lokal koordinator i varje kluster.",
        "coordination_roles",
        0.91,
        False,
    ),
    (
        "anteckningar.txt",
        "GRUPP 1",
        4,
        "Kontaktpersonen i kommunen är *ovärderlig* [sic].",
        "coordination_roles",
        0.83,
        False,
    ),
    (
        "anteckningar.txt",
        "GRUPP 1",
        5,
        "Samordnaren slutade och ingen tog över.",
        "coordination_roles",
        0.97,
        True,
    ),
    (
        "anteckningar.txt",
        "GRUPP 2",
        8,
        "- gemensamma utbildningsdagar för sjuksköterskor",
        "shared_training",
        0.88,
        False,
    ),
    (
        "anteckningar.txt",
        "GRUPP 2",
        9,
        "Nätverksträffar ger inspiration.",
        "shared_training",
        0.52,
        True,
    ),
    (
        "anteckningar.txt",
        "GRUPP 2",
        10,
        "Ledningsgruppen måste ge mandat.",
        "steering",
        0.95,
        False,
    ),
    ("enkät.xlsx", "Svar", 2, "=Videomöten fungerar bra", "digital_communication", 0.76, False),
    (
        "enkät.xlsx",
        "Svar",
        3,
        "Journalen syns inte hos kommunen.",
        "digital_communication",
        0.64,
        True,
    ),
    (
        "enkät.xlsx",
        "Svar",
        4,
        "Mobila team besöker patienten i hemmet.",
        "teams_care_models",
        0.92,
        False,
    ),
    ("enkät.xlsx", "Svar", 5, "Vi följer upp resultaten varje kvartal.", "follow_up", 0.81, False),
    (
        "enkät.xlsx",
        "Svar",
        6,
        "Koordinatorn i enkätsvaret hjälper oss.",
        "coordination_roles",
        0.79,
        False,
    ),
    ("enkät.xlsx", "Svar", 7, "Det var en bra dag.", "other", 0.41, True),
]


def _predictions_frame() -> pd.DataFrame:
    book = load_codebook(CODEBOOK)
    records = []
    for i, (document, section, line, text, theme, confidence, flagged) in enumerate(ROWS):
        others = [t for t in book.ids if t != theme]
        rest = round((1 - confidence) / len(others), 4)
        record = {
            "segment_id": f"{Path(document).stem}-{i:08x}",
            "document": document,
            "section": section,
            "line_start": str(line),
            "line_end": str(line + (1 if i == 0 else 0)),
            "text": text,
            "kommun": "Hässleholm" if i % 2 else "Kristianstad",
            "theme": theme,
            "confidence": str(confidence),
            "second_theme": others[0],
            "margin": str(round(confidence - rest, 4)),
            "needs_review": "true" if flagged else "false",
            "review_reason": "low confidence (0.50 < 0.60)" if flagged else "",
        }
        for t in book.ids:
            record[f"p_{t}"] = str(confidence if t == theme else rest)
        records.append(record)
    return pd.DataFrame(records)


@pytest.fixture(scope="module")
def codebook():
    return load_codebook(CODEBOOK)


@pytest.fixture(scope="module")
def predictions_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pred") / "predictions.csv"
    write_table(_predictions_frame(), path)
    return path


@pytest.fixture(scope="module")
def predictions(predictions_path) -> pd.DataFrame:
    return read_table(predictions_path, required=("text", "theme"))


@pytest.fixture(scope="module")
def pred_report(predictions, codebook, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred_report") / "rapport"
    return report(predictions, codebook, out, source_name="predictions.csv")


@pytest.fixture(scope="module")
def seed_labels() -> pd.DataFrame:
    return read_table(SEED_SET, required=("text", "theme"))


@pytest.fixture(scope="module")
def seed_report(seed_labels, codebook, tmp_path_factory):
    out = tmp_path_factory.mktemp("seed_report")
    return report(seed_labels, codebook, out, source_name="seed_set.csv")


def _qde(path: Path) -> tuple[ET.Element, dict[str, str]]:
    with zipfile.ZipFile(path) as archive:
        root = ET.fromstring(archive.read("project.qde"))
        texts = {
            name: archive.read(name).decode("utf-8")
            for name in archive.namelist()
            if name != "project.qde"
        }
    return root, texts


def _check_qdpx(path: Path, table: pd.DataFrame, codebook) -> ET.Element:
    """Structure of a REFI-QDA project and every selection's slice equal to its segment."""
    root, texts = _qde(path)
    assert root.tag == f"{Q}Project"
    users = root.findall(f"{Q}Users/{Q}User")
    user_guids = {u.get("guid") for u in users}
    assert "qualcode" in {u.get("name") for u in users}
    assert root.get("creatingUserGUID") in user_guids
    codes = root.findall(f"{Q}CodeBook/{Q}Codes/{Q}Code")
    assert [c.get("name") for c in codes] == [t.label for t in codebook.themes]
    assert all(c.get("isCodable") == "true" for c in codes)
    assert all(re.fullmatch(r"#[0-9A-F]{6}", c.get("color")) for c in codes)
    assert all(c.find(f"{Q}Description").text for c in codes)
    code_of = {c.get("guid"): c.get("name") for c in codes}
    label_of = {t.id: t.label for t in codebook.themes}

    sources = root.findall(f"{Q}Sources/{Q}TextSource")
    assert sorted(s.get("name") for s in sources) == sorted(table["document"].unique())
    by_text = {}
    for _, row in table.iterrows():
        by_text.setdefault((row["document"], row["text"]), set()).update(
            label_of[t] for t in codebook.parse_themes(row["theme"])
        )
    selections = 0
    for source in sources:
        assert source.get("creatingUser") in user_guids
        guid = source.get("guid")
        assert source.get("plainTextPath") == f"internal://{guid}.txt"
        text = texts[f"sources/{guid}.txt"]
        for selection in source.findall(f"{Q}PlainTextSelection"):
            start, end = int(selection.get("startPosition")), int(selection.get("endPosition"))
            piece = text[start:end]
            coded = {code_of[ref.get("targetGUID")] for ref in selection.iter(f"{Q}CodeRef")}
            assert coded == by_text[(source.get("name"), piece)]
            for coding in selection.findall(f"{Q}Coding"):
                assert coding.get("creatingUser") in user_guids
            selections += 1
    assert selections == len(table.drop_duplicates(["document", "text"]))
    guids = [e.get("guid") for e in root.iter() if e.get("guid") is not None]
    assert len(guids) == len(set(guids)) and all(GUID.match(g) for g in guids)
    return root


# --------------------------------------------------------------------------- predictions


def test_counts_match_the_predictions(pred_report, predictions):
    counts = pred_report.counts.set_index("theme")
    themes = counts.drop("total")
    expected = predictions["theme"].value_counts()
    assert themes["segments"].to_dict() == {t: int(expected.get(t, 0)) for t in themes.index}
    # a share is of the segments: 9 of 65 is 13,8 %, not forced to make the column add to 100 %
    assert (themes["share"] == themes["segments"] / len(predictions)).all()
    flagged = predictions[predictions["needs_review"] == "true"]["theme"].value_counts()
    assert themes["flagged"].to_dict() == {t: int(flagged.get(t, 0)) for t in themes.index}
    assert (themes["unflagged"] == themes["segments"] - themes["flagged"]).all()
    assert counts.loc["total", "segments"] == len(predictions) == pred_report.segments
    assert counts.loc["total", "flagged"] == 4 == pred_report.flagged
    # one column per document, and its unflagged part
    by_doc = pd.crosstab(predictions["theme"], predictions["document"])
    for document in ("anteckningar.txt", "enkät.xlsx"):
        assert themes[document].to_dict() == {
            t: int(by_doc[document].get(t, 0)) for t in themes.index
        }
        assert f"{document} (unflagged)" in counts.columns
    assert counts.loc["coordination_roles", "anteckningar.txt (unflagged)"] == 2
    assert counts.loc["coordination_roles", "label"] == "Koordineringsroller"
    written = read_table(pred_report.paths["counts"])
    assert written["theme"].tolist() == [*themes.index, "total"]
    assert written.columns.tolist() == pred_report.counts.columns.tolist()


def test_counts_by_section_and_metadata(predictions, codebook):
    by_section = theme_counts(predictions, codebook, by="section").set_index("theme")
    assert by_section.loc["coordination_roles", "GRUPP 1"] == 3
    assert by_section.loc["total", "Svar"] == 6
    by_town = theme_counts(predictions, codebook, by="kommun").set_index("theme")
    assert by_town.loc["total", "Hässleholm"] + by_town.loc["total", "Kristianstad"] == 12


def test_exemplars_are_the_most_confident_unflagged(predictions, codebook, pred_report):
    quotes = exemplar_quotes(predictions, codebook, n=2)
    frame = predictions.assign(confidence=predictions["confidence"].astype(float))
    for theme in codebook.ids:
        mine = frame[(frame["theme"] == theme) & (frame["needs_review"] == "false")]
        expected = mine.sort_values("confidence", ascending=False)["text"].head(2).tolist()
        assert quotes[quotes["theme"] == theme]["text"].tolist() == expected
    top = quotes[quotes["theme"] == "coordination_roles"].iloc[0]
    assert top["text"] == "Vi behöver en lokal koordinator i varje kluster."
    assert (top["document"], top["section"], top["line_start"], top["line_end"]) == (
        "anteckningar.txt",
        "GRUPP 1",
        "3",
        "4",
    )
    assert top["segment_id"] == "anteckningar-00000000"
    assert not quotes["needs_review"].any()
    # the flagged 0.97 segment leads once flagged quotes are allowed
    with_flagged = exemplar_quotes(predictions, codebook, n=1, include_flagged=True)
    first = with_flagged.set_index("theme").loc["coordination_roles"]
    assert first["text"] == "Samordnaren slutade och ingen tog över." and first["needs_review"]

    markdown = pred_report.paths["markdown"].read_text(encoding="utf-8")
    assert markdown.startswith("# Samverkan region–primärvård–kommun")
    assert "`predictions.csv`" in markdown
    assert (
        "> Vi behöver en lokal koordinator i varje kluster.\n>\n> — anteckningar.txt · "
        "GRUPP 1 · rad 3–4 · `anteckningar-00000000` · säkerhet 91 %"
    ) in markdown
    assert "Samordnaren slutade" not in markdown  # flagged: not quoted
    assert r"> Kontaktpersonen i kommunen är \*ovärderlig\* \[sic\]." in markdown
    assert r"> \- gemensamma utbildningsdagar för sjuksköterskor" in markdown
    assert "> =Videomöten fungerar bra" in markdown
    assert "![Teman](themes.png)" in markdown
    assert "![Teman per dokument](themes_by_document.png)" in markdown
    for theme in codebook.themes:
        assert f"### {theme.label} · *{theme.label_en}*" in markdown
        assert theme.description in markdown
    assert "Inga säkra citat" in markdown  # 'other' has only a flagged segment


def test_charts_are_pngs(pred_report):
    for role in ("themes_chart", "groups_chart"):
        data = pred_report.paths[role].read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
    assert pred_report.paths["groups_chart"].name == "themes_by_document.png"


def test_qdpx_is_refi_qda_and_stable(pred_report, predictions, codebook, tmp_path):
    root = _check_qdpx(pred_report.paths["qdpx"], predictions, codebook)
    flagged = [
        s
        for s in root.iter(f"{Q}PlainTextSelection")
        if "flaggad" in (s.findtext(f"{Q}Description") or "")
    ]
    assert len(flagged) == 4
    again = write_qdpx(predictions, codebook, tmp_path / "again.qdpx").path
    first_guids = [e.get("guid") for e in root.iter() if e.get("guid")]
    second_guids = [e.get("guid") for e in _qde(again)[0].iter() if e.get("guid")]
    assert first_guids == second_guids
    assert _qde(again)[1] == _qde(pred_report.paths["qdpx"])[1]  # same source texts


def test_code_matrix_xlsx(pred_report, predictions, codebook):
    workbook = openpyxl.load_workbook(pred_report.paths["matrix"], read_only=True)
    rows = list(workbook["Alla segment"].iter_rows(values_only=True))
    workbook.close()
    header, body = rows[0], rows[1:]
    assert len(body) == len(predictions)
    for column in (
        "segment_id",
        "document",
        "section",
        "line_start",
        "text",
        "kommun",
        "theme_label",
        "confidence",
        "needs_review",
    ):
        assert column in header
    assert not any(str(h).startswith("p_") for h in header)
    matrix = pd.DataFrame(body, columns=header)
    for theme in codebook.themes:
        expected = (matrix["theme"] == theme.id).astype(int).tolist()
        assert matrix[theme.label].tolist() == expected
    assert matrix[[t.label for t in codebook.themes]].sum(axis=1).eq(1).all()
    assert matrix.loc[0, "line_start"] == 3  # a number, not text
    assert "=Videomöten fungerar bra" in matrix["text"].tolist()


# --------------------------------------------------------------------------- labels


def test_seed_set_labels_report(seed_report, seed_labels, codebook):
    counts = seed_report.counts.set_index("theme")
    assert seed_report.kind == "labels" and seed_report.flagged is None
    assert "flagged" not in counts.columns
    expected = seed_labels["theme"].str.split(";").explode().value_counts()
    themes = counts.drop("total")
    assert themes["segments"].to_dict() == {t: int(expected.get(t, 0)) for t in themes.index}
    assert (themes["share"] == themes["segments"] / 206).all()  # two-theme rows count twice
    assert themes["share"].sum() > 1
    assert counts.loc["total", "segments"] == len(seed_labels) == 206
    documents = seed_labels["document"].unique()
    assert counts.loc["total", list(documents)].sum() == 206

    quotes = exemplar_quotes(seed_labels, codebook, n=3)
    for theme in codebook.ids:
        first = seed_labels[seed_labels["theme"].str.split(";").map(lambda ids, t=theme: t in ids)]
        assert quotes[quotes["theme"] == theme]["text"].tolist() == first["text"].head(3).tolist()
    markdown = seed_report.paths["markdown"].read_text(encoding="utf-8")
    assert "kodare seed" in markdown and "säkerhet" not in markdown
    assert "andelen av alla kodningar" in markdown  # some segments carry two themes

    _check_qdpx(seed_report.paths["qdpx"], seed_labels, codebook)
    root, texts = _qde(seed_report.paths["qdpx"])
    assert len(root.findall(f"{Q}Sources/{Q}TextSource")) == 5 == len(texts)
    assert {u.get("name") for u in root.iter(f"{Q}User")} == {"qualcode", "seed"}

    workbook = openpyxl.load_workbook(seed_report.paths["matrix"], read_only=True)
    rows = list(workbook["Alla segment"].iter_rows(values_only=True))
    workbook.close()
    matrix = pd.DataFrame(rows[1:], columns=rows[0])
    assert len(matrix) == 206
    labels = [t.label for t in codebook.themes]
    assert int(matrix[labels].to_numpy().sum()) == int(expected.sum())
    two = seed_labels["theme"].str.contains(";")
    assert two.any() and set(matrix[labels].sum(axis=1)) == {1, 2}
    for pngs in ("themes_chart", "groups_chart"):
        assert seed_report.paths[pngs].read_bytes().startswith(PNG_SIGNATURE)


def test_several_coders_count_a_segment_once(codebook, tmp_path):
    base = {"segment_id": "s-1", "document": "a.txt", "section": "", "text": "Vi delar journal."}
    labels = pd.DataFrame(
        [
            {**base, "theme": "digital_communication", "coder": "anna"},
            {**base, "theme": "Digitala lösningar och informationsutbyte;steering", "coder": "bo"},
            {
                **base,
                "segment_id": "s-2",
                "text": "Ledningen beslutar.",
                "theme": "steering",
                "coder": "anna",
            },
            {**base, "segment_id": "s-3", "text": "Hoppade över.", "theme": "", "coder": "anna"},
        ]
    )
    counts = theme_counts(labels, codebook).set_index("theme")
    assert counts.loc["digital_communication", "segments"] == 1
    assert counts.loc["steering", "segments"] == 2
    assert counts.loc["total", "segments"] == 2  # the skipped row is not a coded segment
    root, texts = _qde(write_qdpx(labels, codebook, tmp_path / "c.qdpx").path)
    users = {u.get("name"): u.get("guid") for u in root.iter(f"{Q}User")}
    assert set(users) == {"qualcode", "anna", "bo"}
    first = next(root.iter(f"{Q}PlainTextSelection"))
    makers = [c.get("creatingUser") for c in first.findall(f"{Q}Coding")]
    assert makers == [users["anna"], users["bo"], users["bo"]]
    assert list(texts.values()) == ["Vi delar journal.\n\nLedningen beslutar."]


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_clear_error(predictions, codebook, tmp_path):
    with pytest.raises(QualcodeError, match=r"missing column\(s\) 'theme'"):
        report(predictions.drop(columns=["theme"]), codebook, tmp_path / "r")
    with pytest.raises(QualcodeError, match="no rows"):
        report(predictions.iloc[0:0], codebook, tmp_path / "r")
    bad = predictions.copy()
    bad.loc[2, "theme"] = "samverkan"
    bad.loc[5, "theme"] = "koordinering"
    with pytest.raises(QualcodeError, match="unknown theme.*'samverkan'.*'koordinering'") as err:
        report(bad, codebook, tmp_path / "r")
    assert "\n" not in str(err.value)
    with pytest.raises(
        QualcodeError,
        match=r"--by column 'region' is not in the input; "
        r"columns: 'segment_id', 'document'",
    ):
        report(predictions, codebook, tmp_path / "r", by="region")
    flags = predictions.copy()
    flags.loc[0, "needs_review"] = "kanske"
    with pytest.raises(QualcodeError, match="row 2: needs_review 'kanske'"):
        report(flags, codebook, tmp_path / "r")
    assert not (tmp_path / "r").exists()  # nothing written on bad input
    no_doc = predictions.drop(columns=["document"])
    with pytest.raises(QualcodeError, match="'document' is not in the input"):
        theme_counts(no_doc, codebook, by="document")
    assert "anteckningar.txt" not in theme_counts(no_doc, codebook, by=None).columns


def test_cli(predictions_path, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rapport"
    result = runner.invoke(
        report_cmd,
        [
            str(predictions_path),
            "--codebook",
            str(CODEBOOK),
            "-o",
            str(out),
            "--by",
            "section",
            "--exemplars",
            "1",
            "--include-flagged",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "coordination_roles" in result.stdout and "total" in result.stdout
    assert "Koordineringsroller" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert names == {
        "theme_counts.csv",
        "themes.png",
        "themes_by_section.png",
        "report.md",
        "report.html",
        "codes.qdpx",
        "coded_segments.xlsx",
    }
    assert "Samordnaren slutade" in (out / "report.md").read_text(encoding="utf-8")

    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    failed = runner.invoke(report_cmd, [str(empty), "--codebook", str(CODEBOOK), "-o", str(out)])
    assert isinstance(failed.exception, QualcodeError)
    assert "is empty" in str(failed.exception)
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,coder\nhej,anna\n", encoding="utf-8")
    failed = runner.invoke(
        report_cmd, [str(header_only), "--codebook", str(CODEBOOK), "-o", str(out)]
    )
    assert "missing required column(s) 'theme'" in str(failed.exception)


def test_predictions_saved_for_swedish_excel(codebook, tmp_path):
    path = tmp_path / "predictions.csv"
    frame = _predictions_frame()
    numbers = ["confidence", "margin", *[c for c in frame.columns if c.startswith("p_")]]
    frame[numbers] = frame[numbers].astype(float)
    write_table(frame, path, excel=True)  # ';' and decimal comma
    assert ";0,91;" in path.read_text(encoding="utf-8-sig")
    table = read_table(path, required=("text", "theme"))
    quotes = exemplar_quotes(table, codebook, n=1)
    top = quotes.set_index("theme").loc["coordination_roles"]
    assert top["confidence"] == pytest.approx(0.91)
    assert theme_counts(table, codebook).set_index("theme").loc["total", "flagged"] == 4


def test_theme_sheets_sort_excel_saved_probabilities(codebook, tmp_path):
    """Decimal commas from Swedish Excel sort as numbers in the workbook's theme sheets too."""
    from qualcode.reporting.export import write_workbook

    path = tmp_path / "predictions.csv"
    frame = _predictions_frame()
    numbers = ["confidence", "margin", *[c for c in frame.columns if c.startswith("p_")]]
    frame[numbers] = frame[numbers].astype(float)
    write_table(frame, path, excel=True)
    table = read_table(path, required=("text", "theme"))
    write_workbook(table, codebook, tmp_path / "kodat.xlsx")
    book = openpyxl.load_workbook(tmp_path / "kodat.xlsx", read_only=True)
    rows = list(book["Koordineringsroller"].values)
    texts = [r[rows[0].index("text")] for r in rows[1:]]
    assert texts[:2] == [
        "Samordnaren slutade och ingen tog över.",  # 0.97
        "Vi behöver en lokal koordinator i varje kluster.",  # 0.91
    ]


def test_a_share_is_of_the_segments_and_rounded_once(codebook):
    from qualcode.reporting.coded import theme_counts
    from qualcode.reporting.report import _percent

    table = pd.DataFrame(
        {
            "text": [f"svar {i}" for i in range(65)],
            "theme": ["steering;follow_up" if i < 9 else "other" for i in range(65)],
        }
    )
    counts = theme_counts(table, codebook, by=None).set_index("theme")
    assert counts.loc["steering", "segments"] == 9
    assert _percent(counts.loc["steering", "share"]) == "13,8 %"  # 9 of 65, not of 74 codings


def test_groups_are_not_coloured_like_themes():
    from qualcode.reporting.export import PALETTE
    from qualcode.reporting.report import GROUP_PALETTE

    assert not set(GROUP_PALETTE) & set(PALETTE)
