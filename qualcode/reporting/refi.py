"""REFI-QDA projects from the analyst's own tools (NVivo, ATLAS.ti, MAXQDA, QualCoder): read one
into the files qualcode works with, and write the model's codings back into it.

:func:`import_qdpx` writes into a folder::

    codebook.yaml    the project's codes (a nested code tree flattened: "Parent › Child"),
                     with descriptions and colours
    documents/       its text sources as UTF-8 .txt files
    labels.csv       each coded selection: segment_id, document, section, text, theme, coder,
                     labelled_at (the labels contract), then start, end (the selection's
                     character offsets in its source) and source_guid
    segments.csv     the text no one has coded yet, segmented as a batch

:func:`write_into` adds codings to a copy of the project: the analyst's codes, codings and
everything else stay as they were; the model's are added by a user "qualcode", with the
confidence and review flag in each selection's description.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from qualcode.codebook import Codebook, load_codebook
from qualcode.errors import QualcodeError
from qualcode.files.coded import (
    is_predictions,
    model_column,
    non_answers,
    parse_confidence,
    parse_flags,
)
from qualcode.files.tables import (
    MAX_TEXT_BYTES,
    MAX_ZIP_RATIO,
    atomic_write_bytes,
    atomic_write_text,
    spreadsheet_rows,
    staged_folder,
    write_table,
)
from qualcode.labelling import LABEL_COLUMNS
from qualcode.reporting.export import QDA_NAMESPACE, qda_guid, selection_note, xml_text
from qualcode.segmentation import find_in, segment, segment_id

__all__ = ["ImportResult", "import_qdpx", "write_into"]

NS = {"q": QDA_NAMESPACE}
QUALCODE_USER = "qualcode"
# What a project may hold that qualcode does not read; kept as they are by write_into.
OTHER_SOURCES = ("PDFSource", "PictureSource", "AudioSource", "VideoSource")


def _tag(name: str) -> str:
    return f"{{{QDA_NAMESPACE}}}{name}"


@dataclass
class _Code:
    guid: str
    name: str
    path: tuple[str, ...]
    description: str
    color: str
    theme_id: str = ""


@dataclass
class _Source:
    guid: str
    name: str
    text: str  # as the project's offsets count it
    document: str  # the .txt file name in documents/
    element: ET.Element | None = None


@dataclass
class ImportResult:
    """What :func:`import_qdpx` wrote."""

    folder: Path
    codes: int
    documents: int
    labelled: int
    segments: int
    coders: list[str]
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def _read_project(path: Path) -> tuple[ET.Element, zipfile.ZipFile]:
    if not path.is_file():
        raise QualcodeError(f"REFI-QDA project {path.name!r} not found; check the path.")
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
        entry = next((n for n in names if n.lower().endswith(".qde")), None)
        if entry is None:
            raise QualcodeError(
                f"{path.name!r} holds no project.qde: is it a REFI-QDA project (.qdpx)?"
            )
        # Only the project file and the text sources are read, so only they are bounded (a
        # project's videos or PDFs may be large; they are copied, never unpacked in memory).
        for info in archive.infolist():
            read = info.filename == entry or info.filename.lower().endswith(".txt")
            if read and (
                info.file_size > MAX_TEXT_BYTES
                or info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) > 10 * 2**20
            ):
                raise QualcodeError(
                    f"{path.name!r}: {info.filename} would unpack to "
                    f"{info.file_size / 2**20:,.0f} MB; qualcode reads project files and text "
                    f"sources up to {MAX_TEXT_BYTES // 2**20} MB"
                )
        root = ET.fromstring(archive.read(entry))
    except (zipfile.BadZipFile, ET.ParseError) as err:
        raise QualcodeError(f"{path.name!r} is not a readable REFI-QDA project: {err}") from None
    if root.tag != _tag("Project"):
        raise QualcodeError(
            f"{path.name!r}: the root element is {root.tag!r}, not a REFI-QDA Project "
            f"({QDA_NAMESPACE})"
        )
    return root, archive


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return slug if slug[:1].isalpha() else f"code_{slug}".rstrip("_")


def _codes(root: ET.Element) -> list[_Code]:
    """Every code of the project's code tree, parents before children, with unique ids."""
    out: list[_Code] = []

    def walk(parent: ET.Element, path: tuple[str, ...]) -> None:
        for code in parent.findall("q:Code", NS):
            name = " ".join((code.get("name") or "").split()) or "kod"
            here = (*path, name)
            description = " ".join((code.findtext("q:Description", "", NS) or "").split())
            color = code.get("color") or ""
            out.append(_Code(code.get("guid", ""), name, here, description, color))
            walk(code, here)

    codes = root.find("q:CodeBook/q:Codes", NS)
    if codes is not None:
        walk(codes, ())
    taken: set[str] = set()
    for code in out:
        base = _slug("_".join(code.path)) or "kod"
        theme_id, n = base, 1
        while theme_id in taken:
            n += 1
            theme_id = f"{base}_{n}"
        taken.add(theme_id)
        code.theme_id = theme_id
    return out


