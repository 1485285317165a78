"""Step 4: batch-classify segments with a trained model, with calibrated confidence and a review
flag the analyst can read and steer.

Predictions CSV contract (``PREDICTION_COLUMNS`` after every input column, then ``p_<theme>``):
``theme, confidence, second_theme, margin, needs_review, review_reason`` (+ ``themes`` with
``--multi-label``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qualcode.errors import QualcodeError

if TYPE_CHECKING:
    from qualcode.classifier import ThemeClassifier
    from qualcode.train import ThemeModel

PREDICTION_COLUMNS = [
    "theme",
    "confidence",
    "second_theme",
    "margin",
    "needs_review",
    "review_reason",
]
DEFAULT_TARGET_ACCURACY = 0.9
TABLE_SUFFIXES = {".csv", ".tsv", ".xlsx"}


@dataclass
class ReviewRule:
    """Flag a segment for human review when any condition holds.

    - ``confidence < min_confidence`` (chosen from cross-validation so that the unflagged
      segments reach ``target_accuracy``),
    - ``margin < min_margin`` (top-1 minus top-2 probability; 0 disables),
    - ``similarity < min_similarity`` (cosine to the nearest labelled segment: far from all
      training data).
    """

    min_confidence: float
    min_margin: float = 0.0
    min_similarity: float = 0.0
    target_accuracy: float | None = DEFAULT_TARGET_ACCURACY
    expected_coverage: float | None = None
    expected_accuracy: float | None = None

    def flag(
        self, confidence: np.ndarray, margin: np.ndarray, similarity: np.ndarray
    ) -> tuple[np.ndarray, list[str]]:
        reasons: list[str] = []
        flags = np.zeros(len(confidence), dtype=bool)
        for i, (c, m, s) in enumerate(zip(confidence, margin, similarity)):
            why = []
            if c < self.min_confidence:
                why.append(f"low confidence ({c:.2f} < {self.min_confidence:.2f})")
            if m < self.min_margin:
                why.append(f"small margin ({m:.2f} < {self.min_margin:.2f})")
            if s < self.min_similarity:
                why.append(
                    f"unlike the training data (similarity {s:.2f} < {self.min_similarity:.2f})"
                )
            flags[i] = bool(why)
            reasons.append("; ".join(why))
        return flags, reasons

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest confidence threshold whose kept (>= threshold) predictions reach ``target``
    accuracy on held-out data; above 1 (flag everything) when no threshold does."""
    order = np.argsort(-confidence, kind="stable")
    kept_accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(kept_accuracy >= target)
    if len(ok) == 0:
        return 1.01
    return float(confidence[order][ok[-1]])


def choose_review_rule(
    confidence: np.ndarray | None,
    correct: np.ndarray | None,
    *,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    min_margin: float = 0.0,
    min_similarity: float = 0.0,
) -> ReviewRule:
    """Choose the confidence threshold from out-of-fold confidence/correctness on the labelled
    set; with no such evidence (too few labels to cross-validate) everything is flagged."""
    if not 0 < target_accuracy <= 1:
        raise QualcodeError(f"--target-accuracy must be between 0 and 1, not {target_accuracy}")
    if confidence is None or correct is None:
        return ReviewRule(1.01, min_margin, min_similarity, target_accuracy)
    threshold = confidence_threshold(confidence, correct, target_accuracy)
    kept = confidence >= threshold
    return ReviewRule(
        min_confidence=threshold,
        min_margin=min_margin,
        min_similarity=min_similarity,
        target_accuracy=target_accuracy,
        expected_coverage=float(kept.mean()),
        expected_accuracy=float(correct[kept].mean()) if kept.any() else None,
    )


