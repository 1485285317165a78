"""Step 1: split documents and survey exports into segments (the units that get coded).

Notes, reports and web text (.txt/.md/.docx) are read as a sequence of blocks:

* a bullet (``-`` ``*`` ``•`` ``–`` ``1)`` ``1.`` ``a)`` …) with its continuation lines is one
  segment; indented sub-bullets join their parent (``"parent: child; child"``);
* a prose paragraph (blank-line separated) is one segment, or one per sentence with
  ``unit="sentence"``; a lone bullet with no siblings counts as prose (Swedish reportage uses
  ``– `` for quoted speech);
* headings are not segments but become the ``section`` of what follows: ALL-CAPS lines,
  markdown ``#`` lines and Word heading styles, and short label lines (no final full stop, or
  ending with ``:``, or short questions like ``Vilka?``) that stand before a list or a
  substantial paragraph. Nested headings are joined with ``" › "``;
* numbering and emphasis markers are removed, whitespace is normalised and fragments
  without letters (``?``, ``---``, ``1)``) are dropped.

Survey exports (.csv/.tsv/.xlsx) need ``column``: each non-empty answer is a segment, the
other columns are kept as metadata, ``section`` is the column name and ``line_start`` =
``line_end`` = the spreadsheet row. Answers with nothing to code (``vet ej``, ``nej``, ``-``,
only punctuation) are kept but marked in the ``non_answer`` column; ``attrs`` of the result
count them (``non_answers``) and the empty answers left out (``empty_answers``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from qualcode.errors import QualcodeError
from qualcode.files.coded import NON_ANSWER, non_answers
from qualcode.files.tables import (
    check_file,
    check_text_lengths,
    check_zip_container,
    read_text,
    spreadsheet_rows,
)

if TYPE_CHECKING:
    from docx.text.paragraph import Paragraph

__all__ = [
    "SEGMENT_COLUMNS",
    "UNITS",
    "DocumentText",
    "segment",
    "segment_text",
    "split_sentences",
]

SEGMENT_COLUMNS = ["segment_id", "document", "section", "line_start", "line_end", "text"]
UNITS = ("paragraph", "sentence")
TEXT_SUFFIXES = (".txt", ".md", ".markdown")
SURVEY_SUFFIXES = (".csv", ".tsv", ".xlsx", ".parquet")
SUPPORTED_SUFFIXES = (*TEXT_SUFFIXES, ".docx", *SURVEY_SUFFIXES)

SECTION_SEPARATOR = " › "

# Heading levels: markdown/Word levels are 1-6; ALL CAPS lines rank as level 1.
_CAPS, _LABEL, _QUESTION = 1, 7, 8

_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"), None)
_INVISIBLE.update(dict.fromkeys(map(ord, "\u00a0\u2007\u202f\x0b\x0c"), " "))

_BULLET = re.compile(
    r"^(?P<indent>[ \t]*)"
    r"(?:[-*•–—·▪◦‣●○■□►➢\uf0a7\uf0b7]|\d{1,3}[.)]|[a-zA-Z]\)|[a-z]\.)"
    r"(?:[ \t]+|$)(?P<text>.*)$"
)
_NUMBERING = re.compile(r"^(?:\d{1,3}[.)]|[a-zA-Z]\))(?:\s+|$)")
_MARKDOWN_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SETEXT = re.compile(r"^\s*(=+|-+)\s*$")
_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\s]+\)")
_STRONG = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_EMPHASIS = re.compile(r"(?<![\w*])([*_])(?=[^\s*_])(.+?)(?<=[^\s*_])\1(?![\w*])")
_CLOSERS = "\"'”’»)]*_ "
_QUOTES = '"“”«»„'
_TERMINAL = ".!?…"
_NOT_ALNUM = "".join(map(chr, range(0x20, 0x30))) + ":;<=>?@[\\]^_`{|}~«»“”„’–—…"

_ABBREVIATIONS = frozenset(
    """t.ex. bl.a. s.k. d.v.s. dvs. ca. c:a. nr. p.g.a. pga. fr.o.m. t.o.m. resp. jfr. kap. ff.
    prof. dr. doc. leg. tel. tfn. kl. ev. ex. ex.vis. inkl. exkl. enl. f.d. t.v. milj. mdr. tf.
    ang. avd. bl. dir. fig. tab. sid. vol. uppl. red. övers. mr. mrs. ms. jr. sr. e.g. i.e. vs.
    ibid. el. sk. iofs. i.o.f.s. ffa. f.ö. s.a.s. m.a.o. p.s. obs. a.a. jan. febr. feb. apr.
    jun. jul. aug. sept. sep. okt. nov. dec. spec. gm. adr. anm. forts. jur. uppdr. ordf. sekr.
    ung. unt. v.""".split()
)
# Abbreviations that usually end a list, so often also the sentence: split before a capital.
_FINAL_ABBREVIATIONS = frozenset("m.m. mm. etc. osv. o.s.v. m.fl. mfl. o.d. o.dyl.".split())
_BOUNDARY = re.compile(
    r"[.!?…]+[\"'”’»)\]]*(?P<space>\s+)(?=[\"“”«(\[–—-]?\s*[A-ZÅÄÖÆØÜÉ0-9])"
    r"|(?<=[a-zåäö]{2}[.!?])(?P<glued>)(?=[A-ZÅÄÖ][a-zåäö])"
)


# --------------------------------------------------------------------------- text helpers


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


# Survey answers that say nothing to code: compared lower-cased, without punctuation.
NON_ANSWERS = frozenset(
    """vet ej|vet inte|vet icke|ingen aning|ingen åsikt|inga synpunkter|inget att tillägga|
    inget|inga|ingenting|nej|ja|nja|bra|ok|okej|oklart|x|xx|xxx|nope|n a|na|ej aktuellt|
    ej tillämpligt|har ingen åsikt|kan ej svara|kan inte svara|se ovan|samma som ovan""".replace(
        "\n", ""
    )
    .replace("    ", "")
    .split("|")
)


def is_non_answer(text: str) -> bool:
    """Whether a survey answer says nothing to code: no letters, or a stock reply such as
    "Vet ej", "Nej." or "Inget"."""
    if not _has_letters(text):
        return True
    words = re.sub(r"[^\w\s]|_", " ", text.lower()).split()
    return " ".join(words) in NON_ANSWERS


def _normalise(text: str) -> str:
    """Remove soft hyphens and invisible characters and collapse whitespace."""
    return " ".join(text.translate(_INVISIBLE).split())


def _strip_markup(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    text = _STRONG.sub(r"\2", text)
    text = text.replace("**", "").replace("__", "")
    return _EMPHASIS.sub(r"\2", text)


def _clean(text: str) -> str:
    return _normalise(_strip_markup(text.translate(_INVISIBLE)))


def _last_char(text: str) -> str:
    stripped = text.rstrip(_CLOSERS)
    return stripped[-1] if stripped else ""


def _word_count(text: str) -> int:
    """Words with at least one letter or digit (a lone "–" is not a word)."""
    return sum(1 for word in text.split() if any(ch.isalnum() for ch in word))


def _abbreviation_before(text: str, end: int, next_char: str) -> bool:
    """True if the '.'-terminated token ending at ``end`` is an abbreviation or an initial."""
    start = max(text.rfind(" ", 0, end), text.rfind("(", 0, end)) + 1
    token = text[start:end].lstrip(_QUOTES + "'(–—").lower()
    if not token.endswith("."):
        return False
    if token in _FINAL_ABBREVIATIONS:
        return not next_char.isalpha()
    bare = token.rstrip(".")
    return token in _ABBREVIATIONS or (len(bare) == 1 and bare.isalpha())


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences in ``text`` (a Swedish-aware regex splitter).

    A sentence ends at ``. ! ? …`` (plus closing quotes) followed by whitespace and an
    upper-case letter, digit, quote or dash. It does not end after abbreviations (``t.ex.``,
    ``bl.a.``, ``s.k.``, ``m.m.``, ``d.v.s.``, ``ca.``, ``nr.`` …), after initials (``K.``),
    inside decimal numbers, or inside balanced quotation marks. ``sätt.För`` (missing space)
    is split.
    """
    balanced = sum(text.count(q) for q in _QUOTES) % 2 == 0
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        cut = match.start("space") if match.group("space") is not None else match.start()
        punct_end = cut
        while punct_end > 0 and text[punct_end - 1] in "\"'”’»)]":
            punct_end -= 1
        next_char = text[match.end() : match.end() + 1]
        if text[punct_end - 1] == "." and _abbreviation_before(text, punct_end, next_char):
            continue
        if balanced and sum(text.count(q, start, cut) for q in _QUOTES) % 2:
            continue  # inside a quotation: keep the quote whole
        spans.append((start, cut))
        start = match.end()
    spans.append((start, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()]


# --------------------------------------------------------------------------- line model


@dataclass
class _Line:
    no: int
    text: str
    heading: int | None = None  # explicit heading level (Word styles)
    list_level: int | None = None  # explicit list level (Word numbering)
    separate: bool = False  # Word paragraph: never joined with its neighbours
    in_table: bool = False  # Word table cell: never a heading


@dataclass
class _Item:
    indent: int
    lines: list[tuple[int, str]]
    children: list[_Item] = field(default_factory=list)

    def line_numbers(self) -> list[int]:
        return [n for n, _ in self.lines] + [n for c in self.children for n in c.line_numbers()]


@dataclass
class _Block:
    kind: str  # "heading" | "list" | "para"
    lines: list[tuple[int, str]] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)
    level: int | None = None  # heading level
    always_content: bool = False  # a lone bullet, or a table cell: content, never a heading

    @property
    def text(self) -> str:
        return _clean(" ".join(t for _, t in self.lines))