def _source_text(source: ET.Element, archive: zipfile.ZipFile) -> str | None:
    """A TextSource's text as its selections count offsets: a leading BOM is not counted."""
    content = source.find("q:PlainTextContent", NS)
    if content is not None and content.text is not None:
        return content.text.lstrip("\ufeff")
    where = source.get("plainTextPath") or ""
    if where.startswith("internal://"):
        member = "sources/" + where[len("internal://") :]
        try:
            data = archive.read(member)
        except KeyError:
            return None
        return data.decode("utf-8", errors="replace").lstrip("\ufeff")
    return None


def _document_names(sources: list[ET.Element]) -> list[str]:
    """The .txt file name each source gets in documents/ (unique, safe on every system)."""
    names, taken = [], set()
    for source in sources:
        stem = Path(source.get("name") or "dokument").stem
        stem = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", stem).strip(" .") or "dokument"
        name, n = f"{stem}.txt", 1
        while name.lower() in taken:
            n += 1
            name = f"{stem} ({n}).txt"
        taken.add(name.lower())
        names.append(name)
    return names


def _sources(root: ET.Element, archive: zipfile.ZipFile, notes: list[str]) -> list[_Source]:
    elements = root.findall("q:Sources/q:TextSource", NS)
    out = []
    for element, document in zip(elements, _document_names(elements)):
        text = _source_text(element, archive)
        if text is None:
            notes.append(
                f"text source {element.get('name')!r} has no readable text in the project; left out"
            )
            continue
        out.append(
            _Source(element.get("guid", ""), element.get("name", ""), text, document, element)
        )
    other = [e for kind in OTHER_SOURCES for e in root.findall(f"q:Sources/q:{kind}", NS)]
    if other:
        notes.append(
            f"{len(other)} PDF, picture, audio or video source(s) left out: qualcode codes text "
            "(they stay in the project when codings are written back)"
        )
    return out


def _newline_basis(text: str, selections: list[ET.Element]) -> str:
    """The text the project's offsets count in: as stored, or with ``\\r\\n`` read as one
    character, whichever makes more selections hold their recorded names."""
    if "\r\n" not in text:
        return text
    joined = text.replace("\r\n", "\n")

    def hits(candidate: str) -> int:
        count = 0
        for selection in selections:
            name = " ".join((selection.get("name") or "").split())
            start, end = _positions(selection)
            if name and " ".join(candidate[start:end].split()) == name:
                count += 1
        return count

    return joined if hits(joined) > hits(text) else text


def _positions(selection: ET.Element) -> tuple[int, int]:
    try:
        return int(selection.get("startPosition", "")), int(selection.get("endPosition", ""))
    except ValueError:
        return -1, -1


