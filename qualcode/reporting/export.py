"""Step 6b: export coded segments to other tools — an Excel workbook and a REFI-QDA project.

:func:`write_workbook` (``qualcode export xlsx``)
    ``Sammanfattning`` (one row per theme: label, description, segments, share, flagged),
    ``Alla segment`` (a code matrix: provenance, text, themes, a 0/1 column per theme) and one
    sheet per theme with its segments, most confident first. Header rows frozen, filters on,
    column widths set.
:func:`write_qdpx` (``qualcode export qdpx``)
    a REFI-QDA Project Exchange file (``urn:QDA-XML:project:1.0``) that NVivo, ATLAS.ti,
    MAXQDA and QualCoder import: ``project.qde`` and ``sources/<guid>.txt``. The codebook
    becomes Codes, each document a TextSource, each segment a PlainTextSelection at its
    character offsets in the document with a Coding per theme (confidence and review flag in
    the selection's description). Given the source documents (``sources``), a TextSource holds
    the document's own text; otherwise (or for survey exports) its segments laid out one per
    paragraph. GUIDs are uuid5 of theme ids, documents and segment ids, so re-exports are stable.

Both take a :class:`~qualcode.files.pseudonymise.Pseudonymiser` to replace personal data first.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import os
import re
import uuid
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import pandas as pd

from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.files.coded import MODEL_PREFIX, PREDICTION_COLUMNS, PROVENANCE
from qualcode.files.pseudonymise import Pseudonymiser
from qualcode.files.tables import atomic_write_bytes, sheet_name, xlsx_bytes
from qualcode.reporting.coded import (
    TOTAL,
    CodedTable,
    as_coded,
    count_themes,
    respondent_columns,
    theme_scores,
)
from qualcode.segmentation import TEXT_SUFFIXES, DocumentText

__all__ = [
    "PALETTE",
    "QDA_NAMESPACE",
    "ExportResult",
    "write_qdpx",
    "write_workbook",
]

QDA_NAMESPACE = "urn:QDA-XML:project:1.0"
PALETTE = (
    "#4E79A7",
    "#F28E2B",
    "#E15759",
    "#76B7B2",
    "#59A14F",
    "#EDC948",
    "#B07AA1",
    "#FF9DA7",
    "#9C755F",
    "#BAB0AC",
)
DOCUMENT_SUFFIXES = (*TEXT_SUFFIXES, ".docx")

_GUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "qualcode.refi-qda")
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


@dataclass
class ExportResult:
    """What an export wrote: the file, how many segments it holds, notes for the analyst."""

    path: Path
    segments: int
    left_out: int = 0
    messages: list[str] = field(default_factory=list)
    pseudonymised: str = ""  # what this export replaced, if it pseudonymised


def _replaced_since(pseudonymiser: Pseudonymiser | None, before: Counter[str]) -> str:
    if pseudonymiser is None:
        return ""
    return pseudonymiser.summary(pseudonymiser.counts - before)


def theme_color(codebook: Codebook, theme_id: str) -> str:
    """The theme's own colour from the codebook, else one of PALETTE by its place."""
    return codebook.get(theme_id).color or PALETTE[codebook.ids.index(theme_id) % len(PALETTE)]


# --------------------------------------------------------------------------- code matrix


def _int_or_text(value: str) -> int | str:
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def _matrix(coded: CodedTable) -> pd.DataFrame:
    frame, codebook = coded.frame, coded.codebook
    out = pd.DataFrame(index=frame.index)
    for column in PROVENANCE:
        if column in frame.columns:
            values = frame[column]
            out[column] = values.map(_int_or_text) if column.startswith("line_") else values
    skip = set(PROVENANCE) | set(PREDICTION_COLUMNS) | {"text", "coder", "labelled_at"}
    skip |= {MODEL_PREFIX + c for c in PREDICTION_COLUMNS}
    for column in frame.columns:
        if column not in skip and not column.startswith(("_", "p_")):
            out[column] = frame[column]
    if coded.kind == "labels" and coded.coders:
        out["coder"] = [
            "; ".join(dict.fromkeys(w for _, w in codings if w)) for codings in frame["_codings"]
        ]
    out["text"] = frame["text"]
    out["theme"] = frame["_themes"].map(";".join)
    out["theme_label"] = frame["_themes"].map(
        lambda ids: "; ".join(codebook.get(t).label for t in ids)
    )
    if coded.predictions:
        out["confidence"] = frame["_confidence"]
        out["needs_review"] = frame["_flagged"].map({True: "true", False: "false"})
        out["review_reason"] = frame["_reason"]
    for theme in codebook.themes:
        name = theme.label if theme.label not in out.columns else f"{theme.label} ({theme.id})"
        out[name] = frame["_themes"].map(lambda ids, t=theme.id: int(t in ids))
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------- workbook


