"""The HTML report, the Excel workbook, the REFI-QDA export against the source documents, and
pseudonymisation — on the seed documents and a small predictions file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest
from click.testing import CliRunner

from qualcode.cli import cli
from qualcode.codebook import load_codebook
from qualcode.errors import QualcodeError
from qualcode.files.pseudonymise import Pseudonymiser, luhn_valid, read_names
from qualcode.files.tables import read_table, write_table
from qualcode.reporting.export import write_qdpx, write_workbook
from qualcode.reporting.report import report
from qualcode.segmentation import DocumentText, segment
from tests.test_report import GUID, Q, _predictions_frame, _qde

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK = ROOT / "corpora" / "codebook.yaml"
SEEDS = ROOT / "corpora" / "seeds"
SEED_SET = ROOT / "corpora" / "labels" / "seed_set.csv"
NAMES = ["Dag Norén", "Lisbeth Löpare Johansson", "Carina Lindkvist"]
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


@pytest.fixture(scope="module")
def codebook():
    return load_codebook(CODEBOOK)


@pytest.fixture(scope="module")
def seed_predictions(codebook) -> pd.DataFrame:
    """Every segment of the five seed documents, with the hand label where there is one."""
    segments = segment(sorted(SEEDS.glob("*.txt")))
    labels = read_table(SEED_SET).set_index("segment_id")["theme"].str.split(";").str[0]
    frame = segments.astype(str).copy()
    ids = codebook.ids
    frame["theme"] = [
        labels.get(s, ids[i % len(ids)]) for i, s in enumerate(segments["segment_id"])
    ]
    confidence = [0.45 + (i * 37 % 55) / 100 for i in range(len(frame))]
    frame["confidence"] = [f"{c:.2f}" for c in confidence]
    frame["needs_review"] = ["true" if c < 0.6 else "false" for c in confidence]
    frame["review_reason"] = [
        f"low confidence ({c:.2f} < 0.60)" if c < 0.6 else "" for c in confidence
    ]
    for theme in codebook.ids:
        frame[f"p_{theme}"] = [
            f"{c:.2f}" if t == theme else f"{(1 - c) / 7:.3f}"
            for c, t in zip(confidence, frame["theme"])
        ]
    return frame


@pytest.fixture(scope="module")
def seed_html(seed_predictions, codebook, tmp_path_factory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("html") / "rapport.html"
    result = report(
        seed_predictions, codebook, path, by="document", exemplars=4, source_name="pred.csv"
    )
    return path, result


# --------------------------------------------------------------------------- HTML report


class _Page(HTMLParser):
    """Collects what the tests check: tagged rows and articles, quotes, resources."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, dict[str, str]] = {}
        self.articles: dict[str, dict[str, str]] = {}
        self.quotes: dict[str, list[str]] = {}
        self.flagged_rows: list[str] = []
        self.resources: list[str] = []
        self.tags: list[str] = []
        self._table = ""
        self._article = ""
        self._in_quote = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in a:
                self.resources.append(a[key])
        if tag == "table":
            self._table = a.get("class", "")
        elif tag == "tr" and self._table == "counts" and "data-theme" in a:
            self.counts[a["data-theme"]] = a
        elif tag == "tr" and self._table == "flagged" and "data-segment" in a:
            self.flagged_rows.append(a["data-segment"])
        elif tag == "article":
            self._article = a["data-theme"]
            self.articles[self._article] = a
            self.quotes[self._article] = []
        elif tag == "blockquote":
            self._in_quote = True
            self.quotes[self._article].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = ""
        elif tag == "blockquote":
            self._in_quote = False

    def handle_data(self, data):
        if self._in_quote:
            self.quotes[self._article][-1] += data


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_html_numbers_match_the_predictions(seed_html, seed_predictions, codebook):
    path, result = seed_html
    page = _page(path)
    flagged = seed_predictions["needs_review"] == "true"
    assert set(page.counts) == {*codebook.ids, "total"}
    for theme in codebook.ids:
        mine = seed_predictions["theme"] == theme
        row, article = page.counts[theme], page.articles[theme]
        assert int(row["data-segments"]) == int(article["data-segments"]) == int(mine.sum())
        assert (
            int(row["data-flagged"]) == int(article["data-flagged"]) == int((mine & flagged).sum())
        )
        assert float(row["data-share"]) == pytest.approx(mine.mean(), abs=1e-4)
        # quotes: unflagged segments of the theme, most confident first, 3-5 of them
        quotes = page.quotes[theme]
        pool = seed_predictions[mine & ~flagged]
        assert len(quotes) == min(4, len(pool))
        assert set(quotes) <= set(pool["text"])
        if len(quotes):
            best = pool.loc[pd.to_numeric(pool[f"p_{theme}"]).idxmax(), "text"]
            assert quotes[0] == best
    assert int(page.counts["total"]["data-segments"]) == len(seed_predictions)
    assert int(page.counts["total"]["data-flagged"]) == int(flagged.sum())
    assert page.flagged_rows == seed_predictions["segment_id"][flagged].tolist()
    assert result.segments == len(seed_predictions) and result.flagged == int(flagged.sum())


