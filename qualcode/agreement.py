"""Inter-coder agreement: Cohen's kappa (two coders) and Krippendorff's alpha (any number).

Coders' themes come as a table with one row per segment and one column per coder; a cell holds
the coder's theme ids joined by ``;`` (dominant first) or ``""`` when that coder did not label the
segment. The overall statistic compares dominant themes; the per-theme statistics compare
"has this theme" yes/no, so multi-label coding is measured too.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

__all__ = ["agreement_table", "cohen_kappa", "krippendorff_alpha"]


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float:
    """Cohen's kappa of two equally long rating sequences (NaN when undefined).

    Kappa is undefined when chance agreement is 1 (both coders used one and the same category
    throughout); NaN is returned instead of sklearn's warning.
    """
    from sklearn.metrics import cohen_kappa_score

    a, b = [str(v) for v in a], [str(v) for v in b]
    if len(a) != len(b):
        raise ValueError("both coders must rate the same units")
    if not a or len(set(a) | set(b)) < 2:
        return float("nan")
    return float(cohen_kappa_score(a, b))


def krippendorff_alpha(units: Sequence[Sequence[Hashable | None]]) -> float:
    """Krippendorff's alpha for nominal data.

    ``units`` holds, per unit (segment), the values the coders gave; ``None`` (or a missing
    coder) is skipped. Units with fewer than two values are not pairable and are ignored.
    Returns NaN when there is nothing to compare or no variation at all.
    """
    values: list[list[Hashable]] = [[v for v in unit if v is not None] for unit in units]
    values = [unit for unit in values if len(unit) >= 2]
    categories = sorted({v for unit in values for v in unit}, key=str)
    if not values or len(categories) < 2:
        return float("nan")
    index = {c: i for i, c in enumerate(categories)}
    coincidence = np.zeros((len(categories), len(categories)))
    for unit in values:
        counts = np.bincount([index[v] for v in unit], minlength=len(categories)).astype(float)
        pairs = np.outer(counts, counts) - np.diag(counts)  # ordered pairs of different coders
        coincidence += pairs / (len(unit) - 1)
    n_c = coincidence.sum(axis=1)
    n = n_c.sum()
    observed = coincidence.sum() - np.trace(coincidence)
    expected = (n_c.sum() ** 2 - (n_c**2).sum()) / (n - 1)
    if expected == 0:
        return float("nan")
    return float(1.0 - observed / expected)


def _dominant(cell: str) -> str | None:
    return cell.split(";")[0] if cell else None


def _has(cell: str, theme: str) -> bool | None:
    return (theme in cell.split(";")) if cell else None


def agreement_table(coded: pd.DataFrame, themes: Sequence[str]) -> pd.DataFrame:
    """Agreement overall (dominant theme) and per theme (present / absent).

    ``coded``: one row per segment, one column per coder (cells as described in the module
    docstring). Two coders get Cohen's kappa, more get Krippendorff's alpha (nominal). Only
    segments labelled by at least two coders are compared; ``segments`` says how many.
    Columns: ``theme, statistic, value, segments, coders``.
    """
    coders = list(coded.columns)
    if len(coders) < 2:
        raise ValueError("agreement needs at least two coders")
    cells = coded.fillna("").astype(str)
    statistic = "cohen_kappa" if len(coders) == 2 else "krippendorff_alpha"
    rows = []
    for theme in ["overall", *themes]:
        getter = _dominant if theme == "overall" else (lambda c, t=theme: _has(c, t))
        units = [[getter(c) for c in row] for row in cells.itertuples(index=False, name=None)]
        units = [u for u in units if sum(v is not None for v in u) >= 2]
        if len(coders) == 2:
            complete = [u for u in units if None not in u]
            value = cohen_kappa([u[0] for u in complete], [u[1] for u in complete])
            compared = len(complete)
        else:
            value = krippendorff_alpha(units)
            compared = len(units)
        rows.append(
            {
                "theme": theme,
                "statistic": statistic,
                "value": round(value, 3) if not np.isnan(value) else float("nan"),
                "segments": compared,
                "coders": len(coders),
            }
        )
    return pd.DataFrame(rows)