def _summary_sheet(coded: CodedTable) -> pd.DataFrame:
    counts = count_themes(coded, coded.codebook, None)
    descriptions = {t.id: t.description for t in coded.codebook.themes}
    out = pd.DataFrame(
        {
            "Tema": counts["label"],
            "Theme": counts["label_en"],
            "Beskrivning": counts["theme"].map(descriptions).fillna(""),
            "Segment": counts["segments"],
            "Andel": counts["share"],
        }
    )
    if coded.predictions:
        out["Flaggade för granskning"] = counts["flagged"]
        out["Säkra (ej flaggade)"] = counts["unflagged"]
    out["id"] = counts["theme"].where(counts["theme"] != TOTAL, "")
    if coded.non_answers:  # as in the report: counted, not coded
        row = {"Tema": "Icke-svar", "Theme": "Non-answers", "Segment": coded.non_answers,
               "Beskrivning": "Svar som ”vet ej”, ”nej”, ”-”: räknade, inte kodade."}  # fmt: skip
        out = pd.concat([out, pd.DataFrame([row])], ignore_index=True).fillna({"id": ""})
    return out


def _theme_sheet(coded: CodedTable, matrix: pd.DataFrame, theme_id: str) -> pd.DataFrame:
    mask = coded.frame["_themes"].map(lambda ids: theme_id in ids).to_numpy()
    mine = matrix[mask].copy()
    codebook = coded.codebook
    if coded.predictions:
        mine["_score"] = theme_scores(coded, theme_id)[mask].to_numpy()
        mine = mine.sort_values("_score", ascending=False, kind="stable").drop(columns="_score")
    others = coded.frame["_themes"][mask].map(
        lambda ids: "; ".join(codebook.get(t).label for t in ids if t != theme_id)
    )
    columns = [c for c in (*PROVENANCE, "coder", "text") if c in mine.columns]
    columns += [c for c in ("confidence", "needs_review", "review_reason") if c in mine.columns]
    out = mine[columns].copy()
    out["other_themes"] = others.loc[mine.index].to_numpy()
    return out.reset_index(drop=True)


def write_workbook(
    table: pd.DataFrame | CodedTable,
    codebook: Codebook,
    path: str | os.PathLike[str],
    *,
    pseudonymiser: Pseudonymiser | None = None,
) -> ExportResult:
    """Write the coded segments as an Excel workbook (see the module docstring).

    ``table``: a predictions or labels table, or a :class:`CodedTable` read already."""
    before = Counter(pseudonymiser.counts) if pseudonymiser is not None else Counter()
    coded = as_coded(table, codebook, pseudonymiser=pseudonymiser)
    matrix = _matrix(coded)
    sheets: dict[str, pd.DataFrame] = {}
    sheets[sheet_name("Sammanfattning")] = _summary_sheet(coded)
    sheets[sheet_name("Alla segment", sheets)] = matrix
    for theme in codebook.themes:
        sheets[sheet_name(theme.label, sheets)] = _theme_sheet(coded, matrix, theme.id)
    path = Path(path)
    atomic_write_bytes(path, xlsx_bytes(sheets))
    return ExportResult(
        path=path,
        segments=len(coded.frame),
        pseudonymised=_replaced_since(pseudonymiser, before),
    )


# --------------------------------------------------------------------------- REFI-QDA


def qda_guid(kind: str, name: str) -> str:
    return str(uuid.uuid5(_GUID_NAMESPACE, f"{kind}/{name}"))


def xml_text(value: object) -> str:
    return _XML_INVALID.sub("", str(value))


