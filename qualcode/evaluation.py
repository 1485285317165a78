"""How good is a model trained on these labels? Nested cross-validation on a labelled set.

Each outer fold trains exactly what ``qualcode train`` trains (inner CV for C, temperature and the
review rule) and predicts the held-out fold, so the figures are honest estimates for new material.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from sklearn.model_selection import StratifiedKFold

from qualcode.classification import code_batch
from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.training import TrainingSettings, fit_classifier, prepare_labels

COVERAGE_LEVELS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


@dataclass
class Evaluation:
    """Out-of-fold predictions on a labelled set and the metrics computed from them."""

    classes: list[str]
    truth: np.ndarray  # true theme index per segment (dominant theme)
    proba: np.ndarray  # out-of-fold probabilities
    flagged: np.ndarray  # flagged by the review rule chosen inside each training fold
    folds: int
    target_accuracy: float

    @property
    def predicted(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def per_theme(self) -> pd.DataFrame:
        labels = list(range(len(self.classes)))
        p, r, f, n = precision_recall_fscore_support(
            self.truth, self.predicted, labels=labels, zero_division=0
        )
        return pd.DataFrame(
            {"theme": self.classes, "precision": p, "recall": r, "f1": f, "support": n}
        ).round(3)

    def confusion(self) -> pd.DataFrame:
        labels = list(range(len(self.classes)))
        matrix = confusion_matrix(self.truth, self.predicted, labels=labels)
        return pd.DataFrame(matrix, index=self.classes, columns=self.classes)

    def risk_coverage(self, levels: tuple[float, ...] = COVERAGE_LEVELS) -> pd.DataFrame:
        """Accuracy of the most confident share of predictions, for several shares."""
        confidence = self.proba.max(axis=1)
        correct = self.predicted == self.truth
        order = np.argsort(-confidence, kind="stable")
        rows = []
        for level in levels:
            k = max(1, int(round(level * len(order))))
            kept = order[:k]
            rows.append(
                {
                    "coverage": level,
                    "min_confidence": round(float(confidence[kept].min()), 3),
                    "accuracy": round(float(correct[kept].mean()), 3),
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> dict[str, Any]:
        correct = self.predicted == self.truth
        kept = ~self.flagged
        present = sorted(set(self.truth.tolist()))
        return {
            "segments": len(self.truth),
            "folds": self.folds,
            "macro_f1": round(
                float(f1_score(self.truth, self.predicted, labels=present, average="macro")), 4
            ),
            "accuracy": round(float(accuracy_score(self.truth, self.predicted)), 4),
            "review": {
                "target_accuracy": self.target_accuracy,
                "coverage": round(float(kept.mean()), 4),
                "unflagged_accuracy": round(float(correct[kept].mean()), 4) if kept.any() else None,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "per_theme": self.per_theme().to_dict(orient="records"),
            "confusion": {"themes": self.classes, "matrix": self.confusion().values.tolist()},
            "risk_coverage": self.risk_coverage().to_dict(orient="records"),
        }


def evaluate(
    labels: pd.DataFrame,
    codebook: Codebook,
    settings: TrainingSettings | None = None,
    *,
    folds: int = 5,
    adapt: bool = False,
    progress: bool = True,
    **options: Any,
) -> Evaluation:
    """Stratified ``folds``-fold nested cross-validation of ``qualcode train`` on ``labels``
    (``options``: :class:`~qualcode.training.TrainingSettings` fields); with ``adapt`` each
    held-out fold is coded as ``classify`` codes a batch (learning from it first)."""
    settings = replace(settings or TrainingSettings(), **options)
    labels = prepare_labels(labels, codebook)
    texts = labels["text"].astype(str).tolist()
    themes = labels["theme"].astype(str).tolist()
    classes = list(codebook.ids)
    truth = np.array([classes.index(t.split(";")[0]) for t in themes])
    counts = np.bincount(truth, minlength=len(classes))
    k = min(folds, int(counts[counts > 0].min()))
    if k < 2:
        rare = [classes[i] for i in np.flatnonzero(counts == 1)]
        raise QualcodeError(
            f"cannot cross-validate: theme(s) {', '.join(rare)} have a single labelled segment"
        )
    proba = np.zeros((len(texts), len(classes)))
    flagged = np.zeros(len(texts), dtype=bool)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=settings.seed)
    for train_idx, test_idx in splitter.split(np.zeros(len(truth)), truth):
        clf, rule = fit_classifier(
            [texts[i] for i in train_idx],
            [themes[i] for i in train_idx],
            codebook,
            settings,
            progress=progress,
        )
        coded = code_batch(clf, rule, [texts[i] for i in test_idx], adapt=adapt)
        proba[test_idx], flagged[test_idx] = coded.proba, coded.flags
    return Evaluation(classes, truth, proba, flagged, k, settings.target_accuracy)


def cross_val_proba(
    texts: list[str],
    themes: list[str],
    codebook: Codebook,
    *,
    folds: int = 5,
    encoder: str | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """Out-of-fold theme probabilities for a labelled set (columns: the returned classes): the
    ones training computes anyway to choose its settings and calibrate, at the settings chosen
    (one fit, not a nested cross-validation: 206 labels take seconds, not minutes)."""
    from qualcode.model.classifier import ThemeClassifier

    dominant = [str(t).split(";")[0] for t in themes]
    clf = ThemeClassifier(encoder=encoder, codebook=codebook, cv=folds, random_state=seed)
    clf.fit(list(texts), dominant)
    if clf.oof_proba_ is None:  # too few labels to cross-validate
        raise QualcodeError("too few labels per theme to cross-validate")
    return clf.oof_proba_, [str(c) for c in clf.classes_]
