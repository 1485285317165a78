"""Step 4: batch-classify segments with a trained model, with calibrated confidence and a review
flag the analyst can read and steer.

Predictions CSV contract (after every input column): ``theme, confidence, second_theme, margin,
needs_review, review_reason, themes, similarity``, then ``p_<theme>`` per theme.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qualcode.coded import MODEL_PREFIX, PREDICTION_COLUMNS, model_column
from qualcode.errors import QualcodeError

if TYPE_CHECKING:
    from qualcode.classifier import ThemeClassifier
    from qualcode.train import ThemeModel

DEFAULT_TARGET_ACCURACY = 0.9
DECIMALS = 4  # probabilities in the predictions file
TABLE_SUFFIXES = {".csv", ".tsv", ".xlsx"}


# The interval printed around the expected accuracy of unflagged segments.
INTERVAL_LEVEL = 0.9


@dataclass
class ReviewRule:
    """Flag a segment for human review when any condition holds.

    - ``confidence < min_confidence``: at training, chosen from out-of-fold predictions on the
      labelled segments so that the unflagged ones reach ``target_accuracy``; for each batch,
      re-chosen by :func:`fit_to_batch`;
    - ``margin < min_margin`` (top-1 minus top-2 probability; 0, the default, disables it);
    - ``similarity < min_similarity`` (cosine to the nearest labelled segment; 0, the default,
      disables it: on new material it fired on most notes without predicting errors, so it is
      reported in the ``similarity`` column instead).

    ``expected_accuracy`` is the out-of-fold accuracy of the labelled segments the threshold
    leaves unflagged, ``accuracy_interval`` its 90 % Clopper–Pearson interval, ``evidence`` the
    number of out-of-fold predictions and ``expected_coverage`` the share left unflagged there.
    """

    min_confidence: float
    min_margin: float = 0.0
    min_similarity: float = 0.0
    target_accuracy: float | None = DEFAULT_TARGET_ACCURACY
    expected_coverage: float | None = None
    expected_accuracy: float | None = None
    accuracy_interval: tuple[float, float] | None = None
    evidence: int | None = None
    max_flagged: float | None = None

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

    @property
    def calibrated(self) -> bool:
        """Whether the threshold rests on out-of-fold evidence (not on a fallback)."""
        return self.evidence is not None

    def describe(self) -> str:
        """One line for the analyst: the threshold and what it is expected to give."""
        if self.min_confidence > 1:
            return "every segment is flagged: no confidence threshold reaches the target accuracy"
        if not self.calibrated:
            return (
                f"review flag below confidence {self.min_confidence:.2f} (not yet calibrated: "
                "too few labels per theme to cross-validate)"
            )
        text = (
            f"review flags are chosen per batch for {self.target_accuracy:.0%} accuracy of the "
            "unflagged"
        )
        if self.expected_accuracy is not None and self.expected_coverage is not None:
            lo, hi = self.accuracy_interval or (np.nan, np.nan)
            kept = round(self.expected_coverage * (self.evidence or 0))
            text += (
                f" (in cross-validation, confidence ≥ {self.min_confidence:.2f} left "
                f"{self.expected_coverage:.0%} of the labelled segments unflagged, "
                f"{self.expected_accuracy:.0%} right [{INTERVAL_LEVEL:.0%}: {lo:.0%}–{hi:.0%}, "
                f"{kept} segments])"
            )
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReviewRule:
        data = dict(data)
        if data.get("accuracy_interval") is not None:
            data["accuracy_interval"] = tuple(data["accuracy_interval"])
        return cls(**data)


def accuracy_interval(right: int, n: int, level: float = INTERVAL_LEVEL) -> tuple[float, float]:
    """Two-sided Clopper–Pearson interval for a share of ``right`` out of ``n``."""
    from scipy.stats import beta

    tail = (1 - level) / 2
    lo = 0.0 if right == 0 else float(beta.ppf(tail, right, n - right + 1))
    hi = 1.0 if right == n else float(beta.ppf(1 - tail, right + 1, n - right))
    return lo, hi


def confidence_threshold(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest confidence threshold whose kept (>= threshold) predictions reach ``target``
    accuracy on held-out data; above 1 (flag everything) when no threshold does."""
    order = np.argsort(-confidence, kind="stable")
    kept_accuracy = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.flatnonzero(kept_accuracy >= target)
    if len(ok) == 0:
        return 1.01
    return float(confidence[order][ok[-1]])


def rule_at(
    threshold: float,
    confidence: np.ndarray | None,
    correct: np.ndarray | None,
    **settings: Any,
) -> ReviewRule:
    """A review rule at ``threshold``, with what the evidence says it gives."""
    threshold = round(threshold, DECIMALS)
    if confidence is None or correct is None or len(confidence) == 0:
        return ReviewRule(threshold, **settings)
    kept = confidence >= threshold
    right, n = int(correct[kept].sum()), int(kept.sum())
    return ReviewRule(
        min_confidence=threshold,
        expected_coverage=float(kept.mean()),
        expected_accuracy=right / n if n else None,
        accuracy_interval=accuracy_interval(right, n) if n else None,
        evidence=int(len(confidence)),
        **settings,
    )