def selection_note(confidence: float, flagged: bool, reason: object = "") -> str:
    """The description of a selection qualcode coded: its confidence, and its review flag
    with the reason."""
    note = f"qualcode: säkerhet (confidence) {confidence:.2f}"
    if flagged:
        reason = str(reason or "").strip()
        note += "; flaggad för granskning (needs review)" + (f": {reason}" if reason else "")
    return note


def source_bytes(text: str) -> bytes:
    """A source document as every REFI-QDA client reads it the same way: UTF-8 without BOM,
    ``\\n`` line ends, and characters XML cannot hold replaced one for one (a page break by a
    line end, other controls by a space), so offsets counted in ``text`` stay exact."""
    text = text.replace("\x0c", "\n").replace("\x0b", "\n")
    return _XML_INVALID.sub(" ", text).encode("utf-8")


def find_sources(
    paths: Sequence[str | os.PathLike[str]],
    documents: Sequence[str] = (),
    *,
    near: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Path]:
    """Source documents by file name: from ``paths`` (files, or folders searched
    recursively), else the ``documents`` that stand directly in one of the ``near`` folders."""
    found: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            candidates = [path]
        else:
            raise QualcodeError(
                f"--sources {str(path)!r} not found; give the folder or files of the "
                "documents that were segmented."
            )
        for candidate in candidates:
            if candidate.suffix.lower() in DOCUMENT_SUFFIXES:
                found.setdefault(candidate.name, candidate)
    if not paths:
        for document in documents:
            if Path(document).suffix.lower() not in DOCUMENT_SUFFIXES:
                continue
            for folder in near:
                candidate = Path(folder) / Path(document).name
                if candidate.is_file():
                    found[document] = candidate
                    break
    return found


def _laid_out(rows: pd.DataFrame) -> tuple[str, list[tuple[int, int]]]:
    """Segments one per paragraph: the text and each segment's offsets."""
    parts, spans, position = [], [], 0
    for text in rows["text"]:
        if parts:
            position += 2
        spans.append((position, position + len(text)))
        parts.append(text)
        position += len(text)
    return "\n\n".join(parts), spans


def _located(
    document: DocumentText, rows: pd.DataFrame, original_texts: pd.Series
) -> list[tuple[int, int]] | None:
    """Each segment's span in ``document``: at its recorded lines, or, for rows without them
    (labels from the labeller, an import or a review), found by its words in the text."""
    spans = []
    for (_, row), text in zip(rows.iterrows(), original_texts):
        try:
            start, end = int(row["line_start"]), int(row["line_end"])
        except (KeyError, ValueError):
            span = document.find(text)
        else:
            span = document.span(start, end, text)
        if span is None:
            return None
        spans.append(span)
    return spans


def _document_texts(
    coded: CodedTable,
    sources: dict[str, Path],
    pseudonymiser: Pseudonymiser | None,
    messages: list[str],
) -> dict[str, tuple[str, list[tuple[int, int]], str]]:
    """Per document: its plain text, each segment's (start, end) in it, and how it was made."""
    frame = coded.frame
    out = {}
    laid_out, changed = [], []
    for document, rows in frame.groupby("_document", sort=False):
        path = sources.get(document)
        spans = None
        if path is not None:
            doc = DocumentText.read(path)
            spans = _located(doc, rows, rows["_original_text"])
            if spans is None:
                changed.append(document)
        if spans is None:
            if path is None:
                laid_out.append(document)
            text, spans = _laid_out(rows)
            out[document] = (text, spans, "laid out")
            continue
        text = doc.text
        if pseudonymiser is not None:
            text, offsets = pseudonymiser.replace_with_offsets(text)
            spans = [(offsets.start(a), offsets.end(b)) for a, b in spans]
        out[document] = (text, spans, "source")
    if changed:
        messages.append(
            f"{len(changed)} source document(s) do not hold their segments at the recorded "
            f"lines (changed since segmenting?): {', '.join(map(repr, changed[:5]))}; their "
            "segments are laid out one per paragraph instead."
        )
    missing = [d for d in laid_out if Path(d).suffix.lower() in DOCUMENT_SUFFIXES]
    if missing:
        messages.append(
            f"{len(missing)} document(s) not found ({', '.join(map(repr, missing[:5]))}): their "
            "segments are laid out one per paragraph; give the segmented documents with "
            "--sources to code them in their own text."
        )
    return out