def _caps_heading(text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    return (
        len(letters) >= 4
        and not any(ch.islower() for ch in letters)
        and _word_count(text) <= 12
        and len(text) <= 100
        and _last_char(text) not in ".;,"
    )


def _label_level(text: str) -> tuple[int | None, bool]:
    """Candidate heading level of a short stand-alone line, and whether it is a long 'x:' line."""
    first_letter = next((ch for ch in text if ch.isalpha()), "")
    if not first_letter.isupper() or len(text) > 200:
        return None, False
    words = _word_count(text)
    if text.endswith(":"):
        if words > 20 or len(split_sentences(text)) > 1:
            return None, False  # a lead-in sentence, not a label
        return _LABEL, words > 10
    last = _last_char(text)
    if last == "?":  # "Vilka?", "Hur?" sub-headings nest under the label above them
        return (_QUESTION if words <= 2 else _LABEL if words <= 6 else None), False
    if last in ".!;,…" or words > 9 or len(text) > 90:
        return None, False
    return _LABEL, False


def _substantial(block: _Block) -> bool:
    if block.kind == "list" or block.always_content:
        return True
    text = block.text
    return _word_count(text) >= 8 or _last_char(text) in _TERMINAL


def _indent(prefix: str) -> int:
    return len(prefix.expandtabs(4))


def _blocks(lines: Iterable[_Line]) -> list[_Block]:
    """Group lines into heading, list and paragraph blocks."""
    blocks: list[_Block] = []
    current: _Block | None = None  # the block the next line may extend

    def close() -> None:
        nonlocal current
        current = None

    for line in lines:
        raw = line.text.translate(_INVISIBLE).rstrip()
        stripped = raw.strip()
        if not stripped:
            close()
            continue
        setext = _SETEXT.match(raw)
        if (
            setext
            and len(setext.group(1)) >= 3
            and current is not None
            and current.kind == "para"
            and len(current.lines) == 1
            and not line.separate
        ):
            current.kind, current.level = "heading", 1 if raw.strip()[0] == "=" else 2
            close()
            continue
        if not _has_letters(stripped) and not any(ch.isdigit() for ch in stripped):
            close()  # "?", "---", "***": a separator, never text
            continue
        markdown = _MARKDOWN_HEADING.match(raw)
        if line.heading is not None or markdown:
            level = line.heading if line.heading is not None else len(markdown.group(1))
            text = stripped if line.heading is not None else markdown.group(2)
            blocks.append(_Block("heading", [(line.no, text)], level=level))
            close()
            continue
        bullet = None if line.list_level is not None else _BULLET.match(raw)
        if line.list_level is not None or bullet:
            if bullet:
                indent, text = _indent(bullet.group("indent")), bullet.group("text")
            else:
                indent, text = line.list_level or 0, stripped
            text = _NUMBERING.sub("", text.strip())  # "- 1) Text"
            item = _Item(indent, [(line.no, text)])
            if current is not None and current.kind == "list":
                top = current.items[-1]
                (top.children if indent > top.indent else current.items).append(item)
            else:
                current = _Block("list", items=[item])
                blocks.append(current)
            continue
        if not line.in_table and _caps_heading(_clean(stripped)):
            previous = blocks[-1] if blocks else None
            if (
                previous is not None
                and previous.kind == "heading"
                and previous.level == _CAPS
                and previous.lines[-1][0] == line.no - 1
                and not line.separate
            ):
                previous.lines.append((line.no, stripped))  # a caps title wrapped over lines
            else:
                blocks.append(_Block("heading", [(line.no, stripped)], level=_CAPS))
            close()
            continue
        if current is not None and not line.separate:
            if current.kind == "list":
                top = current.items[-1]
                (top.children[-1] if top.children else top).lines.append((line.no, stripped))
                continue
            if current.kind == "para":
                current.lines.append((line.no, stripped))
                continue
        current = _Block("para", [(line.no, stripped)], always_content=line.in_table)
        blocks.append(current)
    return blocks


def _starts_sentence(text: str) -> bool:
    first = text.lstrip(_QUOTES + "'–—- ")[:1]
    return first.isupper() or first.isdigit()


def _refine(blocks: list[_Block]) -> list[_Block]:
    """Turn lone bullets into prose, split 'Heading\\nParagraph' blocks, decide label headings."""
    out: list[_Block] = []
    for block in blocks:
        if block.kind == "list":
            block.items = [item for item in block.items if _has_letters(_item_text(item))]
            if not block.items:
                continue
            if len(block.items) == 1 and not block.items[0].children:
                block = _Block("para", block.items[0].lines, always_content=True)
        if block.kind == "para" and not block.always_content and len(block.lines) >= 2:
            first, second = _clean(block.lines[0][1]), _clean(block.lines[1][1])
            level, _ = _label_level(first)
            if (
                level is not None
                and _starts_sentence(second)
                and _word_count(second) >= 8
                and len(second) > len(first)
            ):
                out.append(_Block("para", block.lines[:1]))
                block = _Block("para", block.lines[1:])
        if block.kind == "para" and not _has_letters(block.text):
            continue
        out.append(block)

    # Decide label candidates back to front: a label is a heading only if what follows is a
    # list, a substantial paragraph, or a deeper heading; otherwise it is content (notes are
    # full of short fragments without full stops).
    for i in range(len(out) - 1, -1, -1):
        block = out[i]
        if block.kind != "para" or block.always_content or len(block.lines) != 1:
            continue
        level, long_colon = _label_level(block.text)
        if level is None or i + 1 == len(out):
            continue
        nxt = out[i + 1]
        if long_colon:
            heading = nxt.kind == "list" or nxt.always_content
        elif nxt.kind == "heading":
            heading = nxt.level is not None and nxt.level > level
        else:
            heading = _substantial(nxt)
        if heading:
            block.kind, block.level = "heading", level
    return out


# --------------------------------------------------------------------------- emission


def _item_text(item: _Item) -> str:
    head = _clean(" ".join(t for _, t in item.lines))
    joined = ""
    for child in item.children:
        text = _item_text(child)
        if not _has_letters(text):
            continue
        if joined:
            joined += " " if _last_char(joined) in ".!?;" else "; "
        joined += text
    if not joined:
        return head
    if not _has_letters(head):
        return joined
    return head + (" " if _last_char(head) in ".!?:;" else ": ") + joined


def _heading_text(text: str) -> str:
    return _clean(text).rstrip(":").strip()


def _para_segments(block: _Block, unit: str) -> list[tuple[int, int, str]]:
    parts, spans, pos = [], [], 0
    for no, text in block.lines:
        text = text.strip()
        spans.append((pos, pos + len(text), no))
        parts.append(text)
        pos += len(text) + 1
    joined = " ".join(parts)
    pieces = split_sentences(joined) if unit == "sentence" else [(0, len(joined))]
    out = []
    for start, end in pieces:
        numbers = [no for a, b, no in spans if a < end and b > start]
        text = re.sub(r"^[–—]\s*", "", _clean(joined[start:end]))  # speech dash
        if _has_letters(text):
            out.append((min(numbers), max(numbers), text))
    return out


def _segments_from_lines(lines: Iterable[_Line], unit: str) -> list[dict[str, object]]:
    stack: list[tuple[int, str]] = []
    rows: list[dict[str, object]] = []

    def add(start: int, end: int, text: str) -> None:
        rows.append(
            {
                "section": SECTION_SEPARATOR.join(t for _, t in stack),
                "line_start": start,
                "line_end": end,
                "text": text,
            }
        )

    for block in _refine(_blocks(lines)):
        if block.kind == "heading":
            text = _heading_text(" ".join(t for _, t in block.lines))
            if not _has_letters(text):
                continue
            level = block.level or _LABEL
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, text))
        elif block.kind == "list":
            for item in block.items:
                text = _item_text(item)
                if _has_letters(text):
                    numbers = item.line_numbers()
                    add(min(numbers), max(numbers), text)
        else:
            for start, end, text in _para_segments(block, unit):
                add(start, end, text)
    return rows


