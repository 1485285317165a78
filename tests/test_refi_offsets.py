"""Offsets in exported REFI-QDA projects are exact however the text came: page breaks from
pdftotext, labels without line numbers (from the labeller, an import or a review), and sources
written so that every client reads them the same way (UTF-8 without BOM, \\n line ends)."""

from __future__ import annotations

import re
import zipfile

import pandas as pd

from qualcode.codebook import load_codebook
from qualcode.reporting.export import write_qdpx
from qualcode.segmentation import segment

from .conftest import ROOT

CODEBOOK = ROOT / "corpora" / "codebook.yaml"
NOTES = (
    "GRUPP 2: STYRNING\n"
    "- Ledningen måste prioritera samverkan\n"
    "- Tydligare mandat\n"
    "\x0cGrupp 3: Digitala lösningar\n"
    "- Videomöten varje vecka\n"
    "- Gemensam journal med\x0bläsbehörighet\n"
    "\n"
    "Sista stycket om samordnare i varje kommun.\n"
)


def selections(path) -> list[tuple[str, str]]:
    """(selected text, segment name) for every selection of an exported project."""
    with zipfile.ZipFile(path) as archive:
        xml = archive.read("project.qde").decode("utf-8")
        out = []
        for source in re.finditer(r"<TextSource .*?</TextSource>", xml, flags=re.S):
            guid = re.search(r'plainTextPath="internal://([^"]+)"', source.group(0)).group(1)
            data = archive.read(f"sources/{guid}")
            assert not data.startswith(b"\xef\xbb\xbf") and b"\r" not in data
            text = data.decode("utf-8")
            for s in re.finditer(r'startPosition="(\d+)" endPosition="(\d+)"', source.group(0)):
                out.append(text[int(s.group(1)) : int(s.group(2))])
    return out


def test_a_page_break_starts_a_new_section(tmp_path):
    path = tmp_path / "anteckningar.txt"
    path.write_text(NOTES, encoding="utf-8")
    frame = segment([path])
    video = frame[frame["text"] == "Videomöten varje vecka"].iloc[0]
    assert "Grupp 3: Digitala lösningar" in video["section"]
    assert frame[frame["text"].str.startswith("Tydligare")].iloc[0]["text"] == "Tydligare mandat"


def test_offsets_are_exact_with_page_breaks_and_without_line_numbers(tmp_path):
    path = tmp_path / "anteckningar.txt"
    path.write_text(NOTES, encoding="utf-8")
    frame = segment([path])
    frame["theme"] = "steering"
    codebook = load_codebook(CODEBOOK)
    with_lines = write_qdpx(frame, codebook, tmp_path / "a.qdpx", sources=[path])
    assert not with_lines.messages
    # labels as the labeller, an import or a review write them: no line numbers
    labels = frame[["segment_id", "document", "section", "text", "theme"]].assign(coder="anna")
    without = write_qdpx(labels, codebook, tmp_path / "b.qdpx", sources=[path])
    assert not any("changed since" in m for m in without.messages), without.messages
    for project in (tmp_path / "a.qdpx", tmp_path / "b.qdpx"):
        got = [" ".join(s.split()) for s in selections(project)]
        assert sorted(got) == sorted(" ".join(t.split()) for t in frame["text"]), got


def test_every_selection_is_its_segment_in_a_report_of_the_seed_documents(tmp_path):
    seeds = sorted((ROOT / "corpora" / "seeds").glob("*.txt"))[:2]
    frame = segment(seeds)
    frame["theme"] = "other"
    write_qdpx(pd.DataFrame(frame), load_codebook(CODEBOOK), tmp_path / "s.qdpx", sources=seeds)
    texts = selections(tmp_path / "s.qdpx")
    words = [re.sub(r"\W+", "", t) for t in texts]
    assert words == [re.sub(r"\W+", "", t) for t in frame["text"]]
