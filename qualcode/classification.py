"""Step 4: batch-classify segments with a trained model, with calibrated confidence and a review
flag the analyst can read and steer.

Predictions CSV contract (after every input column): ``theme, confidence, second_theme, margin,
needs_review, review_reason, themes, similarity``, then ``p_<theme>`` per theme.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qualcode.errors import QualcodeError
from qualcode.files.coded import (
    MODEL_PREFIX,
    NON_ANSWER_REASON,
    PREDICTION_COLUMNS,
    model_column,
    non_answers,
)
from qualcode.model.review_rule import DECIMALS, INTERVAL_LEVEL, ReviewRule, fit_to_batch

if TYPE_CHECKING:
    from qualcode.model.classifier import ThemeClassifier
    from qualcode.model.storage import ThemeModel

TABLE_SUFFIXES = {".csv", ".tsv", ".xlsx"}


def read_inputs(
    paths: Sequence[str | Path], *, column: str | None = None, unit: str = "paragraph"
) -> pd.DataFrame:
    """Segments to classify: segments tables (with a ``text`` column) are read as they are;
    documents (and survey exports with ``column``) are segmented on the fly."""
    from qualcode.files.tables import check_text_lengths, read_segments_table
    from qualcode.segmentation import segment

    if not paths:
        raise QualcodeError("give at least one input file")
    frames = []
    for path in map(Path, paths):
        if path.suffix.lower() in TABLE_SUFFIXES and column is None:
            frames.append(read_segments_table(path, required=["text"]))
        else:
            frames.append(segment([path], unit=unit, column=column))
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    check_text_lengths(out["text"], "segments to classify")
    if "segment_id" in out.columns:
        dupes = out["segment_id"][out["segment_id"].duplicated() & (out["segment_id"] != "")]
        if len(dupes):
            raise QualcodeError(
                f"duplicate segment_id {dupes.iloc[0]!r} ({dupes.nunique()} ids repeat): "
                "each segment needs its own id"
            )
    return out


@dataclass
class Coded:
    """A batch coded by :func:`code_batch`: probabilities, themes ranked per row (column
    indices), review flags, their reasons, and each segment's similarity to the training data."""

    proba: np.ndarray
    order: np.ndarray
    flags: np.ndarray
    reasons: list[str]
    similarity: np.ndarray
    rule: ReviewRule
    confidence: np.ndarray
    margin: np.ndarray


def code_batch(
    clf: ThemeClassifier,
    rule: ReviewRule,
    texts: list[str],
    *,
    adapt: bool = True,
    max_flagged: float | None = None,
    evidence: tuple[np.ndarray, np.ndarray] | None = None,
) -> Coded:
    """Predict and flag a batch. With ``adapt`` the classifier first learns from the batch
    itself (:meth:`ThemeClassifier.adapted`); ``max_flagged`` caps the share flagged for low
    confidence (see :func:`fit_to_batch`)."""
    features = clf.transform(texts)
    if adapt:
        clf = clf.adapted(features)
    proba = clf.proba_from_features(features)
    order = np.argsort(-proba, axis=1, kind="stable")
    rows = np.arange(len(texts))
    # Rounded as written to the predictions file, so the file agrees with its flags.
    top = np.round(proba[rows, order[:, 0]], DECIMALS)
    margin = np.round(top - proba[rows, order[:, 1]], DECIMALS) if proba.shape[1] > 1 else top
    rule = fit_to_batch(rule, top, evidence=evidence, max_flagged=max_flagged)
    similarity = clf.similarity_to_training(features)
    flags, reasons = rule.flag(top, margin, similarity)
    return Coded(proba, order, flags, reasons, similarity, rule, top, margin)