def _cases(project: ET.Element, coded: CodedTable) -> None:
    """A survey's respondents as REFI-QDA Cases with their columns (Kommun, Roll, …) as text
    Variables, each Case referring to its answer's selection, so NVivo / ATLAS.ti users can
    filter by them. Documents without such columns get none."""
    columns = respondent_columns(coded)
    if not columns:
        return
    frame = coded.frame
    variables = ET.SubElement(project, "Variables")
    variable_guids = {}
    for column in columns:
        variable_guids[column] = qda_guid("variable", column)
        ET.SubElement(
            variables,
            "Variable",
            {"guid": variable_guids[column], "name": xml_text(column), "typeOfVariable": "Text"},
        )
    # A case is a respondent: one spreadsheet row (its answer may be split into sentences),
    # named by the first column whose values name every row once (such as Respondent).
    case_of = frame["_document"] + "\x1f" + frame.get("line_start", frame["_key"]).astype(str)
    firsts = frame.groupby(case_of, sort=False).first()
    naming = next(
        (c for c in columns if firsts[c].str.strip().ne("").all() and firsts[c].is_unique), None
    )
    cases = ET.SubElement(project, "Cases")
    for case, rows in frame.groupby(case_of, sort=False):
        first = rows.iloc[0]
        name = (
            str(first[naming])
            if naming
            else f"{first['_document']} rad {first.get('line_start', '')}"
        )
        element = ET.SubElement(
            cases, "Case", {"guid": qda_guid("case", case), "name": xml_text(name)}
        )
        for column in columns:
            value = ET.SubElement(element, "VariableValue")
            ET.SubElement(value, "VariableRef", {"targetGUID": variable_guids[column]})
            ET.SubElement(value, "TextValue").text = xml_text(str(first[column]))
        for key in rows["_key"]:
            ET.SubElement(element, "SelectionRef", {"targetGUID": qda_guid("selection", key)})


def _qdpx_bytes(
    coded: CodedTable,
    *,
    sources: dict[str, Path],
    pseudonymiser: Pseudonymiser | None,
    description: str,
    messages: list[str],
) -> bytes:
    codebook = coded.codebook
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    qualcode_user = qda_guid("user", "qualcode")
    project = ET.Element(
        "Project",
        {
            "xmlns": QDA_NAMESPACE,
            "name": xml_text(codebook.name),
            "origin": "qualcode",
            "creatingUserGUID": qualcode_user,
            "creationDateTime": now,
        },
    )
    users = ET.SubElement(project, "Users")
    user_guids = {"qualcode": qualcode_user}
    ET.SubElement(users, "User", {"guid": qualcode_user, "name": "qualcode"})
    for coder in coded.coders:
        if coder not in user_guids:
            user_guids[coder] = qda_guid("user", coder)
            ET.SubElement(users, "User", {"guid": user_guids[coder], "name": xml_text(coder)})

    codes = ET.SubElement(ET.SubElement(project, "CodeBook"), "Codes")
    code_guids = {}
    for theme in codebook.themes:
        code_guids[theme.id] = qda_guid("code", theme.id)
        code = ET.SubElement(
            codes,
            "Code",
            {
                "guid": code_guids[theme.id],
                "name": xml_text(theme.label),
                "isCodable": "true",
                "color": theme_color(codebook, theme.id),
            },
        )
        english = f"\n\nEnglish: {theme.label_en}" if theme.label_en else ""
        ET.SubElement(code, "Description").text = xml_text(
            f"{theme.description}{english}\nqualcode id: {theme.id}"
        )

    _cases(project, coded)
    sources_element = ET.SubElement(project, "Sources")
    documents = _document_texts(coded, sources, pseudonymiser, messages)
    files: dict[str, str] = {}
    for document, rows in coded.frame.groupby("_document", sort=False):
        text, spans, how = documents[document]
        source_guid = qda_guid("source", document)
        source = ET.SubElement(
            sources_element,
            "TextSource",
            {
                "guid": source_guid,
                "name": xml_text(document),
                "plainTextPath": f"internal://{source_guid}.txt",
                "creatingUser": qualcode_user,
                "creationDateTime": now,
            },
        )
        if how == "laid out":
            ET.SubElement(
                source, "Description"
            ).text = "qualcode: the coded segments of this document, one per paragraph."
        for (_, row), (start, end) in zip(rows.iterrows(), spans):
            selection = ET.SubElement(
                source,
                "PlainTextSelection",
                {
                    "guid": qda_guid("selection", row["_key"]),
                    "name": xml_text(row.get("segment_id", "") or row["text"][:60]),
                    "startPosition": str(start),
                    "endPosition": str(end),
                    "creatingUser": qualcode_user,
                    "creationDateTime": now,
                },
            )
            if coded.predictions:
                note = selection_note(row["_confidence"], row["_flagged"], row["_reason"])
                ET.SubElement(selection, "Description").text = xml_text(note)
            elif str(row.get("note", "")).strip():  # the coder's note on the answer
                ET.SubElement(selection, "Description").text = xml_text(str(row["note"]).strip())
            for theme_id, who in dict.fromkeys(row["_codings"]):
                coding = ET.SubElement(
                    selection,
                    "Coding",
                    {
                        "guid": qda_guid("coding", f"{row['_key']}/{theme_id}/{who}"),
                        "creatingUser": user_guids.get(who, qualcode_user),
                        "creationDateTime": now,
                    },
                )
                ET.SubElement(coding, "CodeRef", {"targetGUID": code_guids[theme_id]})
        files[source_guid] = text
    if description:
        ET.SubElement(project, "Description").text = xml_text(description)

    ET.indent(project, space="  ")
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(project, "unicode")).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("project.qde", xml)
        for source_guid, text in files.items():
            archive.writestr(f"sources/{source_guid}.txt", source_bytes(text))
    return buffer.getvalue()


