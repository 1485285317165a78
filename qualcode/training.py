"""Step 3: train a theme model from labelled segments (what a saved model holds, and saving and
loading it: :mod:`qualcode.model.storage`).

Labels CSV contract: ``text`` and ``theme`` (several themes separated by ``;``, dominant first;
theme ids or labels from the codebook); every other column is kept but not used. Rows with an
empty ``theme`` are ignored (skipped segments).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.files.labels import last_answers, segment_keys
from qualcode.files.tables import check_text_lengths, read_table
from qualcode.model.classifier import (
    ThemeClassifier,
    fit_temperature,
    get_encoder,
    softmax,
)
from qualcode.model.encoders import BUNDLED, TFIDF, encoder_identity
from qualcode.model.review_rule import DEFAULT_TARGET_ACCURACY, ReviewRule, choose_review_rule
from qualcode.model.storage import (
    MODEL_FORMAT,
    ThemeModel,
    _versions,
    correct_predictions,
    review_evidence,
)

LABEL_COLUMNS = ["text", "theme"]
# A second theme joins ``themes`` when its probability reaches the lowest threshold at which,
# out of fold, such second themes were the coder's at least this often (and at least
# SECOND_THEME_MIN times); without that evidence no second theme is added.
SECOND_THEME_PRECISION = 0.5
SECOND_THEME_MIN = 5
# After fine-tuning, the encoder has seen every labelled segment, so cross-validation on its
# embeddings is leaky (8-shot: out-of-fold macro-F1 1.0 for every C and prior weight, and a
# temperature that makes every prediction look certain). The head keeps the defaults used when
# there is too little data to cross-validate (SIB-200 dev, 8-shot: 0.771 -> 0.803, mean of 5
# seeds; BENCHMARKS.md), and the temperature, review rule and card figures come from
# cross-fitting: fine-tune on one half of the labels, predict the other half, and swap.
FINETUNED_HEAD_C = 10.0
FINETUNED_PRIOR_WEIGHT = 0.25
CROSSFIT_FOLDS = 2


@dataclass(frozen=True)
class TrainingSettings:
    """How a theme model is trained: one object that ``train``, ``evaluate`` and the labeller's
    background retraining pass along (the CLI's ``train`` and ``evaluate`` options)."""

    encoder: str | None = None  # e5-small (bundled), tfidf, or a sentence-transformers model
    multi_label: bool = False
    finetune: bool = False
    target_accuracy: float = DEFAULT_TARGET_ACCURACY
    seed: int = 0


def read_labels(path: str | Path, codebook: Codebook) -> pd.DataFrame:
    """Read a labels CSV/XLSX, resolve themes against the codebook, drop unlabelled rows; a
    segment answered twice counts with its last answer (see :func:`read_label_files`)."""
    return read_label_files([path], codebook)


def read_label_files(paths: list[str | Path], codebook: Codebook) -> pd.DataFrame:
    """Read several labels files (e.g. the seed set, then labels from a batch) into one table:
    where a coder labelled a segment more than once, their last answer counts (files in the
    order given, rows in file order); different coders' answers all count. A segment is the
    same when its ``segment_id`` is, or, without ids, its text."""
    if not paths:
        raise QualcodeError("give at least one labels file")
    tables = []
    for path in paths:
        table = read_table(path, required=LABEL_COLUMNS, what="labels file")
        table = table[table["theme"].astype(str).str.strip() != ""]
        tables.append(table)
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    table = table.fillna("")  # files with different columns leave gaps, not NaN keys
    keyed = table.assign(
        _key=segment_keys(table),
        _coder=table["coder"].astype(str).str.strip() if "coder" in table.columns else "",
    )
    table = last_answers(keyed, "_key", "_coder").drop(columns=["_key", "_coder"])
    return prepare_labels(table, codebook, source=", ".join(str(p) for p in paths))


def prepare_labels(table: pd.DataFrame, codebook: Codebook, source: str = "labels") -> pd.DataFrame:
    """Validate a labels table: known themes (ids or labels), at least two themes in use."""
    missing = [c for c in LABEL_COLUMNS if c not in table.columns]
    if missing:
        raise QualcodeError(f"{source}: missing column(s) {', '.join(missing)}")
    table = table[table["theme"].astype(str).str.strip() != ""].copy()
    table = table[table["text"].astype(str).str.strip() != ""]
    if table.empty:
        raise QualcodeError(f"{source}: no labelled rows (every 'theme' cell is empty)")
    check_text_lengths(table["text"], source)
    codebook.check_themes(
        [t for cell in table["theme"] for t in str(cell).split(";") if t.strip()],
        what=source,
    )
    table["theme"] = [";".join(codebook.parse_themes(str(cell))) for cell in table["theme"]]
    used = {cell.split(";")[0] for cell in table["theme"]}
    if len(used) < 2:
        raise QualcodeError(
            f"{source}: every row has the theme {used.pop()!r}; label at least two themes to train"
        )
    return table.reset_index(drop=True)


def labels_sha256(labels: pd.DataFrame) -> str:
    rows = sorted(zip(labels["text"].astype(str), labels["theme"].astype(str)))
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()


def second_theme_threshold(clf: ThemeClassifier, themes: list[str]) -> float | None:
    """The probability from which a single-label model's second theme is listed in ``themes``
    (see SECOND_THEME_PRECISION), chosen on out-of-fold predictions; None without evidence."""
    if clf.multi_label or clf.oof_proba_ is None:
        return None
    index = {c: i for i, c in enumerate(clf.classes_)}
    sets = [{index[t] for t in cell.split(";")} for cell in themes]
    order = np.argsort(-clf.oof_proba_, axis=1)
    second_p = clf.oof_proba_[np.arange(len(order)), order[:, 1]]
    hit = np.array([order[i, 1] in s for i, s in enumerate(sets)])
    ranked = np.argsort(-second_p, kind="stable")
    precision = np.cumsum(hit[ranked]) / np.arange(1, len(ranked) + 1)
    ok = [
        k
        for k in range(SECOND_THEME_MIN - 1, len(ranked))
        if precision[k] >= SECOND_THEME_PRECISION
    ]
    return round(float(second_p[ranked][ok[-1]]), 4) if ok else None


def _crossfit(
    clf: ThemeClassifier,
    texts: list[str],
    themes: list[str],
    codebook: Codebook | None,
    base: str | None,
    seed: int,
    progress: bool,
) -> None:
    """Give a fine-tuned ``clf`` honest out-of-fold evidence (see FINETUNED_HEAD_C): per fold,
    fine-tune ``base`` on the other fold, fit the same head there and predict this fold. The
    temperature is refit on these predictions; with fewer than 2 labels for some theme there is
    no evidence, as without fine-tuning."""
    from qualcode.model.finetune import finetune_encoder, release_memory

    index = {c: i for i, c in enumerate(clf.classes_)}
    y = np.array([index[t] for t in themes])
    counts = np.bincount(y)
    if counts[counts > 0].min() < CROSSFIT_FOLDS:
        clf.oof_proba_, clf.cv_scores_, clf.temperature_ = None, {}, 1.0
        return
    logits = np.zeros((len(texts), len(clf.classes_)))
    folds = StratifiedKFold(CROSSFIT_FOLDS, shuffle=True, random_state=seed)
    for j, (train, test) in enumerate(folds.split(np.zeros(len(y)), y)):
        train_texts = [texts[i] for i in train]
        train_themes = [themes[i] for i in train]
        encoder = finetune_encoder(
            get_encoder(base),
            train_texts,
            train_themes,
            codebook,
            seed=seed + 1 + j,
            progress=progress,
        )
        head = ThemeClassifier(
            encoder=encoder,
            codebook=codebook,
            C=clf.C_,
            prior_weight=clf.prior_weight_,
            lexical_weight=clf.lexical_weight_,
            random_state=seed,
        ).fit(train_texts, train_themes)
        logits[test] = head.decision_function([texts[i] for i in test])
        del head, encoder  # one fine-tuned copy in memory at a time
        release_memory()
    clf.temperature_ = fit_temperature(logits, y)
    clf.oof_proba_ = softmax(logits / clf.temperature_)
    clf.oof_target_ = y
    score = f1_score(y, logits.argmax(1), average="macro")
    clf.cv_scores_ = {(clf.C_, clf.prior_weight_, clf.lexical_weight_): float(score)}


def fit_classifier(
    texts: list[str],
    themes: list[str],
    codebook: Codebook | None,
    settings: TrainingSettings | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> tuple[ThemeClassifier, ReviewRule]:
    """Fit a :class:`ThemeClassifier` and choose its review rule from cross-validation.
    ``options`` are :class:`TrainingSettings` fields, overriding ``settings``."""
    settings = replace(settings or TrainingSettings(), **options)
    encoder, multi_label, finetune = settings.encoder, settings.multi_label, settings.finetune
    target_accuracy, seed = settings.target_accuracy, settings.seed
    if finetune and multi_label:
        raise QualcodeError(
            "--finetune cannot be combined with --multi-label yet: the review flags would come "
            "from an encoder that has seen every label. Train with one of the two."
        )
    first = [t.split(";")[0] for t in themes]  # the dominant theme of each segment
    y: list[Any] = [t.split(";") for t in themes] if multi_label else first
    handle: Any = encoder
    if finetune:
        from qualcode.model.finetune import finetune_encoder

        base = None if encoder in (None, BUNDLED) else encoder
        if encoder == TFIDF:
            raise QualcodeError("--finetune needs a sentence-transformers encoder, not tfidf")
        handle = finetune_encoder(
            get_encoder(base),
            texts,
            first,
            codebook,
            seed=seed,
            progress=progress,
        )
    fixed = (
        {"C": FINETUNED_HEAD_C, "prior_weight": FINETUNED_PRIOR_WEIGHT, "lexical_weight": 0.0}
        if finetune
        else {}
    )
    clf = ThemeClassifier(
        encoder=handle,
        codebook=codebook,
        multi_label=multi_label,
        random_state=seed,
        progress=progress,
        **fixed,
    ).fit(texts, y)
    if finetune and not multi_label:
        _crossfit(clf, texts, first, codebook, base, seed, progress)
    confidence, correct = review_evidence(clf) or (None, None)
    rule = choose_review_rule(confidence, correct, target_accuracy=target_accuracy)
    return clf, rule


def train(
    labels: pd.DataFrame,
    codebook: Codebook,
    settings: TrainingSettings | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> ThemeModel:
    """Train a theme model on a labels table (see the module docstring for the contract).
    ``options`` are :class:`TrainingSettings` fields, e.g. ``train(labels, codebook,
    encoder="tfidf")``."""
    settings = replace(settings or TrainingSettings(), **options)
    encoder, multi_label, finetune = settings.encoder, settings.multi_label, settings.finetune
    labels = prepare_labels(labels, codebook)
    texts = labels["text"].astype(str).tolist()
    themes = labels["theme"].astype(str).tolist()
    clf, rule = fit_classifier(texts, themes, codebook, settings, progress=progress)
    correct = correct_predictions(clf)
    if clf.encoder == TFIDF:
        identity = TFIDF
    else:
        identity = encoder_identity(get_encoder(clf.encoder))
    counts = pd.Series([t.split(";")[0] for t in themes]).value_counts()
    card = {
        "format": MODEL_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoder": {
            "name": encoder or BUNDLED,
            "identity": identity,
            "finetuned": finetune,
        },
        "codebook": {"name": codebook.name, "sha256": codebook.sha256, "themes": codebook.ids},
        "training_data": {
            "sha256": labels_sha256(labels),
            "segments": len(labels),
            "per_theme": {t: int(counts.get(t, 0)) for t in codebook.ids},
        },
        "multi_label": multi_label,
        "classifier": {
            "head": "logistic regression (class-balanced) + codebook prototypes",
            "C": clf.C_,
            "prior_weight": getattr(clf, "prior_weight_", 0.0),
            "lexical_weight": getattr(clf, "lexical_weight_", 0.0),
            "cv_macro_f1_by_C_and_prior": {
                " ".join(f"{k}={v}" for k, v in zip(("C", "prior", "lexical"), key)): round(v, 4)
                for key, v in clf.cv_scores_.items()
            },
            "temperature": clf.temperature_,
            "second_theme_threshold": second_theme_threshold(clf, themes),
        },
        "cv": {
            "note": (
                "cross-fitted: the encoder fine-tuned on one half of the labels predicts the "
                "other half (pessimistic: half the data); run `qualcode evaluate` for a nested "
                "estimate"
                if finetune
                else "out-of-fold predictions at the chosen C (slightly optimistic: C was "
                "chosen on the same folds); run `qualcode evaluate` for a nested estimate"
            ),
            "macro_f1": round(max(clf.cv_scores_.values()), 4) if clf.cv_scores_ else None,
            "accuracy": round(float(correct.mean()), 4) if correct is not None else None,
        },
        "review_rule": rule.to_dict(),
        "versions": _versions(),
    }
    return ThemeModel(clf, codebook, rule, card, review_evidence(clf))
