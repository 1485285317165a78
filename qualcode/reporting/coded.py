"""A predictions or labels table read into one row per coded segment, and theme counts: the
input of the report and the exports.

Input is a predictions table from ``qualcode classify`` (it has a ``confidence`` column and a
``needs_review`` flag; the columns are :mod:`qualcode.files.coded`'s contract) or a labels table
(``text``, ``theme`` with ``;``-separated themes, maybe ``coder``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.files.coded import (
    MODEL_PREFIX,
    PREDICTION_COLUMNS,
    column_text,
    is_predictions,
    model_column,
    non_answers,
    parse_confidence,
    parse_flags,
    parse_number,
)
from qualcode.files.labels import last_answers, segment_keys
from qualcode.files.pseudonymise import Pseudonymiser
from qualcode.files.tables import spreadsheet_rows

TOTAL = "total"


NONE_GROUP = "(ingen)"


# Columns that hold ids, numbers and flags, never personal data in running text.
# Columns that hold ids, numbers and flags, never personal data in running text.
_NOT_PERSONAL = {"segment_id", "document", "line_start", "line_end", "coder", "labelled_at"}
_NOT_PERSONAL.update(PREDICTION_COLUMNS)
_NOT_PERSONAL.update(MODEL_PREFIX + c for c in PREDICTION_COLUMNS)


@dataclass
class CodedTable:
    """One row per segment, in reading order, with the input columns (as text) and
    ``_themes`` (ids), ``_codings`` ((theme, coder) pairs), ``_confidence``, ``_flagged``,
    ``_reason`` and ``_second`` (the model's review reason and second theme),
    ``_index`` (first row in the file), ``_key`` (segment id or a hash of the text),
    ``_document`` (the document, ``segments`` if none) and ``_original_text``."""

    frame: pd.DataFrame
    kind: str  # "predictions" or "labels"
    coders: list[str]
    codebook: Codebook
    non_answers: int = 0  # survey answers with nothing to code ("vet ej"), not in ``frame``

    @property
    def predictions(self) -> bool:
        return self.kind == "predictions"


def _line_number(value: str) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        return math.inf


def read_coded(
    table: pd.DataFrame,
    codebook: Codebook,
    *,
    what: str = "input",
    pseudonymiser: Pseudonymiser | None = None,
) -> CodedTable:
    """Validate ``table`` and merge it into one row per segment (see :class:`CodedTable`).

    With a ``pseudonymiser``, personal data in the text, section and metadata columns is
    replaced, in reading order (``_original_text`` keeps the text as it was).
    """
    if not isinstance(table, pd.DataFrame) or table.empty:
        raise QualcodeError(f"{what} has no rows; give a predictions or labels file with data.")
    missing = [c for c in ("text", "theme") if c not in table.columns]
    if missing:
        raise QualcodeError(
            f"{what} is missing column(s) {', '.join(map(repr, missing))}; columns found: "
            f"{', '.join(map(repr, map(str, table.columns)))}. A predictions file from "
            "`qualcode classify` or a labels file (text, theme) is needed."
        )
    kind = "predictions" if is_predictions(table) else "labels"
    rows = spreadsheet_rows(table)
    theme_column = model_column(table, "theme") if kind == "predictions" else "theme"
    theme_cells = column_text(table, theme_column)
    if kind == "predictions" and model_column(table, "themes") in table.columns:
        multi = column_text(table, model_column(table, "themes"))
        theme_cells = multi.where(multi.str.strip() != "", theme_cells)
    parsed = codebook.check_themes(theme_cells, what=f"{what} column {theme_column!r}", rows=rows)
    text = column_text(table, "text")
    frame = table.fillna("").astype(str).copy()
    frame["_themes"] = parsed
    frame["_index"] = range(len(frame))
    if kind == "predictions":
        confidence = column_text(table, model_column(table, "confidence"))
        frame["_confidence"] = parse_confidence(confidence, rows)
        frame["_flagged"] = parse_flags(
            column_text(table, model_column(table, "needs_review")), rows
        )
        frame["_reason"] = column_text(table, model_column(table, "review_reason")).to_numpy()
        frame["_second"] = column_text(table, model_column(table, "second_theme")).to_numpy()
    else:
        frame["_confidence"] = math.nan
        frame["_flagged"] = False
        frame["_reason"] = frame["_second"] = ""
    coder = column_text(table, "coder").str.strip()
    frame["_coder"] = coder.where(coder != "", "qualcode" if kind == "predictions" else "")
    skipped = non_answers(table)
    keep = [
        bool(ids) and bool(t.strip()) and not skip for ids, t, skip in zip(parsed, text, skipped)
    ]
    frame = frame[keep].copy()
    if frame.empty:
        raise QualcodeError(
            f"{what} has no coded rows (every 'theme' or 'text' cell is empty); "
            "label some segments or give the predictions file."
        )
    frame["_key"] = segment_keys(frame)
    frame = last_answers(frame, "_key", "_coder")
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
    doc_rank = {d: i for i, d in enumerate(dict.fromkeys(column_text(frame, "document")))}
    frame["_order_key"] = list(
        zip(
            [doc_rank[d] for d in column_text(frame, "document")],
            [_line_number(v) for v in column_text(frame, "line_start")],
            frame["_index"],
        )
    )
    frame = frame.sort_values("_order_key", kind="stable").reset_index(drop=True)
    coders = [c for c in dict.fromkeys(frame["_coder"]) if c] if kind == "labels" else []
    document = column_text(frame, "document").str.strip()
    frame["_document"] = document.where(document != "", "segments")
    frame["_original_text"] = frame["text"]
    if pseudonymiser is not None:
        _pseudonymise(frame, pseudonymiser)
    return CodedTable(
        frame=frame, kind=kind, coders=coders, codebook=codebook, non_answers=int(skipped.sum())
    )


def theme_scores(coded: CodedTable, theme_id: str) -> pd.Series:
    """Each segment's probability of ``theme_id``: its ``p_<theme>`` cell (a decimal comma
    is fine), else its confidence when ``theme_id`` is its first theme, else NaN."""
    frame = coded.frame
    scores = []
    for value, ids, confidence in zip(
        column_text(frame, model_column(frame, f"p_{theme_id}")),
        frame["_themes"],
        frame["_confidence"],
    ):
        try:
            score = parse_number(value)
        except ValueError:
            score = math.nan
        if math.isnan(score) and ids and ids[0] == theme_id:
            score = confidence
        scores.append(score)
    return pd.Series(scores, index=frame.index, dtype=float)


def _pseudonymise(frame: pd.DataFrame, pseudonymiser: Pseudonymiser) -> None:
    columns = ["text"] + [
        c
        for c in frame.columns
        if c not in _NOT_PERSONAL and c != "text" and not c.startswith(("_", "p_"))
    ]
    values = {c: frame[c].tolist() for c in columns}
    for i in range(len(frame)):
        for column in columns:
            values[column][i] = pseudonymiser.replace(str(values[column][i]))
    for column in columns:
        frame[column] = values[column]


def as_coded(
    table: pd.DataFrame | CodedTable,
    codebook: Codebook,
    *,
    pseudonymiser: Pseudonymiser | None = None,
) -> CodedTable:
    """``table`` read by :func:`read_coded`, or as it is if it was read already (and then
    pseudonymised already, if it was to be)."""
    if isinstance(table, CodedTable):
        return table
    return read_coded(table, codebook, pseudonymiser=pseudonymiser)


def resolve_by(coded: CodedTable, by: str | None) -> str | None:
    if by is None:
        return "document" if "document" in coded.frame.columns else None
    if by not in coded.frame.columns or by.startswith("_"):
        columns = [c for c in coded.frame.columns if not str(c).startswith("_")]
        raise QualcodeError(
            f"--by column {by!r} is not in the input; columns: {', '.join(map(repr, columns))}."
        )
    return by


def group_values(coded: CodedTable, by: str) -> pd.Series:
    return coded.frame[by].astype(str).str.strip().replace("", NONE_GROUP)


def group_list(coded: CodedTable, by: str | None) -> list[str]:
    return list(dict.fromkeys(group_values(coded, by))) if by else []


def respondent_columns(coded: CodedTable) -> list[str]:
    """The survey's own columns (Kommun, Roll, …): every input column that is not part of the
    segments, labels or predictions contracts. Empty for documents."""
    known = {"text", "section", "non_answer", *_NOT_PERSONAL}
    return [
        c
        for c in coded.frame.columns
        if c not in known and not str(c).startswith(("_", "p_", MODEL_PREFIX))
    ]


def _fixed_columns(coded: CodedTable) -> list[str]:
    fixed = ["theme", "label", "label_en", "segments", "share"]
    return fixed + ["flagged", "unflagged"] if coded.predictions else fixed


def group_columns(coded: CodedTable, by: str | None, groups: list[str]) -> dict[str, str]:
    """Column name per group: the value itself, unless it clashes with a fixed column."""
    fixed = _fixed_columns(coded)
    return {g: g if g not in fixed else f"{by}: {g}" for g in groups}


def count_themes(coded: CodedTable, codebook: Codebook, by: str | None) -> pd.DataFrame:
    frame = coded.frame
    groups = group_list(coded, by)
    group_of = group_values(coded, by) if by else None
    names = group_columns(coded, by, groups)
    has = {t.id: frame["_themes"].map(lambda ids, t=t.id: t in ids) for t in codebook.themes}
    rows = []
    for theme in codebook.themes:
        mask = has[theme.id]
        row: dict[str, Any] = {
            "theme": theme.id,
            "label": theme.label,
            "label_en": theme.label_en,
            "segments": int(mask.sum()),
            # of the segments, not of the codings: a segment with two themes counts for both,
            # so the shares may add up to more than 100 %, and 9 of 65 reads 13,8 %
            "share": int(mask.sum()) / len(frame) if len(frame) else 0.0,
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


def split_total(counts: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The theme rows of a counts table and its ``total`` row."""
    return counts[counts["theme"] != TOTAL], counts[counts["theme"] == TOTAL].iloc[0]


def theme_counts(
    table: pd.DataFrame, codebook: Codebook, *, by: str | None = "document"
) -> pd.DataFrame:
    """Segments per theme (codebook order, then a ``total`` row) and per group of ``by``.

    Columns: ``theme, label, label_en, segments, share`` (+ ``flagged, unflagged`` for
    predictions), then one column per value of ``by`` (+ ``<value> (unflagged)``). ``by=None``
    groups by ``document`` when the table has it, else not at all.
    """
    coded = read_coded(table, codebook)
    return count_themes(coded, codebook, resolve_by(coded, by))