def classify(
    model: ThemeModel,
    segments: pd.DataFrame,
    *,
    rule: ReviewRule | None = None,
    multi_label: bool = False,
    adapt: bool = True,
    max_flagged: float | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Every input column, then ``PREDICTION_COLUMNS`` and one ``p_<theme>`` per theme (the
    contract in :mod:`qualcode.files.coded`). An input column is never replaced: where the input
    has a column of the same name (a coder's ``theme``), the model's is ``model_<name>``. ``themes``
    lists every theme above its threshold (dominant first): 0.5 for a multi-label model,
    ``model.second_theme_threshold`` for the second theme of a single-label one. The review rule
    used is in ``predictions.attrs["review_rule"]``."""
    if "text" not in segments.columns:
        raise QualcodeError("the segments to classify need a 'text' column")
    clf = model.classifier
    if multi_label and not clf.multi_label:
        raise QualcodeError(
            "this model was trained single-label: retrain with `qualcode train --multi-label`"
        )
    clf = copy.copy(clf)
    clf.progress = progress
    skipped = non_answers(segments)  # survey answers with nothing to code
    texts = segments["text"].astype(str)[~skipped].tolist()
    classes = [str(c) for c in clf.classes_]
    if not texts:
        raise QualcodeError(
            "every segment is marked as a non-answer (column non_answer): nothing to classify"
        )
    coded = code_batch(
        clf,
        rule or model.review_rule,
        texts,
        adapt=adapt,
        max_flagged=max_flagged,
        evidence=model.review_evidence,
    )
    proba, order = coded.proba, coded.order

    def spread(values: Any, blank: Any) -> list[Any]:
        """Values of the coded rows in place, ``blank`` for the non-answers."""
        it = iter(list(values))
        return [blank if skip else next(it) for skip in skipped]

    nan = float("nan")
    columns: dict[str, Any] = {
        "theme": spread((classes[j] for j in order[:, 0]), ""),
        "confidence": spread(coded.confidence, nan),
        "second_theme": spread((classes[j] for j in order[:, 1]), ""),
        "margin": spread(coded.margin, nan),
        "needs_review": spread(coded.flags, False),
        "review_reason": spread(coded.reasons, NON_ANSWER_REASON),
        "themes": spread(theme_lists(proba, order, classes, model, clf.multi_label), ""),
        "similarity": spread(np.round(coded.similarity, DECIMALS), nan),
    }
    assert list(columns) == list(PREDICTION_COLUMNS)
    for j, theme in enumerate(classes):
        columns[f"p_{theme}"] = spread(np.round(proba[:, j], DECIMALS), nan)
    out = segments.copy()
    for name, values in columns.items():
        target = MODEL_PREFIX + name if name in segments.columns else name
        if target in segments.columns:
            raise QualcodeError(
                f"the input already has columns {name!r} and {target!r}: rename one of them "
                "so the model's column does not replace it"
            )
        out[target] = values
    out.attrs["review_rule"] = coded.rule
    return out


def theme_lists(
    proba: np.ndarray, order: np.ndarray, classes: list[str], model: ThemeModel, multi_label: bool
) -> list[str]:
    """``a;b`` per row: the dominant theme, then any other above its threshold."""
    out = []
    for i, row in enumerate(order):
        if multi_label:
            picked = [classes[j] for j in row if proba[i, j] >= 0.5] or [classes[row[0]]]
        else:
            picked = [classes[row[0]]]
            threshold = model.second_theme_threshold
            if threshold is not None and proba[i, row[1]] >= threshold:
                picked.append(classes[row[1]])
        out.append(";".join(picked))
    return out


def review_summary(predictions: pd.DataFrame) -> str:
    """One line: how many segments need review and what accuracy the rest is expected to have
    (from their calibrated confidences, with a 90 % interval for the luck of the draw, and what
    cross-validation on the labelled segments says of the same threshold)."""
    rule: ReviewRule | None = predictions.attrs.get("review_rule")
    skipped = non_answers(predictions)
    uncoded = f"; {int(skipped.sum())} non-answer(s) not coded" if skipped.any() else ""
    predictions = predictions[~skipped]
    flagged = predictions[model_column(predictions, "needs_review")].astype(bool)
    n, k = len(predictions), int(flagged.sum())
    if not n:
        return "no segments" + uncoded
    text = f"{k} of {n} segments need review ({k / n:.0%}){uncoded}"
    if rule is None or n == k:
        return text
    p = predictions.loc[~flagged, model_column(predictions, "confidence")].to_numpy(float)
    if not rule.calibrated:
        return text + (
            f"; the other {n - k} are not flagged, but the confidence threshold "
            f"{rule.min_confidence:.2f} is not yet calibrated: label more segments per theme"
        )
    from scipy.stats import norm

    z = norm.ppf(0.5 + INTERVAL_LEVEL / 2)
    spread = z * np.sqrt((p * (1 - p)).sum()) / len(p)
    text += (
        f"; the other {n - k} are expected to be {p.mean():.0%} right "
        f"(±{spread:.0%}, {INTERVAL_LEVEL * 100:.0f} %, if the confidences are calibrated on "
        "this material; "
        f"threshold {rule.min_confidence:.2f}, target {rule.target_accuracy:.0%}"
    )
    if rule.expected_accuracy is not None:
        lo, hi = rule.accuracy_interval or (np.nan, np.nan)
        text += (
            f"; in cross-validation on the labelled segments {rule.expected_accuracy:.0%} "
            f"[{lo:.0%}–{hi:.0%}] at that threshold"
        )
    return text + ")"


def summarize(predictions: pd.DataFrame, model: ThemeModel) -> pd.DataFrame:
    """Themes × segments × flagged, in codebook order: a segment counts for each theme in its
    ``themes`` (as the report counts them), so the rows may add up to more than the total."""
    skipped = non_answers(predictions)
    predictions = predictions[~skipped]
    themes = predictions[model_column(predictions, "themes")].fillna("").astype(str).str.split(";")
    flags = predictions[model_column(predictions, "needs_review")].astype(bool)
    rows = []
    for theme in model.codebook.themes:
        mine = themes.map(lambda ids, t=theme.id: t in ids)
        rows.append(
            {
                "theme": theme.id,
                "label": theme.label,
                "segments": int(mine.sum()),
                "flagged": int(flags[mine].sum()),
            }
        )
    table = pd.DataFrame(rows)
    total = pd.DataFrame(
        [
            {
                "theme": "total",
                "label": "",
                "segments": len(predictions),
                "flagged": int(flags.sum()),
            }
        ]
    )
    return pd.concat([table, total], ignore_index=True)


def write_predictions(predictions: pd.DataFrame, path: str | Path, *, excel: bool = False) -> None:
    """Write predictions atomically; ``needs_review`` as ``true``/``false``."""
    from qualcode.files.tables import write_table

    out = predictions.copy()
    column = model_column(out, "needs_review")
    out[column] = np.where(out[column].astype(bool), "true", "false")
    write_table(out, path, excel=excel)
