"""The review rule: when a segment is flagged for the analyst, and what the unflagged ones are
expected to give.

The threshold is chosen at training from out-of-fold predictions on the labelled segments, and
per batch from its calibrated confidences (:func:`fit_to_batch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from qualcode.errors import QualcodeError

DEFAULT_TARGET_ACCURACY = 0.9


DECIMALS = 4  # probabilities in the predictions file


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
