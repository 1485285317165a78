"""Step 6: report what was coded — counts, charts, quotes and exports for other QDA tools.

Input is a predictions table from ``qualcode classify`` (it has a ``confidence`` column and a
``needs_review`` flag) or a labels table (``text``, ``theme`` with ``;``-separated themes, maybe
``coder``). :func:`report` writes into one directory (every file atomically):

``theme_counts.csv``
    one row per codebook theme (codebook order) and a ``total`` row: ``theme, label, label_en,
    segments, share``, for predictions ``flagged, unflagged``, then one column per group of
    ``by`` (and ``<group> (unflagged)`` for predictions). A segment with several themes counts
    once for each, so ``share`` is the share of all codings (for single-theme data: of the
    segments) and the shares of the themes sum to 1.
``themes.png``, ``themes_by_<by>.png``
    bar charts with the Swedish labels (flagged segments as the lighter part of each bar); the
    second only when there is more than one group. Skipped if matplotlib is not installed.
``report.md``
    a Swedish/English report: totals, the tables, and per theme its description and the top
    quotes with provenance.
``codes.qdpx``
    a REFI-QDA project (``project.qde`` + ``sources/<guid>.txt``, one source per document) that
    NVivo, ATLAS.ti, MAXQDA and QualCoder import. GUIDs are uuid5 of the theme ids, documents and
    segment ids, so re-exports are stable.
``coded_segments.xlsx``
    one row per segment: provenance, text, themes, and a 0/1 column per theme (a code matrix).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import math
import os
import re
import textwrap
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pandas as pd

from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.tables import atomic_write_bytes, atomic_write_text, spreadsheet_rows, write_table

__all__ = [
    "QDA_NAMESPACE",
    "ReportResult",
    "exemplar_quotes",
    "report",
    "theme_counts",
    "write_qdpx",
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
TOTAL = "total"
NONE_GROUP = "(ingen)"
MAX_CHART_GROUPS = 8
MAX_TABLE_GROUPS = 12

_GUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "qualcode.refi-qda")
_TRUE = {"true", "1", "yes", "ja", "sant"}
_FALSE = {"false", "0", "no", "nej", "falskt", ""}
_PREDICTION_ONLY = {
    "theme",
    "themes",
    "confidence",
    "second_theme",
    "margin",
    "needs_review",
    "review_reason",
}
_PROVENANCE = ("segment_id", "document", "section", "line_start", "line_end")
_BY_NAMES = {"document": ("dokument", "document"), "section": ("avsnitt", "section")}
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_MD_INLINE = re.compile(r"([\\`*\[\]<>|~]|(?<!\w)_|_(?!\w))")
_MD_LINE_START = re.compile(r"^(\s*)([#>+-]|=(?==*\s*$)|\d+(?=[.)]))")


# --------------------------------------------------------------------------- reading the table


@dataclass
class _Coded:
    """One row per segment, in reading order, with the input columns (as text) and
    ``_themes`` (ids), ``_codings`` ((theme, coder) pairs), ``_confidence``, ``_flagged``,
    ``_index`` (first row in the file) and ``_key`` (segment id or a hash of the text)."""

    frame: pd.DataFrame
    kind: str  # "predictions" or "labels"
    coders: list[str]

    @property
    def predictions(self) -> bool:
        return self.kind == "predictions"


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    if name in table.columns:
        return table[name].fillna("").astype(str)
    return pd.Series([""] * len(table), index=table.index, dtype=str)


def _number(value: object) -> float:
    text = str(value).strip().replace(",", ".")
    if not text:
        return math.nan
    return float(text)


def _parse_confidence(values: pd.Series, rows: list[int]) -> list[float]:
    out = []
    for value, row in zip(values, rows):
        try:
            out.append(_number(value))
        except ValueError:
            raise QualcodeError(
                f"row {row}: confidence {str(value)!r} is not a number; the predictions file "
                "from `qualcode classify` has numbers such as 0.87 there."
            ) from None
    return out


def _parse_flags(values: pd.Series, rows: list[int]) -> list[bool]:
    out = []
    for value, row in zip(values, rows):
        key = str(value).strip().lower()
        if key in _TRUE:
            out.append(True)
        elif key in _FALSE:
            out.append(False)
        else:
            raise QualcodeError(
                f"row {row}: needs_review {str(value)!r} is neither true nor false; "
                "fix the cell (true/false)."
            )
    return out


def _segment_key(segment_id: str, document: str, section: str, text: str) -> str:
    if segment_id.strip():
        return segment_id.strip()
    digest = hashlib.sha1(f"{document}\n{section}\n{text}".encode()).hexdigest()[:16]
    return f"text:{digest}"


def _line_number(value: str) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        return math.inf


def _prepare(table: pd.DataFrame, codebook: Codebook, *, what: str = "input") -> _Coded:
    """Validate ``table`` and merge it into one row per segment (see :class:`_Coded`)."""
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise QualcodeError(f"{what} has no rows; give a predictions or labels file with data.")
    missing = [c for c in ("text", "theme") if c not in table.columns]
    if missing:
        raise QualcodeError(
            f"{what} is missing column(s) {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(map(repr, map(str, table.columns)))}. A predictions file from "
            "`qualcode classify` or a labels file (text, theme) is needed."
        )
    kind = "predictions" if "confidence" in table.columns else "labels"
    rows = spreadsheet_rows(table)
    theme_cells = _column(table, "theme")
    if kind == "predictions" and "themes" in table.columns:  # multi-label model
        multi = _column(table, "themes")
        theme_cells = multi.where(multi.str.strip() != "", theme_cells)
    parsed = codebook.check_themes(theme_cells, what=f"{what} column 'theme'", rows=rows)
    text = _column(table, "text")
    frame = table.fillna("").astype(str).copy()
    frame["_themes"] = parsed
    frame["_index"] = range(len(frame))
    if kind == "predictions":
        frame["_confidence"] = _parse_confidence(_column(table, "confidence"), rows)
        frame["_flagged"] = _parse_flags(_column(table, "needs_review"), rows)
    else:
        frame["_confidence"] = math.nan
        frame["_flagged"] = False
    coder = _column(table, "coder").str.strip()
    frame["_coder"] = coder.where(coder != "", "qualcode" if kind == "predictions" else "")
    keep = [bool(ids) and bool(t.strip()) for ids, t in zip(parsed, text)]
    frame = frame[keep].copy()
    if frame.empty:
        raise QualcodeError(
            f"{what} has no coded rows (every 'theme' or 'text' cell is empty); "
            "label some segments or give the predictions file."
        )
    frame["_key"] = [
        _segment_key(*values)
        for values in zip(
            _column(frame, "segment_id"),
            _column(frame, "document"),
            _column(frame, "section"),
            frame["text"],
        )
    ]
    # For a (segment, coder) pair the last row counts (the labeller appends; undo rewrites).
    frame = frame.drop_duplicates(["_key", "_coder"], keep="last")
    if frame["_key"].is_unique:
        frame["_codings"] = [
            [(theme_id, who) for theme_id in ids]
            for ids, who in zip(frame["_themes"], frame["_coder"])
        ]
    else:  # several coders: one row per segment, the union of their themes
        merged = []
        for _, group in frame.groupby("_key", sort=False):
            row = group.iloc[-1].copy()
            themes: list[str] = []
            codings: list[tuple[str, str]] = []
            for ids, who in zip(group["_themes"], group["_coder"]):
                themes += [t for t in ids if t not in themes]
                codings += [(t, who) for t in ids]
            row["_themes"], row["_codings"] = themes, codings
            row["_index"] = int(group["_index"].min())
            merged.append(row)
        frame = pd.DataFrame(merged).astype({"_flagged": bool, "_confidence": float, "_index": int})
    frame = frame.reset_index(drop=True)
    # Reading order: documents in order of appearance, then line numbers, then file order.
    doc_rank = {d: i for i, d in enumerate(dict.fromkeys(_column(frame, "document")))}
    frame["_order_key"] = list(
        zip(
            [doc_rank[d] for d in _column(frame, "document")],
            [_line_number(v) for v in _column(frame, "line_start")],
            frame["_index"],
        )
    )
    frame = frame.sort_values("_order_key", kind="stable").reset_index(drop=True)
    coders = [c for c in dict.fromkeys(frame["_coder"]) if c] if kind == "labels" else []
    return _Coded(frame=frame, kind=kind, coders=coders)


def _resolve_by(coded: _Coded, by: str | None) -> str | None:
    if by is None:
        return "document" if "document" in coded.frame.columns else None
    if by not in coded.frame.columns or by.startswith("_"):
        columns = [c for c in coded.frame.columns if not str(c).startswith("_")]
        raise QualcodeError(
            f"--by column {by!r} is not in the input; columns: {', '.join(map(repr, columns))}."
        )
    return by


def _group_values(coded: _Coded, by: str) -> pd.Series:
    return coded.frame[by].astype(str).str.strip().replace("", NONE_GROUP)


def _groups(coded: _Coded, by: str | None) -> list[str]:
    return list(dict.fromkeys(_group_values(coded, by))) if by else []


def _fixed_columns(coded: _Coded) -> list[str]:
    fixed = ["theme", "label", "label_en", "segments", "share"]
    return fixed + ["flagged", "unflagged"] if coded.predictions else fixed


def _group_names(coded: _Coded, by: str | None, groups: list[str]) -> dict[str, str]:
    """Column name per group: the value itself, unless it clashes with a fixed column."""
    fixed = _fixed_columns(coded)
    return {g: g if g not in fixed else f"{by}: {g}" for g in groups}


# --------------------------------------------------------------------------- counts


def _counts(coded: _Coded, codebook: Codebook, by: str | None) -> pd.DataFrame:
    frame = coded.frame
    groups = _groups(coded, by)
    group_of = _group_values(coded, by) if by else None
    names = _group_names(coded, by, groups)
    has = {t.id: frame["_themes"].map(lambda ids, t=t.id: t in ids) for t in codebook.themes}
    total_codings = sum(int(mask.sum()) for mask in has.values())
    rows = []
    for theme in codebook.themes:
        mask = has[theme.id]
        row: dict[str, Any] = {
            "theme": theme.id,
            "label": theme.label,
            "label_en": theme.label_en,
            "segments": int(mask.sum()),
            "share": round(int(mask.sum()) / total_codings, 4) if total_codings else 0.0,
        }
        if coded.predictions:
            row["flagged"] = int((mask & frame["_flagged"]).sum())
            row["unflagged"] = row["segments"] - row["flagged"]
        rows.append(row)
    total: dict[str, Any] = {
        "theme": TOTAL,
        "label": "Totalt",
        "label_en": "Total",
        "segments": len(frame),
        "share": 1.0,
    }
    if coded.predictions:
        total["flagged"] = int(frame["_flagged"].sum())
        total["unflagged"] = len(frame) - total["flagged"]
    rows.append(total)
    table = pd.DataFrame(rows)
    for group in groups:
        in_group = group_of == group
        masks = [has[t.id] & in_group for t in codebook.themes] + [in_group]
        table[names[group]] = [int(m.sum()) for m in masks]
        if coded.predictions:
            table[f"{names[group]} (unflagged)"] = [
                int((m & ~frame["_flagged"]).sum()) for m in masks
            ]
    return table


def theme_counts(
    table: pd.DataFrame, codebook: Codebook, *, by: str | None = "document"
) -> pd.DataFrame:
    """Segments per theme (codebook order, then a ``total`` row) and per group of ``by``.

    Columns: ``theme, label, label_en, segments, share`` (+ ``flagged, unflagged`` for
    predictions), then one column per value of ``by`` (+ ``<value> (unflagged)``). ``by=None``
    groups by ``document`` when the table has it, else not at all.
    """
    coded = _prepare(table, codebook)
    return _counts(coded, codebook, _resolve_by(coded, by))


# --------------------------------------------------------------------------- exemplars


def _score(row: pd.Series, theme_id: str) -> float:
    value = row.get(f"p_{theme_id}", "")
    try:
        score = _number(value)
    except ValueError:
        score = math.nan
    if math.isnan(score) and row["_themes"] and row["_themes"][0] == theme_id:
        score = row["_confidence"]
    return score


def _exemplars(coded: _Coded, codebook: Codebook, n: int, include_flagged: bool) -> pd.DataFrame:
    if n < 0:
        raise QualcodeError(f"--exemplars must be 0 or more, not {n}.")
    frame = coded.frame
    rows = []
    for theme in codebook.themes:
        mine = frame[frame["_themes"].map(lambda ids, t=theme.id: t in ids)]
        if coded.predictions and not include_flagged:
            mine = mine[~mine["_flagged"]]
        if mine.empty:
            continue
        if coded.predictions:
            mine = mine.assign(_score=[_score(r, theme.id) for _, r in mine.iterrows()])
            mine = mine.sort_values(
                ["_score", "_index"], ascending=[False, True], na_position="last", kind="stable"
            )
        else:
            mine = mine.sort_values("_index", kind="stable").assign(_score=math.nan)
        for rank, (_, row) in enumerate(mine.head(n).iterrows(), start=1):
            rows.append(
                {
                    "theme": theme.id,
                    "rank": rank,
                    "text": row["text"],
                    "confidence": row["_score"],
                    "needs_review": bool(row["_flagged"]),
                    **{c: str(row.get(c, "")) for c in _PROVENANCE},
                    "coder": "; ".join(dict.fromkeys(w for _, w in row["_codings"] if w))
                    if not coded.predictions
                    else "",
                }
            )
    columns = ["theme", "rank", "text", "confidence", "needs_review", *_PROVENANCE, "coder"]
    return pd.DataFrame(rows, columns=columns)


def exemplar_quotes(
    table: pd.DataFrame, codebook: Codebook, *, n: int = 3, include_flagged: bool = False
) -> pd.DataFrame:
    """The top ``n`` quotes per theme, codebook order, with provenance.

    Predictions: highest probability for the theme (``p_<theme>``, else ``confidence``) first,
    flagged segments left out unless ``include_flagged``. Labels: the first ``n`` in file order.
    Columns: ``theme, rank, text, confidence, needs_review, segment_id, document, section,
    line_start, line_end, coder``.
    """
    return _exemplars(_prepare(table, codebook), codebook, n, include_flagged)


# --------------------------------------------------------------------------- REFI-QDA export


def _guid(kind: str, name: str) -> str:
    return str(uuid.uuid5(_GUID_NAMESPACE, f"{kind}/{name}"))


def _xml_text(value: object) -> str:
    return _XML_INVALID.sub("", str(value))


def _theme_color(codebook: Codebook, theme_id: str) -> str:
    return PALETTE[codebook.ids.index(theme_id) % len(PALETTE)]


def _qdpx_bytes(coded: _Coded, codebook: Codebook, *, description: str = "") -> bytes:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    qualcode_user = _guid("user", "qualcode")
    project = ET.Element(
        "Project",
        {
            "xmlns": QDA_NAMESPACE,
            "name": _xml_text(codebook.name),
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
            user_guids[coder] = _guid("user", coder)
            ET.SubElement(users, "User", {"guid": user_guids[coder], "name": _xml_text(coder)})

    codes = ET.SubElement(ET.SubElement(project, "CodeBook"), "Codes")
    code_guids = {}
    for theme in codebook.themes:
        code_guids[theme.id] = _guid("code", theme.id)
        code = ET.SubElement(
            codes,
            "Code",
            {
                "guid": code_guids[theme.id],
                "name": _xml_text(theme.label),
                "isCodable": "true",
                "color": _theme_color(codebook, theme.id),
            },
        )
        english = f"\n\nEnglish: {theme.label_en}" if theme.label_en else ""
        ET.SubElement(code, "Description").text = _xml_text(
            f"{theme.description}{english}\nqualcode id: {theme.id}"
        )

    sources_element = ET.SubElement(project, "Sources")
    texts: dict[str, str] = {}
    frame = coded.frame
    documents = _column(frame, "document").str.strip().replace("", "segments")
    for document in dict.fromkeys(documents):
        mine = frame[documents == document]
        source_guid = _guid("source", document)
        source = ET.SubElement(
            sources_element,
            "TextSource",
            {
                "guid": source_guid,
                "name": _xml_text(document),
                "plainTextPath": f"internal://{source_guid}.txt",
                "creatingUser": qualcode_user,
                "creationDateTime": now,
            },
        )
        parts: list[str] = []
        position = 0
        for _, row in mine.iterrows():
            if parts:
                position += 2  # the blank line between segments
            text = str(row["text"])
            start, end = position, position + len(text)
            parts.append(text)
            position = end
            attributes = {
                "guid": _guid("selection", row["_key"]),
                "name": _xml_text(row.get("segment_id", "") or text[:60]),
                "startPosition": str(start),
                "endPosition": str(end),
                "creatingUser": qualcode_user,
                "creationDateTime": now,
            }
            selection = ET.SubElement(source, "PlainTextSelection", attributes)
            if coded.predictions:
                note = f"qualcode: säkerhet (confidence) {row['_confidence']:.2f}"
                if row["_flagged"]:
                    reason = str(row.get("review_reason", "")).strip()
                    note += "; flaggad för granskning (needs review)" + (
                        f": {reason}" if reason else ""
                    )
                ET.SubElement(selection, "Description").text = _xml_text(note)
            for theme_id, who in dict.fromkeys(row["_codings"]):
                coding = ET.SubElement(
                    selection,
                    "Coding",
                    {
                        "guid": _guid("coding", f"{row['_key']}/{theme_id}/{who}"),
                        "creatingUser": user_guids.get(who, qualcode_user),
                        "creationDateTime": now,
                    },
                )
                ET.SubElement(coding, "CodeRef", {"targetGUID": code_guids[theme_id]})
        texts[source_guid] = "\n\n".join(parts)
    if description:
        ET.SubElement(project, "Description").text = _xml_text(description)

    ET.indent(project, space="  ")
    xml = ('<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(project, "unicode")).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("project.qde", xml)
        for source_guid, text in texts.items():
            archive.writestr(f"sources/{source_guid}.txt", text.encode("utf-8"))
    return buffer.getvalue()


def write_qdpx(
    table: pd.DataFrame,
    codebook: Codebook,
    path: str | os.PathLike[str],
    *,
    description: str = "",
) -> Path:
    """Write a REFI-QDA project (``.qdpx``) coding every segment with its theme(s).

    One ``TextSource`` per document: its segments in reading order joined by blank lines, each a
    ``PlainTextSelection`` (character offsets into that text) with a ``Coding`` per theme. For
    predictions the selection's description gives the confidence and any review flag; for labels
    each coder is a ``User`` and creates their codings. GUIDs are uuid5 of the ids, so a
    re-export of the same data has the same GUIDs.
    """
    path = Path(path)
    atomic_write_bytes(
        path, _qdpx_bytes(_prepare(table, codebook), codebook, description=description)
    )
    return path


# --------------------------------------------------------------------------- code matrix


def _matrix(coded: _Coded, codebook: Codebook) -> pd.DataFrame:
    frame = coded.frame
    out = pd.DataFrame(index=frame.index)
    for column in _PROVENANCE:
        if column in frame.columns:
            values = frame[column]
            out[column] = values.map(_int_or_text) if column.startswith("line_") else values
    skip = set(_PROVENANCE) | _PREDICTION_ONLY | {"text", "coder", "labelled_at"}
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
    for theme in codebook.themes:
        name = theme.label if theme.label not in out.columns else f"{theme.label} ({theme.id})"
        out[name] = frame["_themes"].map(lambda ids, t=theme.id: int(t in ids))
    return out.reset_index(drop=True)


def _int_or_text(value: str) -> int | str:
    text = str(value).strip()
    return int(text) if text.isdigit() else text


# --------------------------------------------------------------------------- charts


def _wrap(text: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _by_name(by: str) -> tuple[str, str]:
    return _BY_NAMES.get(by, (by, by))


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=150, layout="constrained")
    figure.patch.set_facecolor("white")
    return figure


def _style_axes(axes: Any) -> None:
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    axes.tick_params(axis="y", length=0, labelsize=10)
    axes.tick_params(axis="x", labelsize=9, colors="#555555")
    axes.xaxis.grid(True, color="#E5E5E5", linewidth=0.8)
    axes.set_axisbelow(True)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, facecolor="white", metadata={"Software": None})
    return buffer.getvalue()


def _themes_chart(
    counts: pd.DataFrame, coded: _Coded, source_name: str, codebook: Codebook
) -> bytes:
    themes = counts[counts["theme"] != TOTAL].sort_values("segments", ascending=True, kind="stable")
    total = counts[counts["theme"] == TOTAL].iloc[0]
    figure = _figure(9, 1.6 + 0.55 * len(themes))
    axes = figure.add_subplot()
    y = range(len(themes))
    labels = [_wrap(label) for label in themes["label"]]
    dark, light = "#2F5F8F", "#A9C6E3"
    if coded.predictions:
        axes.barh(y, themes["unflagged"], color=dark, height=0.62, label="Säkra (ej flaggade)")
        axes.barh(
            y,
            themes["flagged"],
            left=themes["unflagged"],
            color=light,
            height=0.62,
            label="Flaggade för granskning",
        )
        axes.legend(loc="lower right", frameon=False, fontsize=9)
    else:
        axes.barh(y, themes["segments"], color=dark, height=0.62)
    peak = max(int(themes["segments"].max()), 1)
    for i, (_, row) in enumerate(themes.iterrows()):
        note = f"{row['segments']}  ({_percent(row['share'])})"
        if coded.predictions and row["flagged"]:
            note += f" · {row['flagged']} {'flaggad' if row['flagged'] == 1 else 'flaggade'}"
        axes.text(row["segments"] + peak * 0.01, i, note, va="center", fontsize=9, color="#333333")
    axes.set_yticks(list(y), labels)
    axes.set_xlim(0, peak * (1.4 if coded.predictions else 1.2))
    axes.set_xlabel("Antal segment", fontsize=9, color="#555555")
    _style_axes(axes)
    subtitle = f"{total['segments']} segment"
    codings = int(themes["segments"].sum())
    if codings > int(total["segments"]):
        subtitle += f" med {codings} kodningar (andel av kodningarna)"
    if coded.predictions:
        subtitle += f", varav {total['flagged']} flaggade för granskning"
    if source_name:
        subtitle += f" · {source_name}"
    figure.suptitle(f"Teman – {codebook.name}", fontsize=13, fontweight="bold", x=0.02, ha="left")
    axes.set_title(subtitle, fontsize=9, color="#555555", loc="left")
    return _png(figure)


def _groups_chart(
    counts: pd.DataFrame,
    coded: _Coded,
    groups: list[str],
    names: dict[str, str],
    by: str,
    source_name: str,
) -> bytes:
    themes = counts[counts["theme"] != TOTAL].sort_values("segments", ascending=True, kind="stable")
    totals = counts[counts["theme"] == TOTAL].iloc[0]
    ranked = sorted(groups, key=lambda g: -int(totals[names[g]]))
    shown = [g for g in groups if g in ranked[:MAX_CHART_GROUPS]]
    rest = [g for g in groups if g not in shown]
    series = [(g, themes[names[g]].to_numpy()) for g in shown]
    if rest:
        series.append((f"Övriga ({len(rest)})", sum(themes[names[g]].to_numpy() for g in rest)))
    figure = _figure(9, 2.2 + 0.55 * len(themes) + 0.2 * math.ceil(len(series) / 3))
    axes = figure.add_subplot()
    y = list(range(len(themes)))
    left = [0] * len(themes)
    colors = list(PALETTE[:MAX_CHART_GROUPS]) + ["#CCCCCC"]
    for (name, values), color in zip(series, colors):
        axes.barh(
            y,
            values,
            left=left,
            color=color,
            height=0.62,
            label=_short(name),
            edgecolor="white",
            linewidth=0.6,
        )
        left = [a + int(b) for a, b in zip(left, values)]
    peak = max(max(left), 1)
    for i, value in enumerate(left):
        axes.text(value + peak * 0.01, i, str(value), va="center", fontsize=9, color="#333333")
    axes.set_yticks(y, [_wrap(label) for label in themes["label"]])
    axes.set_xlim(0, peak * 1.12)
    xlabel = "Antal segment" + (" (även flaggade)" if coded.predictions else "")
    axes.set_xlabel(xlabel, fontsize=9, color="#555555")
    _style_axes(axes)
    swedish, _ = _by_name(by)
    figure.suptitle(f"Teman per {swedish}", fontsize=13, fontweight="bold", x=0.02, ha="left")
    subtitle = f"{totals['segments']} segment i {len(groups)} grupper"
    axes.set_title(
        subtitle + (f" · {source_name}" if source_name else ""),
        fontsize=9,
        color="#555555",
        loc="left",
    )
    figure.legend(
        loc="outside lower center",
        ncols=min(3, len(series)),
        frameon=False,
        fontsize=8,
        title=swedish.capitalize(),
        title_fontsize=8,
    )
    return _png(figure)


# --------------------------------------------------------------------------- markdown


def _md(text: object) -> str:
    """Escape markdown in running text (one line)."""
    escaped = _MD_INLINE.sub(r"\\\1", " ".join(str(text).split()))
    # A leading "# " "- " "+ " or "1. " would make a heading or a list: escape it.
    return _MD_LINE_START.sub(
        lambda m: m.group(1) + (m.group(2) + "\\" if m.group(2).isdigit() else "\\" + m.group(2)),
        escaped,
    )


def _md_quote(text: str) -> list[str]:
    lines = [line for line in str(text).splitlines() if line.strip()] or [""]
    return [f"> {_md(line)}" for line in lines]


def _code_span(text: str) -> str:
    return "`" + str(text).replace("`", "'") + "`"


def _percent(share: float) -> str:
    return f"{share * 100:.1f} %".replace(".", ",")


def _provenance(row: pd.Series) -> str:
    parts = []
    if row.get("document"):
        parts.append(_md(row["document"]))
    if row.get("section"):
        parts.append(_md(row["section"]))
    start, end = str(row.get("line_start", "")).strip(), str(row.get("line_end", "")).strip()
    if start:
        parts.append(f"rad {start}" if end in ("", start) else f"rad {start}–{end}")
    if row.get("segment_id"):
        parts.append(_code_span(row["segment_id"]))
    if not math.isnan(float(row["confidence"])):
        parts.append(f"säkerhet {row['confidence'] * 100:.0f} %")
    if row.get("needs_review"):
        parts.append("flaggad")
    if row.get("coder"):
        parts.append(f"kodare {_md(row['coder'])}")
    return " · ".join(parts)


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], align: str) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _markdown(
    coded: _Coded,
    codebook: Codebook,
    counts: pd.DataFrame,
    exemplars: pd.DataFrame,
    *,
    by: str | None,
    groups: list[str],
    names: dict[str, str],
    charts: dict[str, str],
    source_name: str,
    include_flagged: bool,
    n: int,
) -> str:
    total = counts[counts["theme"] == TOTAL].iloc[0]
    themes = counts[counts["theme"] != TOTAL]
    kind = (
        "modellens klassificering · *model predictions*"
        if coded.predictions
        else "manuell kodning · *hand-coded labels*"
    )
    out = [f"# {_md(codebook.name)}", "", "Temarapport · *Theme report*", ""]
    facts = [
        ("Datum · *Date*", dt.date.today().isoformat()),
        ("Indata · *Input*", (_code_span(source_name) + " — " if source_name else "") + kind),
        ("Segment · *Segments*", str(total["segments"])),
    ]
    if coded.predictions:
        facts.append(
            (
                "Flaggade för granskning · *Flagged for review*",
                f"{total['flagged']} ({_percent(total['flagged'] / total['segments'])})",
            )
        )
    if coded.coders:
        facts.append(("Kodare · *Coders*", _md(", ".join(coded.coders))))
    if by:
        swedish, english = _by_name(by)
        facts.append(
            ("Grupperat efter · *Grouped by*", f"{_md(swedish)} · *{_md(english)}* ({len(groups)})")
        )
    facts.append(("Kodbok · *Codebook*", f"{_md(codebook.name)} ({len(codebook.themes)} teman)"))
    out += [f"- **{name}:** {value}" for name, value in facts] + [""]

    out += ["## Teman · *Themes*", ""]
    if "themes" in charts:
        out += [f"![Teman]({charts['themes']})", ""]
    header = ["Tema", "*Theme*", "Segment", "Andel"]
    align = "llrr"
    if coded.predictions:
        header += ["Flaggade", "Säkra"]
        align += "rr"
    rows = []
    for _, row in counts.iterrows():
        bold = row["theme"] == TOTAL
        cells = [
            _md(row["label"]),
            f"*{_md(row['label_en'])}*" if row["label_en"] else "",
            row["segments"],
            _percent(row["share"]),
        ]
        if coded.predictions:
            cells += [row["flagged"], row["unflagged"]]
        rows.append([f"**{c}**" if bold and str(c) else c for c in cells])
    out += _table(header, rows, align) + [""]
    if len(themes) and int(themes["segments"].sum()) > int(total["segments"]):
        out += [
            "Ett segment med flera teman räknas en gång per tema; andelen är andelen av alla "
            "kodningar. · *A segment with several themes counts once per theme; the share "
            "is the share of all codings.*",
            "",
        ]
    if coded.predictions:
        out += [
            "*Säkra* är segment som inte flaggats för granskning: modellens säkerhet nådde "
            "tröskeln för målträffsäkerheten. · *Unflagged segments reached the confidence "
            "threshold chosen for the target accuracy.*",
            "",
        ]

    if by and len(groups) > 1:
        swedish, english = _by_name(by)
        out += [f"## Per {_md(swedish)} · *By {_md(english)}*", ""]
        if "groups" in charts:
            out += [f"![Teman per {_md(swedish)}]({charts['groups']})", ""]
        shown = groups[:MAX_TABLE_GROUPS]
        header = ["Tema"] + [_md(_short(g, 30)) for g in shown]
        rows = []
        for _, row in counts.iterrows():
            cells: list[object] = [_md(row["label"])]
            for group in shown:
                cell = str(row[names[group]])
                if coded.predictions:
                    cell += f" ({row[names[group] + ' (unflagged)']})"
                cells.append(cell)
            rows.append(cells)
        out += _table(header, rows, "l" + "r" * len(shown)) + [""]
        if coded.predictions:
            out += ["Antal segment (varav säkra) · *segments (of which unflagged)*", ""]
        if len(groups) > len(shown):
            out += [f"{len(groups) - len(shown)} grupper till finns i `theme_counts.csv`.", ""]

    out += ["## Teman och citat · *Themes and quotes*", ""]
    if coded.predictions:
        out += [
            (
                "Citaten är de segment modellen är säkrast på"
                + ("" if include_flagged else ", bland dem som inte flaggats")
                + ". · *The quotes are the segments the model is most confident about"
                + ("" if include_flagged else ", among the unflagged ones")
                + ".*"
            ),
            "",
        ]
    else:
        out += [
            "Citaten är de första segmenten i filen. · *The quotes are the first segments "
            "in the file.*",
            "",
        ]
    for theme in codebook.themes:
        row = themes[themes["theme"] == theme.id].iloc[0]
        english = f" · *{_md(theme.label_en)}*" if theme.label_en else ""
        out += [f"### {_md(theme.label)}{english}", "", _md(theme.description), ""]
        summary = f"**{row['segments']} segment** ({_percent(row['share'])})"
        if coded.predictions:
            flagged = "flaggad" if row["flagged"] == 1 else "flaggade"
            summary += f", varav {row['flagged']} {flagged} för granskning"
        out += [summary + ".", ""]
        quotes = exemplars[exemplars["theme"] == theme.id]
        for _, quote in quotes.iterrows():
            out += _md_quote(quote["text"]) + [">", f"> — {_provenance(quote)}", ""]
        if n and quotes.empty and row["segments"]:
            out += [
                "*Inga säkra citat; alla segment med temat är flaggade för granskning "
                "(`--include-flagged` visar dem).*",
                "",
            ]
    out += [
        "## Filer · *Files*",
        "",
        "- `theme_counts.csv` — antal per tema och grupp · *counts per theme and group*",
        "- `coded_segments.xlsx` — alla segment med 0/1-kolumn per tema · *code matrix*",
        "- `codes.qdpx` — REFI-QDA-projekt för NVivo, ATLAS.ti, MAXQDA, QualCoder · "
        "*REFI-QDA project*",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- report


@dataclass
class ReportResult:
    """What :func:`report` wrote: ``paths`` by role, the counts table and any notes."""

    out_dir: Path
    paths: dict[str, Path]
    counts: pd.DataFrame
    kind: str
    segments: int
    flagged: int | None
    messages: list[str] = field(default_factory=list)


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", value).strip("_") or "group"


def report(
    table: pd.DataFrame,
    codebook: Codebook,
    out_dir: str | os.PathLike[str],
    *,
    by: str | None = "document",
    exemplars: int = 3,
    include_flagged: bool = False,
    source_name: str = "",
) -> ReportResult:
    """Write the report files (see the module docstring) into ``out_dir`` (created).

    ``table`` is a predictions or labels table (every cell a string, as
    :func:`qualcode.tables.read_table` returns it); ``by`` is ``document``, ``section`` or any
    metadata column (``None``: ``document`` when present); ``source_name`` names the input file
    in the report. Bad input raises :class:`QualcodeError` before anything is written.
    """
    coded = _prepare(table, codebook, what=repr(source_name) if source_name else "input")
    by = _resolve_by(coded, by)
    counts = _counts(coded, codebook, by)
    quotes = _exemplars(coded, codebook, exemplars, include_flagged)
    groups = _groups(coded, by)
    names = _group_names(coded, by, groups)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise QualcodeError(f"output {str(out)!r} is a file; give a directory for the report.")
    messages: list[str] = []
    paths: dict[str, Path] = {}

    write_table(counts, out / "theme_counts.csv")
    paths["counts"] = out / "theme_counts.csv"

    charts: dict[str, str] = {}
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        messages.append(
            "matplotlib is not installed, so no charts were drawn (pip install 'qualcode[charts]')."
        )
    else:
        atomic_write_bytes(out / "themes.png", _themes_chart(counts, coded, source_name, codebook))
        paths["themes_chart"] = out / "themes.png"
        charts["themes"] = "themes.png"
        if by and len(groups) > 1:
            name = f"themes_by_{_safe_name(by)}.png"
            atomic_write_bytes(
                out / name, _groups_chart(counts, coded, groups, names, by, source_name)
            )
            paths["groups_chart"] = out / name
            charts["groups"] = name

    description = f"Exported by qualcode from {source_name}." if source_name else ""
    atomic_write_bytes(out / "codes.qdpx", _qdpx_bytes(coded, codebook, description=description))
    paths["qdpx"] = out / "codes.qdpx"
    write_table(_matrix(coded, codebook), out / "coded_segments.xlsx")
    paths["matrix"] = out / "coded_segments.xlsx"

    text = _markdown(
        coded,
        codebook,
        counts,
        quotes,
        by=by,
        groups=groups,
        names=names,
        charts=charts,
        source_name=source_name,
        include_flagged=include_flagged,
        n=exemplars,
    )
    atomic_write_text(out / "report.md", text)
    paths["report"] = out / "report.md"
    total = counts[counts["theme"] == TOTAL].iloc[0]
    return ReportResult(
        out_dir=out,
        paths=paths,
        counts=counts,
        kind=coded.kind,
        segments=int(total["segments"]),
        flagged=int(total["flagged"]) if coded.predictions else None,
        messages=messages,
    )