def import_qdpx(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> ImportResult:
    """Read a REFI-QDA project into ``folder`` (see the module docstring): all or nothing."""
    path, folder = Path(path), Path(folder)
    root, archive = _read_project(path)
    notes: list[str] = []
    users = {u.get("guid"): u.get("name") or "okänd" for u in root.iter(_tag("User"))}
    codes = _codes(root)
    if len(codes) < 2:
        raise QualcodeError(
            f"{path.name!r} has {len(codes)} code(s); a codebook needs at least 2 to train on."
        )
    by_guid = {c.guid: c for c in codes}
    sources = _sources(root, archive, notes)
    if not sources:
        raise QualcodeError(f"{path.name!r} has no text sources to code.")

    rows, coded_spans = [], {}
    for source in sources:
        selections = source.element.findall("q:PlainTextSelection", NS)
        source.text = _newline_basis(source.text, selections)
        spans = coded_spans.setdefault(source.document, [])
        for selection in selections:
            start, end = _positions(selection)
            codings = selection.findall("q:Coding", NS)
            if not codings:
                continue
            if not 0 <= start < end <= len(source.text):
                notes.append(
                    f"a selection in {source.name!r} points outside its text "
                    f"({start}–{end}); left out"
                )
                continue
            text = " ".join(source.text[start:end].split())
            if not text:
                continue
            by_coder: dict[str, list[str]] = {}
            stamps: dict[str, str] = {}
            for coding in codings:
                ref = coding.find("q:CodeRef", NS)
                code = by_guid.get(ref.get("targetGUID") if ref is not None else None)
                if code is None:
                    continue
                coder = users.get(coding.get("creatingUser") or selection.get("creatingUser"))
                coder = coder or "okänd"
                themes = by_coder.setdefault(coder, [])
                if code.theme_id not in themes:
                    themes.append(code.theme_id)
                stamps.setdefault(coder, coding.get("creationDateTime", ""))
            if by_coder:
                spans.append((start, end))  # coded: not asked again as a batch segment
            note = " ".join((selection.findtext("q:Description", "", NS) or "").split())
            if note.startswith("qualcode:"):  # what qualcode's export says, not a coder's note
                note = ""
            for coder, themes in by_coder.items():
                rows.append(
                    {
                        "segment_id": segment_id(source.document, "", text),
                        "document": source.document,
                        "section": "",
                        "text": text,
                        "theme": ";".join(themes),
                        "coder": coder,
                        "labelled_at": stamps.get(coder, ""),
                        "note": note,
                        "start": start,
                        "end": end,
                        "source_guid": source.guid,
                    }
                )
    labels = pd.DataFrame(rows, columns=[*LABEL_COLUMNS, "start", "end", "source_guid"])
    with staged_folder(folder) as out:
        documents = out / "documents"
        documents.mkdir()
        for source in sources:
            plain = source.text.replace("\r\n", "\n").replace("\r", "\n")
            atomic_write_text(documents / source.document, plain)
        atomic_write_text(out / "codebook.yaml", _codebook_yaml(root, codes, path))
        load_codebook(out / "codebook.yaml")  # what is written reads back, or nothing is
        write_table(labels, out / "labels.csv")
        segments = _uncoded_segments(sources, documents, coded_spans)
        write_table(segments, out / "segments.csv")
    for kind, what in (("Set", "sets"), ("Note", "notes"), ("Graph", "graphs"), ("Case", "cases")):
        found = len(list(root.iter(_tag(kind))))
        if found:
            notes.append(f"{found} {what} not read (they stay in the project)")
    return ImportResult(
        folder,
        len(codes),
        len(sources),
        len(labels),
        len(segments),
        sorted(set(labels["coder"])),
        notes,
    )


def _codebook_yaml(root: ET.Element, codes: list[_Code], path: Path) -> str:
    # A theme's label must name no other theme (ids and labels resolve alike): codes of the
    # same name in two places, or named like another code's id, get a number.
    themes, taken = [], {c.theme_id for c in codes}
    for code in codes:
        label, n = " › ".join(code.path), 1
        while label.casefold() in taken and label.casefold() != code.theme_id:
            n += 1
            label = f"{' › '.join(code.path)} ({n})"
        taken.add(label.casefold())
        theme = {
            "id": code.theme_id,
            "label": label,
            "description": code.description or f"Koden {' › '.join(code.path)} från {path.name}.",
        }
        if re.fullmatch(r"#[0-9A-Fa-f]{6}", code.color):
            theme["color"] = code.color.upper()
        themes.append(theme)
    data = {"name": root.get("name") or path.stem, "language": "sv", "themes": themes}
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False, width=100)