def test_html_is_self_contained(seed_html):
    path, _ = seed_html
    page = _page(path)
    text = path.read_text(encoding="utf-8")
    images = [r for r in page.resources if r.startswith("data:image/png;base64,")]
    assert len(images) == 2  # themes overall and per document
    assert all(r.startswith(("data:", "#")) for r in page.resources), page.resources
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"url\(|@import|https?://", text)
    assert "Koordineringsroller" in text and "Gemensamma utbildningar" in text


def test_quotes_skip_near_duplicates(codebook, tmp_path):
    frame = _predictions_frame()
    first = frame.iloc[0].copy()
    copy = first.copy()
    copy["segment_id"], copy["line_start"] = "dup-1", "30"
    copy["text"] = "Vi behöver en lokal koordinator i varje kluster!"
    copy["p_coordination_roles"] = "0.90"
    frame = pd.concat([frame, copy.to_frame().T], ignore_index=True)
    path = tmp_path / "r.html"
    report(frame, codebook, path, exemplars=5)
    quotes = _page(path).quotes["coordination_roles"]
    assert quotes[0] == first["text"]
    assert copy["text"] not in quotes  # same words as the first quote
    assert len(quotes) == 3  # the two other unflagged segments of the theme


def _chromium() -> str | None:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("QUALCODE_REQUIRE_CHROMIUM"):
        pytest.fail("QUALCODE_REQUIRE_CHROMIUM is set but chromium is not installed")
    return found


def _chromium_flags(tmp_path: Path, width: int, height: int) -> list[str]:
    """Headless, offline, a profile of its own, a window of this size."""
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={width},{height}",
    ]


