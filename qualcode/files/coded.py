"""The predictions file's contract, written once: the columns ``qualcode classify`` adds, how a
model column is found when the input had one of the same name, and the strict parsers of its
number and flag cells (Swedish decimal commas and ja/nej included)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from qualcode.errors import QualcodeError
from qualcode.files.tables import spreadsheet_rows

__all__ = [
    "MODEL_PREFIX",
    "NON_ANSWER",
    "NON_ANSWER_REASON",
    "non_answers",
    "PREDICTION_COLUMNS",
    "PROVENANCE",
    "column_text",
    "is_predictions",
    "model_column",
    "parse_confidence",
    "parse_flags",
    "parse_number",
]

PROVENANCE = ("segment_id", "document", "section", "line_start", "line_end")

# What `qualcode classify` adds to each segment, in this order, before one p_<theme> per theme.
# Where the input already has one of these columns (a labelled file classified for comparison),
# the input's column stays as it is and the model's is written as MODEL_PREFIX + name.
PREDICTION_COLUMNS = (
    "theme",
    "confidence",
    "second_theme",
    "margin",
    "needs_review",
    "review_reason",
    "themes",
    "similarity",
)
MODEL_PREFIX = "model_"
# Survey segments carry this flag: "true" for an answer with nothing to code ("vet ej", "nej",
# "-"); such answers are counted and reported, asked last, and not coded by the model.
NON_ANSWER = "non_answer"
NON_ANSWER_REASON = "no answer to code (such as “vet ej”, “nej”, “-”)"
_TRUE = {"true", "1", "yes", "ja", "sant"}
_FALSE = {"false", "0", "no", "nej", "falskt", ""}


def model_column(table: pd.DataFrame, name: str) -> str:
    """The column holding the model's ``name`` (``theme``, ``confidence``, …) in a predictions
    table: ``model_<name>`` where the input had its own ``name``, else ``name``."""
    return MODEL_PREFIX + name if MODEL_PREFIX + name in table.columns else name


def is_predictions(table: pd.DataFrame) -> bool:
    """Whether ``table`` comes from ``qualcode classify`` (it has the model's confidence)."""
    return model_column(table, "confidence") in table.columns


def column_text(table: pd.DataFrame, name: str) -> pd.Series:
    if name in table.columns:
        return table[name].fillna("").astype(str)
    return pd.Series([""] * len(table), index=table.index, dtype=str)


def parse_number(value: object) -> float:
    text = str(value).strip().replace(",", ".")
    if not text:
        return math.nan
    return float(text)


def parse_confidence(values: pd.Series, rows: list[int]) -> list[float]:
    out = []
    for value, row in zip(values, rows):
        try:
            out.append(parse_number(value))
        except ValueError:
            raise QualcodeError(
                f"row {row}: confidence {str(value)!r} is not a number; the predictions file "
                "from `qualcode classify` has numbers such as 0.87 there."
            ) from None
    return out


def parse_flags(values: pd.Series, rows: list[int]) -> list[bool]:
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


# --------------------------------------------------------------------------- counts


def non_answers(table: pd.DataFrame) -> np.ndarray:
    """Which rows are non-answers (their ``non_answer`` cell is true); none without the column."""
    if NON_ANSWER not in table.columns or table.empty:
        return np.zeros(len(table), dtype=bool)
    flags = parse_flags(column_text(table, NON_ANSWER), spreadsheet_rows(table))
    return np.array(flags, dtype=bool)