def _uncoded_segments(
    sources: list[_Source], documents: Path, coded: dict[str, list[tuple[int, int]]]
) -> pd.DataFrame:
    """The documents segmented, without the text of coded selections: a segment that holds
    coded text gives way to the lines of it that no one coded."""
    frame = segment([documents / s.document for s in sources])
    texts = {s.document: s.text for s in sources}
    rows, cursor = [], {}
    for row in frame.to_dict("records"):
        document = row["document"]
        spans = coded.get(document, [])
        text = texts[document]
        after = cursor.get(document, 0)
        where = find_in(text[after:], row["text"], after) or find_in(text, row["text"], 0)
        if where is not None:
            cursor[document] = where[1]
        if where is None or not any(a < where[1] and where[0] < b for a, b in spans):
            rows.append(row)
            continue
        for start, end in _uncoded_lines(text, where, spans):
            piece = " ".join(text[start:end].split()).lstrip("-•*– ")
            if any(ch.isalpha() for ch in piece):
                line = text.count("\n", 0, start) + 1
                rows.append(
                    {
                        **row,
                        "segment_id": segment_id(document, str(row["section"]), piece),
                        "line_start": line,
                        "line_end": line,
                        "text": piece,
                    }
                )
    out = pd.DataFrame(rows, columns=frame.columns)
    seen: dict[str, int] = {}
    ids = []
    for sid in out["segment_id"]:  # a text repeated under one heading: -2, -3 as segment does
        seen[sid] = seen.get(sid, 0) + 1
        ids.append(sid if seen[sid] == 1 else f"{sid}-{seen[sid]}")
    return out.assign(segment_id=ids)