def choose_review_rule(
    confidence: np.ndarray | None,
    correct: np.ndarray | None,
    *,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    min_margin: float = 0.0,
    min_similarity: float = 0.0,
) -> ReviewRule:
    """Choose the confidence threshold from out-of-fold confidence/correctness on the labelled
    set. With no such evidence (too few labels to cross-validate) the threshold falls back to
    the target itself on the uncalibrated confidences, and the rule says it is not calibrated."""
    if not 0 < target_accuracy <= 1:
        raise QualcodeError(f"--target-accuracy must be between 0 and 1, not {target_accuracy}")
    settings = {
        "min_margin": min_margin,
        "min_similarity": min_similarity,
        "target_accuracy": target_accuracy,
    }
    if confidence is None or correct is None:
        return ReviewRule(min(target_accuracy, 1.0), **settings)
    return rule_at(
        confidence_threshold(confidence, correct, target_accuracy), confidence, correct, **settings
    )


def calibrated_threshold(confidence: np.ndarray, target: float) -> float:
    """The lowest threshold at which the segments kept (confidence >= threshold) average a
    calibrated confidence of at least ``target``: their expected accuracy, if the model is
    calibrated on this material. Above 1 (flag everything) when no threshold does."""
    order = np.sort(confidence)[::-1]
    mean_kept = np.cumsum(order) / np.arange(1, len(order) + 1)
    # A cut is only possible where the next value is lower: ties are kept or flagged together.
    cut = np.append(order[1:] < order[:-1], True)
    ok = np.flatnonzero((mean_kept >= target) & cut)
    return float(order[ok[-1]]) if len(ok) else 1.01


def fit_to_batch(
    rule: ReviewRule,
    confidence: np.ndarray,
    *,
    evidence: tuple[np.ndarray, np.ndarray] | None = None,
    max_flagged: float | None = None,
) -> ReviewRule:
    """The review rule for one batch with these (calibrated) ``confidence`` values.

    A calibrated model's threshold is chosen on the batch itself (:func:`calibrated_threshold`):
    labelled segments and new material differ (report prose vs two-word notes), and the same
    confidence means more on the notes than cross-validation on the prose suggests (notes dev
    set: 35 % → 42 % unflagged, at 96 % accuracy; BENCHMARKS.md). What cross-validation says
    of that threshold is kept as a check (``expected_accuracy``). ``max_flagged`` (a share)
    then lowers the threshold, if needed, so that at most that share is flagged for low
    confidence."""
    threshold = rule.min_confidence
    if rule.calibrated and rule.target_accuracy is not None and len(confidence):
        threshold = calibrated_threshold(confidence, rule.target_accuracy)
    if max_flagged is not None:
        if not 0 <= max_flagged <= 1:
            raise QualcodeError(f"--max-flagged must be a share between 0 and 1, not {max_flagged}")
        allowed = int(np.floor(max_flagged * len(confidence)))
        if int((confidence < threshold).sum()) > allowed:
            threshold = float(np.sort(confidence)[allowed])
    oof_confidence, oof_correct = evidence or (None, None)
    return rule_at(
        threshold,
        oof_confidence,
        oof_correct,
        min_margin=rule.min_margin,
        min_similarity=rule.min_similarity,
        target_accuracy=rule.target_accuracy,
        max_flagged=max_flagged,
    )


def read_inputs(
    paths: Sequence[str | Path], *, column: str | None = None, unit: str = "paragraph"
) -> pd.DataFrame:
    """Segments to classify: segments tables (with a ``text`` column) are read as they are;
    documents (and survey exports with ``column``) are segmented on the fly."""
    from qualcode.segment import segment
    from qualcode.tables import check_text_lengths, read_segments_table

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
    contract in :mod:`qualcode.coded`). An input column is never replaced: where the input has a
    column of the same name (a coder's ``theme``), the model's is ``model_<name>``. ``themes``
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
    texts = segments["text"].astype(str).tolist()
    coded = code_batch(
        clf,
        rule or model.review_rule,
        texts,
        adapt=adapt,
        max_flagged=max_flagged,
        evidence=model.review_evidence,
    )
    proba, order = coded.proba, coded.order
    classes = [str(c) for c in clf.classes_]

    columns: dict[str, Any] = {
        "theme": [classes[j] for j in order[:, 0]],
        "confidence": coded.confidence,
        "second_theme": [classes[j] for j in order[:, 1]],
        "margin": coded.margin,
        "needs_review": coded.flags,
        "review_reason": coded.reasons,
        "themes": theme_lists(proba, order, classes, model, clf.multi_label),
        "similarity": np.round(coded.similarity, DECIMALS),
    }
    assert list(columns) == list(PREDICTION_COLUMNS)
    for j, theme in enumerate(classes):
        columns[f"p_{theme}"] = np.round(proba[:, j], DECIMALS)
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
    flagged = predictions[model_column(predictions, "needs_review")].astype(bool)
    n, k = len(predictions), int(flagged.sum())
    if not n:
        return "no segments"
    text = f"{k} of {n} segments need review ({k / n:.0%})"
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
    """Themes × segments × flagged, in codebook order (the model's dominant theme)."""
    themes = predictions[model_column(predictions, "theme")]
    flags = predictions[model_column(predictions, "needs_review")].astype(bool)
    rows = []
    for theme in model.codebook.themes:
        mine = themes == theme.id
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
    from qualcode.tables import write_table

    out = predictions.copy()
    column = model_column(out, "needs_review")
    out[column] = np.where(out[column].astype(bool), "true", "false")
    write_table(out, path, excel=excel)