def read_inputs(
    paths: Sequence[str | Path], *, column: str | None = None, unit: str = "paragraph"
) -> pd.DataFrame:
    """Segments to classify: segments tables (with a ``text`` column) are read as they are;
    documents (and survey exports with ``column``) are segmented on the fly."""
    from qualcode.segment import segment
    from qualcode.tables import read_table

    if not paths:
        raise QualcodeError("give at least one input file")
    frames = []
    for path in map(Path, paths):
        if path.suffix.lower() in TABLE_SUFFIXES and column is None:
            frames.append(read_table(path, required=["text"], what="segments file"))
        else:
            frames.append(segment([path], unit=unit, column=column))
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if "segment_id" in out.columns:
        dupes = out["segment_id"][out["segment_id"].duplicated() & (out["segment_id"] != "")]
        if len(dupes):
            raise QualcodeError(
                f"duplicate segment_id {dupes.iloc[0]!r} ({dupes.nunique()} ids repeat): "
                "each segment needs its own id"
            )
    return out


def predict_and_flag(
    clf: ThemeClassifier, rule: ReviewRule, texts: list[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Probabilities, themes ranked per row (column indices), review flags and their reasons."""
    features = clf.transform(texts)
    proba = clf.proba_from_features(features)
    order = np.argsort(-proba, axis=1)
    rows = np.arange(len(texts))
    top = proba[rows, order[:, 0]]
    margin = top - proba[rows, order[:, 1]]
    flags, reasons = rule.flag(top, margin, clf.similarity_to_training(features))
    return proba, order, flags, reasons


def classify(
    model: ThemeModel,
    segments: pd.DataFrame,
    *,
    rule: ReviewRule | None = None,
    multi_label: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Every input column plus ``PREDICTION_COLUMNS`` and one ``p_<theme>`` per theme; a
    multi-label model adds ``themes`` (every theme with probability ≥ 0.5, at least the top one).
    """
    if "text" not in segments.columns:
        raise QualcodeError("the segments to classify need a 'text' column")
    clf = model.classifier
    if multi_label and not clf.multi_label:
        raise QualcodeError(
            "this model was trained single-label: retrain with `qualcode train --multi-label`"
        )
    clf.progress = progress
    texts = segments["text"].astype(str).tolist()
    proba, order, flags, reasons = predict_and_flag(clf, rule or model.review_rule, texts)
    rows = np.arange(len(texts))
    top, second = proba[rows, order[:, 0]], proba[rows, order[:, 1]]
    margin = top - second
    classes = [str(c) for c in clf.classes_]

    out = segments.copy()
    out["theme"] = [classes[j] for j in order[:, 0]]
    out["confidence"] = np.round(top, 4)
    out["second_theme"] = [classes[j] for j in order[:, 1]]
    out["margin"] = np.round(margin, 4)
    out["needs_review"] = flags
    out["review_reason"] = reasons
    if clf.multi_label:
        out["themes"] = [
            ";".join(classes[j] for j in row if proba[i, j] >= 0.5) or classes[row[0]]
            for i, row in enumerate(order)
        ]
    for j, theme in enumerate(classes):
        out[f"p_{theme}"] = np.round(proba[:, j], 4)
    return out


def summarize(predictions: pd.DataFrame, model: ThemeModel) -> pd.DataFrame:
    """Themes × segments × flagged, in codebook order."""
    rows = []
    for theme in model.codebook.themes:
        mine = predictions[predictions["theme"] == theme.id]
        rows.append(
            {
                "theme": theme.id,
                "label": theme.label,
                "segments": len(mine),
                "flagged": int(mine["needs_review"].sum()),
            }
        )
    table = pd.DataFrame(rows)
    total = pd.DataFrame(
        [
            {
                "theme": "total",
                "label": "",
                "segments": len(predictions),
                "flagged": int(predictions["needs_review"].sum()),
            }
        ]
    )
    return pd.concat([table, total], ignore_index=True)


def write_predictions(predictions: pd.DataFrame, path: str | Path, *, excel: bool = False) -> None:
    """Write predictions atomically; ``needs_review`` as ``true``/``false``."""
    from qualcode.tables import write_table

    out = predictions.copy()
    out["needs_review"] = np.where(out["needs_review"].astype(bool), "true", "false")
    write_table(out, path, excel=excel)