# --------------------------------------------------------------------------- ids & frames


def _slug(document: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", Path(document).stem)
    ascii_name = ascii_name.encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")
    return slug[:40].rstrip("-") or "doc"


def segment_id(document: str, section: str, text: str) -> str:
    """The stable id of a segment: ``<document slug>-<8 hex of sha1(document, section, text)>``."""
    key = f"{document}\n{section}\n{text}"
    return f"{_slug(document)}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:8]}"


def _frame(
    rows: list[dict[str, object]],
    document: str,
    counts: dict[str, int] | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """The segments table of ``rows``; ``counts`` of the ids given so far in this document
    carry over between the chunks of one document; ``columns`` are those of an empty chunk."""
    counts = {} if counts is None else counts
    for row in rows:
        base = segment_id(document, str(row["section"]), str(row["text"]))
        counts[base] = counts.get(base, 0) + 1
        row["segment_id"] = base if counts[base] == 1 else f"{base}-{counts[base]}"
        row["document"] = document
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=columns or SEGMENT_COLUMNS)
    extra = [c for c in frame.columns if c not in SEGMENT_COLUMNS]
    frame = frame[SEGMENT_COLUMNS + extra]
    types: dict[str, object] = {c: str for c in frame.columns}
    types.update(line_start="int64", line_end="int64")
    return frame.astype(types)


_PAGE_BREAKS = str.maketrans("", "", "\x0c\x0b")  # form feed, vertical tab (pdftotext)


def _text_lines(text: str) -> list[_Line]:
    """The numbered lines of ``text``; page breaks are dropped from them (a line keeps its
    number, so provenance still points into the file). A page break at the start of a line
    (``\\f``, as pdftotext writes) ends what came before, like a blank line: a heading after
    it is a heading."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = []
    for no, line in enumerate(text.split("\n"), 1):
        if line[:1] in ("\x0c", "\x0b"):
            lines.append(_Line(no, ""))
        lines.append(_Line(no, line.translate(_PAGE_BREAKS)))
    return lines


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise QualcodeError(f"unknown segmentation unit {unit!r}; use one of {', '.join(UNITS)}.")


def segment_text(text: str, document: str, *, unit: str = "paragraph") -> pd.DataFrame:
    """Segment plain text / markdown as if it were the file ``document``.

    Returns the columns :data:`SEGMENT_COLUMNS`. ``segment_id`` is ``f"{stem}-{h}"``: ``stem``
    is a slug of the document name and ``h`` the first 8 hex digits of
    ``sha1(document + "\\n" + section + "\\n" + text)``, so ids are stable across runs and
    unaffected by edits elsewhere in the file. A repeated id within a document gets ``-2``,
    ``-3`` … in order of appearance.
    """
    _check_unit(unit)
    lines = _text_lines(text)
    return _frame(_segments_from_lines(lines, unit), document)


# --------------------------------------------------------------------------- file readers


_DOCX_HEADING = re.compile(r"^(?:heading|rubrik)\s*(\d)$", re.IGNORECASE)


def _docx_heading_level(style: str) -> int | None:
    match = _DOCX_HEADING.match(style.strip())
    if match:
        return max(1, min(int(match.group(1)), 6))
    name = style.strip().lower()
    if name in ("title", "rubrik"):
        return 1
    if name in ("subtitle", "underrubrik"):
        return 2
    return None


def _docx_list_level(paragraph: Paragraph, style: str) -> int | None:
    p_pr = paragraph._p.pPr
    num_pr = p_pr.numPr if p_pr is not None else None
    if num_pr is not None and num_pr.numId is not None and num_pr.numId.val != 0:
        return int(num_pr.ilvl.val) if num_pr.ilvl is not None else 0
    name = style.strip().lower()
    if name.startswith(("list bullet", "list number", "list paragraph", "liststycke")):
        digits = re.findall(r"\d+", name)
        return int(digits[-1]) - 1 if digits else 0
    return None


def _docx_lines(path: Path) -> list[_Line]:
    import docx
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    check_zip_container(path, "document")
    try:
        document = docx.Document(str(path))
    except Exception as exc:  # python-docx raises many types for a broken package
        raise QualcodeError(
            f"document {path.name!r} is not a valid Word .docx file ({type(exc).__name__}); "
            "open it in Word and save it again as .docx."
        ) from None
    lines: list[_Line] = []
    number = 0

    def add(paragraph: Paragraph, in_table: bool = False) -> None:
        nonlocal number
        number += 1
        try:
            style = (paragraph.style.name if paragraph.style is not None else "") or ""
        except (KeyError, ValueError):
            style = ""
        text = paragraph.text.replace("\n", " ").replace("\t", " ")
        lines.append(
            _Line(
                number,
                text,
                heading=_docx_heading_level(style),
                list_level=_docx_list_level(paragraph, style),
                separate=True,
                in_table=in_table,
            )
        )

    for child in document.element.body.iterchildren():
        if child.tag == qn("w:p"):
            add(Paragraph(child, document))
        elif child.tag == qn("w:tbl"):
            for row in Table(child, document).rows:
                seen: list[object] = []
                for cell in row.cells:
                    if any(cell._tc is tc for tc in seen):  # merged cells repeat
                        continue
                    seen.append(cell._tc)
                    for paragraph in cell.paragraphs:
                        add(paragraph, in_table=True)
                    lines.append(_Line(number, ""))  # cell boundary, not a paragraph
    return lines


@dataclass
class DocumentText:
    """A document's plain text as :func:`segment` read it (lines joined by ``\\n``), to find
    its segments in it again, e.g. for an export with character offsets."""

    name: str
    text: str
    line_starts: list[int]

    @classmethod
    def from_lines(cls, name: str, lines: Sequence[str]) -> DocumentText:
        starts, position = [], 0
        for line in lines:
            starts.append(position)
            position += len(line) + 1
        return cls(name, "\n".join(lines), starts)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> DocumentText:
        """Read a .txt/.md/.docx document; line ``n`` of :func:`segment` is line ``n`` here
        (for .docx: paragraph ``n``)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            text = read_text(path, what="document")
            numbered = {line.no: line.text for line in _text_lines(text)}
            lines = list(numbered.values())  # one per line number (a page break's blank is not)
        elif suffix == ".docx":
            check_file(path, what="document")
            numbered = {line.no: line.text for line in _docx_lines(path) if line.text}
            lines = [numbered.get(no, "") for no in range(1, max(numbered, default=0) + 1)]
        else:
            raise QualcodeError(
                f"{path.name!r} is not a text document (.txt, .md, .docx); survey tables have "
                "no running text to point into."
            )
        return cls.from_lines(path.name, lines)

    def span(self, line_start: int, line_end: int, text: str) -> tuple[int, int] | None:
        """Character offsets of segment ``text`` from lines ``line_start``–``line_end``.

        Exact where the text stands verbatim in those lines; else the span from its first to
        its last character, ignoring whitespace, soft hyphens and markup; None when the lines
        do not hold the segment (the document changed since it was segmented).
        """
        if not 1 <= line_start <= line_end <= len(self.line_starts):
            return None
        base = self.line_starts[line_start - 1]
        stop = (
            self.line_starts[line_end] - 1 if line_end < len(self.line_starts) else len(self.text)
        )
        return find_in(self.text[base:stop], text, base)

    def find(self, text: str) -> tuple[int, int] | None:
        """Character offsets of ``text`` anywhere in the document (its first occurrence), by
        the same rules as :meth:`span`: for segments whose lines are not known."""
        return find_in(self.text, text, 0)


def find_in(window: str, text: str, base: int) -> tuple[int, int] | None:
    """``text``'s span in ``window`` (offsets plus ``base``): verbatim, else by its letters."""
    found = window.find(text)
    if found >= 0:
        return base + found, base + found + len(text)
    # Compare on letters and digits only: whitespace, markup, bullets and the joins of
    # sub-bullets (": ", "; ") are what the segmenter changes.
    kept = [(i, ch) for i, ch in enumerate(window) if ch.isalnum()]
    letters = "".join(ch for _, ch in kept)
    wanted = "".join(ch for ch in text if ch.isalnum())
    found = letters.find(wanted) if wanted else -1
    if found < 0:
        return None
    start, end = kept[found][0], kept[found + len(wanted) - 1][0] + 1
    # Take in the punctuation and quotes around the words where the text has them too.
    head = text[: len(text) - len(text.lstrip(_NOT_ALNUM))]
    tail = text[len(text.rstrip(_NOT_ALNUM)) :]
    if head and window[max(0, start - len(head)) : start] == head:
        start -= len(head)
    if tail and window[end : end + len(tail)] == tail:
        end += len(tail)
    return base + start, base + end


def _free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name = f"meta_{name}"
    return name


def _survey_chunks(
    path: Path, column: str | None, unit: str, rows: int, counts: dict[str, int]
) -> Iterator[pd.DataFrame]:
    """The segments of a survey export, a chunk of answers at a time; ``attrs["empty_answers"]``
    counts the empty answers of each chunk."""
    from qualcode.files.chunks import iter_table

    if column is None:
        frame = next(iter_table(path, what="survey export"))
        raise QualcodeError(
            f"{path.name!r} is a table: pass --column NAME to say which column holds the "
            f"answers (columns: {', '.join(repr(c) for c in frame.columns)})."
        )
    for frame in iter_table(path, required=[column], what="survey export", rows=rows):
        section = frame.attrs.get("original_names", {}).get(column, column)
        taken = {*SEGMENT_COLUMNS, NON_ANSWER}
        meta = {}
        for name in frame.columns:
            if name != column:
                meta[name] = _free_name(name, taken)
                taken.add(meta[name])
        out: list[dict[str, object]] = []
        empty = 0
        for row_no, record in zip(spreadsheet_rows(frame), frame.to_dict("records"), strict=True):
            answer = _normalise(str(record[column]))
            if not answer:
                empty += 1
                continue
            whole = is_non_answer(answer)
            pieces = (
                split_sentences(answer) if unit == "sentence" and not whole else [(0, len(answer))]
            )
            for start, end in pieces:
                text = _normalise(answer[start:end])
                if whole or _has_letters(text):
                    row: dict[str, object] = {
                        "section": section,
                        "line_start": row_no,
                        "line_end": row_no,
                        "text": text,
                    }
                    row.update({meta[k]: v for k, v in record.items() if k != column})
                    row[NON_ANSWER] = "true" if whole else "false"
                    out.append(row)
        names = [*SEGMENT_COLUMNS, *meta.values(), NON_ANSWER]
        chunk = _frame(out, path.name, counts, columns=names)
        chunk.attrs["empty_answers"] = empty
        yield chunk


def _segment_file(path: Path, unit: str, column: str | None, rows: int) -> Iterator[pd.DataFrame]:
    suffix = path.suffix.lower()
    if suffix in SURVEY_SUFFIXES:
        counts: dict[str, int] = {}  # ids so far, across the chunks of this export
        yield from _survey_chunks(path, column, unit, rows, counts)
        return
    yield _segment_document(path, unit)


def _segment_document(path: Path, unit: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        text = read_text(path, what="document")
        if not text.strip():
            raise QualcodeError(
                f"document {path.name!r} contains only whitespace; "
                "check that the right file was given."
            )
        return segment_text(text, path.name, unit=unit)
    if suffix == ".docx":
        check_file(path, what="document")
        return _frame(_segments_from_lines(_docx_lines(path), unit), path.name)
    hints = {
        ".doc": "save it as .docx",
        ".pdf": "convert it to .txt or .docx first",
        ".xls": "save it as .xlsx or CSV",
        ".rtf": "save it as .docx or .txt",
    }
    hint = hints.get(suffix, f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    raise QualcodeError(
        f"{path.name!r}: unsupported file type {suffix or '(no extension)'}; {hint}."
    )


def segment(
    paths: Sequence[str | os.PathLike[str]], *, unit: str = "paragraph", column: str | None = None
) -> pd.DataFrame:
    """Segment documents (.txt/.md/.docx) and survey exports (.csv/.tsv/.xlsx).

    Returns one row per segment with the columns :data:`SEGMENT_COLUMNS`, followed by the
    metadata columns of survey exports (empty for other documents; a metadata column whose
    name clashes with a segment column is prefixed ``meta_``). ``document`` is the file name,
    ``line_start``/``line_end`` are 1-based line numbers (paragraph numbers for .docx,
    spreadsheet rows for tables). ``unit="sentence"`` splits prose paragraphs and answers into
    sentences. ``column`` names the answer column of survey exports and is ignored for
    documents. See :func:`segment_text` for how ``segment_id`` is built.
    """
    chunks = segment_chunks(paths, unit=unit, column=column, rows=2**62)
    frames = list(chunks())
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out.attrs.update(chunks.counts)  # type: ignore[attr-defined]
    return out


def segment_chunks(
    paths: Sequence[str | os.PathLike[str]],
    *,
    unit: str = "paragraph",
    column: str | None = None,
    rows: int | None = None,
) -> Any:
    """:func:`segment`, a chunk at a time: a callable that yields the segments of ``paths`` in
    chunks (a survey export's answers ``rows`` at a time, a document whole), each with the
    columns of all inputs. After a full pass its ``counts`` hold ``empty_answers`` and
    ``non_answers``; the checks of :func:`segment` (no segments, a segment too long, an id in
    two inputs) are made as the chunks go by."""
    from qualcode.files.chunks import CHUNK_ROWS, aligned

    _check_unit(unit)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise QualcodeError("no input files given; pass at least one document or survey file.")
    seen: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.name in seen:
            other = seen[path.name]
            same = path.exists() and other.exists() and path.resolve() == other.resolve()
            raise QualcodeError(
                f"{path.name!r} is given twice; remove the duplicate input."
                if same
                else f"two inputs are named {path.name!r} ({other} and {path}); the file name "
                "identifies a document, so rename one of them."
            )
        seen[path.name] = path
    size = rows or CHUNK_ROWS
    files = aligned([functools.partial(_segment_file, Path(p), unit, column, size) for p in paths])

    def chunks() -> Iterator[pd.DataFrame]:
        counts = {"empty_answers": 0, "non_answers": 0}
        total = 0
        seen: set[int] = set()  # id hashes, to find one id in two inputs
        for chunk in files():
            counts["empty_answers"] += chunk.attrs.get("empty_answers", 0)
            if chunk.empty:
                continue
            places = [f"{d} line {n}" for d, n in zip(chunk["document"], chunk["line_start"])]
            check_text_lengths(chunk["text"], "segments", places)
            if len(paths) > 1 and _ids_seen(chunk["segment_id"], seen):
                raise QualcodeError(
                    f"segment id {chunk['segment_id'].iloc[0]!r} occurs in more than one input; "
                    "each input must be a different document (remove duplicated files)."
                )
            counts["non_answers"] += int(non_answers(chunk).sum())
            total += len(chunk)
            chunk = chunk.reset_index(drop=True)
            chunk.attrs = {}
            yield chunk
        if not total:
            names = ", ".join(repr(Path(p).name) for p in paths)
            raise QualcodeError(
                f"no text segments found in {names}; check that the files "
                "contain text (not only headings or empty answers)."
            )
        chunks.counts = counts  # type: ignore[attr-defined]

    chunks.counts = {}  # type: ignore[attr-defined]
    return chunks


def _ids_seen(ids: pd.Series, seen: set[int]) -> bool:
    """Whether a document's ids were already seen in another input (hashes kept in ``seen``)."""
    hashes = set(pd.util.hash_pandas_object(ids, index=False).tolist())
    clash = bool(hashes & seen)
    seen |= hashes
    return clash