@pytest.mark.slow
def test_html_renders_in_headless_chromium(seed_html, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (CI installs it: .ci/run)")
    path, _ = seed_html
    shot = tmp_path / "shot.png"
    flags = _chromium_flags(tmp_path, 1000, 1400)
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", path.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1400, 1000)
    ink = (pixels[..., :3].mean(axis=2) < 0.5).mean()
    assert 0.005 < ink < 0.5  # text and the chart are drawn, not a blank or black page
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", path.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    total = re.search(r'<span id="total-segments">(\d+)</span>', dom)
    assert total and int(total.group(1)) > 0


def test_html_single_file_cli_and_errors(tmp_path):
    predictions = tmp_path / "predictions.csv"
    write_table(_predictions_frame(), predictions)
    runner = CliRunner()
    out = tmp_path / "report.html"
    args = ["report", str(predictions), "--codebook", str(CODEBOOK), "-o", str(out), "-q"]
    result = runner.invoke(cli, [*args, "--by", "section"])
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {"predictions.csv", "report.html"}
    page = _page(out)
    assert len([r for r in page.resources if r.startswith("data:image/png")]) == 2
    (tmp_path / "folder.html").mkdir()
    failed = runner.invoke(cli, [*args[:-3], "-o", str(tmp_path / "folder.html")])
    assert isinstance(failed.exception, QualcodeError) and "is a directory" in str(failed.exception)


# --------------------------------------------------------------------------- workbook


def test_workbook_layout(seed_predictions, codebook, tmp_path):
    path = tmp_path / "kodat.xlsx"
    result = write_workbook(seed_predictions, codebook, path)
    assert result.segments == len(seed_predictions)
    book = openpyxl.load_workbook(path)
    names = book.sheetnames
    assert names[:2] == ["Sammanfattning", "Alla segment"]
    assert len(names) == 2 + len(codebook.themes) and len(set(names)) == len(names)
    assert all(len(n) <= 31 and not set(n) & set("[]:*?/\\") for n in names)
    for sheet in book.worksheets:
        assert sheet.freeze_panes == "A2"
        assert sheet.auto_filter.ref and sheet.auto_filter.ref.startswith("A1:")
        widths = [d.width for d in sheet.column_dimensions.values()]
        assert widths and all(8 <= w <= 80 for w in widths)
    summary = pd.DataFrame(
        list(book["Sammanfattning"].values)[1:], columns=next(book["Sammanfattning"].values)
    )
    counts = seed_predictions["theme"].value_counts()
    for _, row in summary.iterrows():
        if isinstance(row["id"], str):
            assert row["Segment"] == counts.get(row["id"], 0)
    assert summary["Tema"].tolist()[:2] == ["Koordineringsroller", codebook.themes[1].label]
    for theme, name in zip(codebook.themes, names[2:]):  # one sheet per theme, in order
        assert name.rstrip("…") == theme.label[: len(name.rstrip("…"))]
        sheet = book[name]
        rows = list(sheet.values)
        header, body = rows[0], rows[1:]
        assert len(body) == counts.get(theme.id, 0)
        texts = {r[header.index("text")] for r in body}
        assert texts == set(seed_predictions["text"][seed_predictions["theme"] == theme.id])
        confidence = [float(r[header.index("confidence")]) for r in body]
        assert confidence == sorted(confidence, reverse=True)
    all_text = " ".join(str(c) for row in book["Alla segment"].values for c in row)
    assert "Hälso- och sjukvårdsavtalet" in all_text and "Åsa" in all_text  # å ä ö intact


# --------------------------------------------------------------------------- REFI-QDA

# Element order and required attributes from the REFI-QDA Project.xsd (urn:QDA-XML:project:1.0).
ORDER = {
    "Project": [
        "Users",
        "CodeBook",
        "Variables",
        "Cases",
        "Sources",
        "Notes",
        "Links",
        "Sets",
        "Graphs",
        "Description",
        "NoteRef",
    ],
    "Users": ["User"],
    "CodeBook": ["Codes"],
    "Codes": ["Code"],
    "Code": ["Description", "NoteRef", "Code"],
    "Sources": ["TextSource"],
    "TextSource": [
        "Description",
        "PlainTextContent",
        "PlainTextSelection",
        "Coding",
        "NoteRef",
        "VariableValue",
    ],
    "PlainTextSelection": ["Description", "Coding", "NoteRef"],
    "Coding": ["CodeRef", "NoteRef"],
    "User": [],
    "CodeRef": [],
    "Description": [],
}
REQUIRED = {
    "Project": ["name"],
    "User": ["guid"],
    "Code": ["guid", "name", "isCodable"],
    "TextSource": ["guid"],
    "PlainTextSelection": ["guid", "startPosition", "endPosition"],
    "Coding": ["guid"],
    "CodeRef": ["targetGUID"],
}
GUID_ATTRIBUTES = ("guid", "targetGUID", "creatingUser", "creatingUserGUID")


def check_schema(root) -> None:
    for element in root.iter():
        tag = element.tag.removeprefix(Q)
        assert tag in ORDER, f"unexpected element {tag}"
        positions = [ORDER[tag].index(child.tag.removeprefix(Q)) for child in element]
        assert positions == sorted(positions), f"children of {tag} out of order"
        for name in REQUIRED.get(tag, []):
            assert element.get(name), f"{tag} lacks {name}"
        for name in GUID_ATTRIBUTES:
            if element.get(name) is not None:
                assert GUID.match(element.get(name))
        if tag == "TextSource":
            assert (element.get("plainTextPath") is None) != (
                element.find(f"{Q}PlainTextContent") is None
            )


def _selections(root, texts):
    for source in root.iter(f"{Q}TextSource"):
        text = texts[f"sources/{source.get('guid')}.txt"]
        for selection in source.findall(f"{Q}PlainTextSelection"):
            start, end = int(selection.get("startPosition")), int(selection.get("endPosition"))
            yield source.get("name"), selection, text, start, end


def _letters(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def test_qdpx_selects_segments_in_the_source_documents(seed_predictions, codebook, tmp_path):
    path = tmp_path / "projekt.qdpx"
    result = write_qdpx(seed_predictions, codebook, path, sources=[SEEDS])
    assert result.messages == []
    root, texts = _qde(path)
    check_schema(root)
    documents = {p.name: DocumentText.read(p).text for p in SEEDS.glob("*.txt")}
    sources = root.findall(f"{Q}Sources/{Q}TextSource")
    assert {s.get("name") for s in sources} == set(documents)
    for source in sources:  # the document's own text, not a reconstruction
        assert texts[f"sources/{source.get('guid')}.txt"] == documents[source.get("name")]
    by_id = seed_predictions.set_index("segment_id")
    label = {t.id: t.label for t in codebook.themes}
    code_name = {c.get("guid"): c.get("name") for c in root.iter(f"{Q}Code")}
    exact = 0
    n = 0
    for _, selection, text, start, end in _selections(root, texts):
        row = by_id.loc[selection.get("name")]
        piece = text[start:end]
        exact += piece == row["text"]
        assert _letters(piece) == _letters(row["text"])  # the same words, where they stand
        coded = [code_name[r.get("targetGUID")] for r in selection.iter(f"{Q}CodeRef")]
        assert coded == [label[row["theme"]]]
        assert f"{float(row['confidence']):.2f}" in selection.findtext(f"{Q}Description")
        n += 1
    assert n == len(seed_predictions)
    assert exact / n > 0.9  # the rest were joined lines or sub-bullets in the source
    # --accepted-only leaves out the flagged segments
    accepted = write_qdpx(
        seed_predictions, codebook, tmp_path / "a.qdpx", sources=[SEEDS], accepted_only=True
    )
    flagged = int((seed_predictions["needs_review"] == "true").sum())
    assert accepted.left_out == flagged and accepted.segments == n - flagged
    root, texts = _qde(accepted.path)
    assert len(list(_selections(root, texts))) == n - flagged
    assert not any(
        "flaggad" in (s.findtext(f"{Q}Description") or "")
        for s in root.iter(f"{Q}PlainTextSelection")
    )


def test_qdpx_without_sources_lays_segments_out(seed_predictions, codebook, tmp_path):
    result = write_qdpx(seed_predictions.head(20), codebook, tmp_path / "p.qdpx")
    assert "not found" in result.messages[0] and "--sources" in result.messages[0]
    root, texts = _qde(result.path)
    check_schema(root)
    by_id = seed_predictions.set_index("segment_id")
    for _, selection, text, start, end in _selections(root, texts):
        assert text[start:end] == by_id.loc[selection.get("name"), "text"]
    changed = tmp_path / "seeds"
    changed.mkdir()
    (changed / "000_eec67be2146255fe.txt").write_text("Helt annan text.\n", encoding="utf-8")
    result = write_qdpx(seed_predictions.head(20), codebook, tmp_path / "q.qdpx", sources=[changed])
    assert "do not hold their segments" in result.messages[0]
    with pytest.raises(QualcodeError, match="--sources 'nowhere' not found"):
        write_qdpx(seed_predictions, codebook, tmp_path / "x.qdpx", sources=["nowhere"])
    assert not (tmp_path / "x.qdpx").exists()
    labels = read_table(SEED_SET)
    with pytest.raises(QualcodeError, match="--accepted-only needs a predictions file"):
        write_qdpx(labels, codebook, tmp_path / "x.qdpx", accepted_only=True)


# --------------------------------------------------------------------------- pseudonymisation


def test_personnummer_luhn_and_formats():
    assert luhn_valid("8112189876") and not luhn_valid("8112189875")
    p = Pseudonymiser()
    text = (
        "A 811218-9876, B 19811218-9876, C 8112189876, D 811278-9874 (samordning? no), "
        "E 811218-9875, F 20201301-1234, G 701063-2391, H 2019-10-21, I 123456, "
        "J Personnummer 19450312-1234, K 450312+1234, L 8112189875, M 0701234567"
    )
    out = p.replace(text)
    assert out.count("[PERSONNUMMER 1]") == 3  # one person in three formats
    # Shaped like a personnummer (century or - / +): replaced even with a wrong check digit.
    for typo in ("811218-9875", "20201301-1234", "19450312-1234", "450312+1234"):
        assert typo not in out
    assert "701063-2391" not in out  # a samordningsnummer (day 63)
    # A bare ten-digit number is also a phone number's shape: only a valid one is replaced.
    assert "8112189875" in out and "M [TELEFON 1]" in out
    assert "2019-10-21" in out and "123456" in out
    assert p.counts["personnummer"] == 6  # different people: A, B and C are one, J and K one
    assert p.summary_sv().startswith("Ersatt med platshållare: 6 personnummer")


def test_email_phone_and_names():
    p = Pseudonymiser(["Dag Norén", "Lisbeth Löpare Johansson"])
    text = (
        "Dag Norén (dag.noren@videre.se, 070-123 45 67) och lisbeth  löpare johansson "
        "(+46 8 123 456 78). Dag Noréns rapport; ring 08-123 456 78 eller 040-12 34 56. "
        "Mötet 21 oktober 2019 kl 08.30, 15 klustersamordnare, år 2020-2021, Dagny Norénsson."
    )
    out = p.replace(text)
    assert out.startswith("[NAMN 1] ([E-POST 1], [TELEFON 1]) och [NAMN 2] ([TELEFON 2])")
    assert "[NAMN 1]s rapport" in out and "ring [TELEFON 2] eller [TELEFON 3]" in out
    assert "21 oktober 2019 kl 08.30, 15 klustersamordnare, år 2020-2021, Dagny Norénsson" in out
    assert dict(p.counts) == {"name": 2, "email": 1, "phone": 3}  # different ones, not hits
    assert p.summary() == (
        "pseudonymised: 0 personal identity numbers, 1 e-mail address, 3 phone numbers, "
        "2 names replaced"
    )


def test_offsets_follow_the_replacements():
    p = Pseudonymiser(["Dag Norén"])
    text = "Hej Dag Norén, skriv till a.b@c.se om mötet."
    new, offsets = p.replace_with_offsets(text)
    for piece in ("Hej", "skriv till", "om mötet.", "Dag Norén, skriv"):
        start = text.index(piece)
        mapped = new[offsets.start(start) : offsets.end(start + len(piece))]
        assert mapped == p.replace(piece)


def test_names_file(tmp_path):
    path = tmp_path / "namn.txt"
    path.write_text(
        "# kontaktpersoner\nDag Norén\n\n  Carina   Lindkvist  # moderator\n", encoding="utf-8"
    )
    assert read_names(path) == ["Dag Norén", "Carina Lindkvist"]
    path.write_text("# bara kommentarer\n", encoding="utf-8")
    with pytest.raises(QualcodeError, match="lists no names"):
        read_names(path)


@pytest.mark.slow
def test_pseudonymised_report_and_exports_leak_nothing(seed_predictions, codebook, tmp_path):
    names = tmp_path / "namn.txt"
    names.write_text("\n".join(NAMES) + "\n", encoding="utf-8")
    predictions = tmp_path / "pred.csv"
    write_table(seed_predictions, predictions)
    emails = sorted({e for t in seed_predictions["text"] for e in EMAIL.findall(t)})
    assert emails  # the seeds name contact persons with their e-mail addresses
    runner = CliRunner()
    base = [str(predictions), "--codebook", str(CODEBOOK), "--names", str(names)]
    outputs = {
        "html": (["report", *base, "-o", str(tmp_path / "r.html"), "-q", "--include-flagged"]),
        "dir": (["report", *base, "-o", str(tmp_path / "dir"), "-q", "--sources", str(SEEDS)]),
        "xlsx": (["export", "xlsx", *base, "-o", str(tmp_path / "c.xlsx")]),
        "qdpx": (
            ["export", "qdpx", *base, "-o", str(tmp_path / "p.qdpx"), "--sources", str(SEEDS)]
        ),
    }
    messages = {}
    for key, args in outputs.items():
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        messages[key] = result.stderr
    different = len({e.casefold() for e in emails})
    assert f"{different} e-mail address" in messages["html"]
    assert f"{different} e-mail address" in messages["qdpx"]  # segments and sources: once
    assert "pseudonymised:" in messages["xlsx"] and "pseudonymised:" in messages["qdpx"]

    def everything(path: Path) -> str:
        if path.is_dir():
            return " ".join(everything(p) for p in sorted(path.iterdir()))
        if path.suffix == ".xlsx":  # cell text, however openpyxl escapes it in the XML
            book = openpyxl.load_workbook(path, read_only=True)
            return " ".join(str(c) for sheet in book for row in sheet.values for c in row)
        if path.suffix == ".qdpx":
            with zipfile.ZipFile(path) as archive:
                return " ".join(
                    archive.read(n).decode("utf-8", "replace") for n in archive.namelist()
                )
        if path.suffix == ".png":
            return ""
        return path.read_text(encoding="utf-8")

    for path in (tmp_path / "r.html", tmp_path / "dir", tmp_path / "c.xlsx", tmp_path / "p.qdpx"):
        text = everything(path)
        for secret in [*emails, *NAMES, "Norén"]:
            assert secret not in text, (path.name, secret)
        if path.suffix != ".html":  # the HTML shows only quotes and flagged segments
            assert "[E-POST 1]" in text and "[NAMN 1]" in text
    # the same person has the same placeholder in the report and in the exports
    pseudo = Pseudonymiser(NAMES)
    first = next(pseudo.replace(t) for t in seed_predictions["text"] if EMAIL.search(t))
    workbook = everything(tmp_path / "c.xlsx")
    assert first in workbook

    # exact offsets survive pseudonymisation
    root, texts = _qde(tmp_path / "p.qdpx")
    check_schema(root)
    pseudo = Pseudonymiser(NAMES)
    coded = [pseudo.replace(t) for t in seed_predictions["text"]]
    by_id = dict(zip(seed_predictions["segment_id"], coded))
    exact = [text[a:b] == by_id[s.get("name")] for _, s, text, a, b in _selections(root, texts)]
    assert np.mean(exact) > 0.9


def test_qdpx_finds_documents_beside_the_predictions(seed_predictions, tmp_path):
    folder = tmp_path / "projekt"
    folder.mkdir()
    skane = "001_7f727ce3aee8fb1a.txt"
    shutil.copy(SEEDS / skane, folder / skane)
    mine = seed_predictions[seed_predictions["document"] == skane]
    write_table(mine, folder / "predictions.csv")
    out = tmp_path / "p.qdpx"
    args = ["export", "qdpx", str(folder / "predictions.csv"), "--codebook", str(CODEBOOK)]
    result = CliRunner().invoke(cli, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "not found" not in result.stderr
    root, texts = _qde(out)
    assert list(texts.values()) == [DocumentText.read(SEEDS / skane).text]


_MEASURE = """<script>
addEventListener("load", () => {
  const page = document.querySelector("main").getBoundingClientRect();
  const wide = [...document.querySelectorAll("table, img, h1, h2, h3, p, dl")]
    .filter((e) => e.getBoundingClientRect().right > page.right + 1
                   || e.scrollWidth > e.clientWidth + 1)
    .map((e) => e.tagName + "." + e.className + ":" + Math.round(e.scrollWidth));
  document.body.dataset.wide = JSON.stringify(wide);
  document.body.dataset.page = String(document.documentElement.scrollWidth);
});
</script>"""


@pytest.mark.slow
@pytest.mark.parametrize("width, media", [(1280, "screen"), (720, "print")])
def test_no_table_is_wider_than_the_page(seed_predictions, codebook, tmp_path, width, media):
    """Nine discussion groups with long names, on a 1280 px screen and on A4 paper (the print
    style applied at the printable width): every table, chart and heading fits the page."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium not installed (CI installs it: .ci/run)")
    frame = seed_predictions.copy()
    groups = [f"DISKUSSIONSGRUPP {side} {n} › Samverkan kring de mest sjuka äldre"
              for side in ("NORDOST", "SYDVÄST", "SYDOST") for n in (1, 2, 3)]  # fmt: skip
    frame["section"] = [groups[i % len(groups)] for i in range(len(frame))]
    page = tmp_path / "rapport.html"
    report(frame, codebook, page, by="section")
    html = page.read_text(encoding="utf-8")
    assert html.count('<table class="by-group">') == 3  # nine groups: tables of at most four
    if media == "print":
        html = html.replace("@media print", "@media all")
    measured = tmp_path / "measured.html"
    measured.write_text(html.replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    flags = _chromium_flags(tmp_path, width, 1000)
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", measured.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    wide = re.search(r'data-wide="([^"]*)"', dom)
    assert wide, dom[-500:]
    assert wide.group(1).replace("&quot;", '"') == "[]", wide.group(1)
    assert int(re.search(r'data-page="(\d+)"', dom).group(1)) <= width