def write_qdpx(
    table: pd.DataFrame | CodedTable,
    codebook: Codebook,
    path: str | os.PathLike[str],
    *,
    sources: Sequence[str | os.PathLike[str]] = (),
    near: Sequence[str | os.PathLike[str]] = (),
    accepted_only: bool = False,
    pseudonymiser: Pseudonymiser | None = None,
    description: str = "",
) -> ExportResult:
    """Write a REFI-QDA project (``.qdpx``) coding every segment with its theme(s).

    ``sources``: the segmented documents (files or folders), matched by file name to the
    ``document`` column; each segment is then selected at its offsets in its document's text.
    Without ``sources``, documents are looked for by name in the ``near`` folders.
    ``accepted_only`` leaves out segments flagged for review. ``table`` may be a
    :class:`CodedTable` read already. For labels, each coder is a
    ``User`` who creates their codings.
    """
    before = Counter(pseudonymiser.counts) if pseudonymiser is not None else Counter()
    coded = as_coded(table, codebook, pseudonymiser=pseudonymiser)
    left_out = 0
    if accepted_only:
        if not coded.predictions:
            raise QualcodeError(
                "--accepted-only needs a predictions file (with needs_review); this is a "
                "labels file, where every segment is accepted."
            )
        left_out = int(coded.frame["_flagged"].sum())
        accepted = coded.frame[~coded.frame["_flagged"]].reset_index(drop=True)
        coded = dataclasses.replace(coded, frame=accepted)
        if coded.frame.empty:
            raise QualcodeError(
                "every segment is flagged for review, so --accepted-only leaves nothing to "
                "export; review them first or leave out --accepted-only."
            )
    messages: list[str] = []
    data = _qdpx_bytes(
        coded,
        sources=find_sources(sources, list(dict.fromkeys(coded.frame["_document"])), near=near),
        pseudonymiser=pseudonymiser,
        description=description,
        messages=messages,
    )
    path = Path(path)
    atomic_write_bytes(path, data)
    if left_out:
        messages.append(f"{left_out} segment(s) flagged for review left out (--accepted-only).")
    return ExportResult(
        path=path,
        segments=len(coded.frame),
        left_out=left_out,
        messages=messages,
        pseudonymised=_replaced_since(pseudonymiser, before),
    )