def _uncoded_lines(
    text: str, where: tuple[int, int], spans: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    """The lines, or parts of lines, of ``text[where]`` outside every coded span."""
    covered = [False] * (where[1] - where[0])
    for a, b in spans:
        for i in range(max(a, where[0]), min(b, where[1])):
            covered[i - where[0]] = True
    out, start = [], None
    for i in range(where[0], where[1] + 1):
        free = i < where[1] and not covered[i - where[0]] and text[i] not in "\r\n"
        if free and start is None:
            start = i
        elif not free and start is not None:
            out.append((start, i))
            start = None
    return out


# --------------------------------------------------------------------------- writing back


def write_into(
    project: str | os.PathLike[str],
    table: pd.DataFrame,
    codebook: Codebook,
    output: str | os.PathLike[str],
    *,
    accepted_only: bool = False,
) -> tuple[int, list[str]]:
    """Write a copy of ``project`` with the model's codings of ``table`` (a predictions file of
    the project's documents, as :func:`import_qdpx` named them) added; returns how many
    segments were coded, and notes. Nothing of the project is changed or dropped."""
    project, output = Path(project), Path(output)
    root, archive = _read_project(project)
    ET.register_namespace("", QDA_NAMESPACE)
    notes: list[str] = []
    codes = {c.theme_id: c for c in _codes(root)}
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")

    users = root.find("q:Users", NS)
    if users is None:
        users = ET.Element(_tag("Users"))
        root.insert(0, users)
    user_guid = qda_guid("user", QUALCODE_USER)
    if not any(u.get("guid") == user_guid for u in users):
        ET.SubElement(users, _tag("User"), {"guid": user_guid, "name": QUALCODE_USER})

    code_guids = {}
    for theme in codebook.themes:
        if theme.id in codes:
            code_guids[theme.id] = codes[theme.id].guid
            continue
        book = root.find("q:CodeBook", NS)
        if book is None:
            book = ET.Element(_tag("CodeBook"))
            root.insert(list(root).index(users) + 1, book)
        parent = book.find("q:Codes", NS)
        if parent is None:
            parent = ET.SubElement(book, _tag("Codes"))
        code_guids[theme.id] = qda_guid("code", theme.id)
        code = ET.SubElement(
            parent,
            _tag("Code"),
            {"guid": code_guids[theme.id], "name": xml_text(theme.label), "isCodable": "true"},
        )
        ET.SubElement(code, _tag("Description")).text = xml_text(theme.description)
        notes.append(f"code {theme.label!r} added to the project (not in it before)")

    elements = root.findall("q:Sources/q:TextSource", NS)
    by_document = {}
    for element, document in zip(elements, _document_names(elements)):
        text = _source_text(element, archive)
        if text is not None:
            selections = element.findall("q:PlainTextSelection", NS)
            by_document[document] = (element, _newline_basis(text, selections))

    if not is_predictions(table):
        raise QualcodeError(
            "--into writes the model's codings: give the predictions file from `qualcode "
            "classify` (a labels file's codings are in the project already, or import it anew)"
        )
    rows = spreadsheet_rows(table)
    theme_column = model_column(table, "theme")
    confidence = parse_confidence(table[model_column(table, "confidence")], rows)
    flagged = parse_flags(table[model_column(table, "needs_review")], rows)
    skipped = non_answers(table)
    coded, missing, unplaced = 0, set(), 0
    cursor: dict[str, int] = {}
    for i, row in enumerate(table.to_dict("records")):
        themes = [t for t in str(row.get(model_column(table, "themes"), "")).split(";") if t]
        themes = themes or [t for t in [str(row.get(theme_column, ""))] if t]
        if skipped[i] or not themes or (accepted_only and flagged[i]):
            continue
        document = str(row.get("document", ""))
        if document not in by_document:
            missing.add(document)
            continue
        element, text = by_document[document]
        # Segments come in reading order: look after the last one first, so a repeated text
        # ("Bättre kommunikation.") is placed at its own occurrence.
        after = cursor.get(document, 0)
        span = find_in(text[after:], str(row["text"]), after) or find_in(text, str(row["text"]), 0)
        if span is None:
            unplaced += 1
            continue
        start, end = span
        cursor[document] = end
        selection = ET.Element(
            _tag("PlainTextSelection"),
            {
                "guid": qda_guid("selection", f"{project.name}/{document}/{start}/{end}"),
                "name": xml_text(str(row["text"])[:60]),
                "startPosition": str(start),
                "endPosition": str(end),
                "creatingUser": user_guid,
                "creationDateTime": now,
            },
        )
        reason = row.get(model_column(table, "review_reason"), "")
        note = selection_note(confidence[i], flagged[i], reason)
        ET.SubElement(selection, _tag("Description")).text = xml_text(note)
        for theme_id in themes:
            if theme_id not in code_guids:
                continue
            coding = ET.SubElement(
                selection,
                _tag("Coding"),
                {
                    "guid": qda_guid("coding", f"{selection.get('guid')}/{theme_id}"),
                    "creatingUser": user_guid,
                    "creationDateTime": now,
                },
            )
            ET.SubElement(coding, _tag("CodeRef"), {"targetGUID": code_guids[theme_id]})
        # A TextSource holds its selections before any VariableValue and NoteRef.
        after = [c for c in element if c.tag in (_tag("VariableValue"), _tag("NoteRef"))]
        element.insert(list(element).index(after[0]) if after else len(element), selection)
        coded += 1
    if missing:
        notes.append(
            f"{len(missing)} document(s) of the predictions are not in the project "
            f"({', '.join(map(repr, sorted(missing)[:3]))}); their segments were left out"
        )
    if unplaced:
        notes.append(f"{unplaced} segment(s) not found in their source text; left out")

    xml = ET.tostring(root, encoding="unicode")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            if info.filename.lower().endswith(".qde"):
                out.writestr(info.filename, '<?xml version="1.0" encoding="utf-8"?>\n' + xml)
            else:  # streamed: a project's media need not fit in memory
                with archive.open(info) as source, out.open(info, "w") as target:
                    shutil.copyfileobj(source, target, 2**20)
    atomic_write_bytes(output, buffer.getvalue())
    return coded, notes
