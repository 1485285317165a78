"""Step 3: train a theme model from labelled segments, and save / load it.

Labels CSV contract: ``text`` and ``theme`` (several themes separated by ``;``, dominant first;
theme ids or labels from the codebook); every other column is kept but not used. Rows with an
empty ``theme`` are ignored (skipped segments).

A saved model is a directory that runs no code on load::

    model.json        model card: encoder identity, codebook and data hashes, themes, CV metrics,
                      review rule, versions, date
    codebook.yaml     the codebook it was trained with
    head.npz          classifier weights and the training embeddings (float arrays only)
    tfidf.json        vocabulary and idf (tf-idf baseline only)
    encoder/          the fine-tuned encoder (``--finetune`` only)
    qualcode_manifest.json   sha256 of every file, checked on load
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import qualcode
from qualcode.classifier import (
    ThemeClassifier,
    fit_temperature,
    forget_encoder,
    get_encoder,
    register_encoder,
    softmax,
)
from qualcode.classify import DEFAULT_TARGET_ACCURACY, ReviewRule, choose_review_rule
from qualcode.codebook import Codebook, load_codebook
from qualcode.encoders import (
    BUNDLED,
    MANIFEST,
    TFIDF,
    CharNgramEncoder,
    encoder_identity,
    verify_manifest,
    write_manifest,
)
from qualcode.errors import QualcodeError, crash_point
from qualcode.tables import check_text_lengths, lock_beside, read_table

MODEL_FORMAT = 2
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
    ids = table["segment_id"].astype(str) if "segment_id" in table.columns else None
    key = table["text"].astype(str).str.strip()
    if ids is not None:
        key = ids.where(ids.str.strip() != "", key)
    if "coder" in table.columns:
        key = key + "\x1f" + table["coder"].astype(str).str.strip()
    table = table[~key.duplicated(keep="last")]
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


@dataclass
class ThemeModel:
    """A trained classifier with its codebook, review rule and model card."""

    classifier: ThemeClassifier
    codebook: Codebook
    review_rule: ReviewRule
    card: dict[str, Any] = field(default_factory=dict)
    review_evidence: tuple[np.ndarray, np.ndarray] | None = None

    def describe(self) -> str:
        """One line on what was trained and its review rule."""
        cv = self.card.get("cv", {})
        n = self.card.get("training_data", {}).get("segments", "?")
        if cv.get("macro_f1") is None:
            per_theme = self.card.get("training_data", {}).get("per_theme", {})
            short = [f"{t} ({c})" for t, c in per_theme.items() if c == 1]
            scores = (
                "not cross-validated: every theme in use needs at least 2 labels, and "
                f"{', '.join(short) or 'some theme'} has 1; label 1 more segment for each "
                f"(5 or more per theme make the review flags reliable)"
            )
        else:
            scores = f"cross-validated macro-F1 {cv['macro_f1']:.2f}, accuracy {cv['accuracy']:.2f}"
        return f"trained on {n} labelled segments ({scores}); {self.review_rule.describe()}"

    @property
    def second_theme_threshold(self) -> float | None:
        """See :func:`second_theme_threshold`."""
        return self.card.get("classifier", {}).get("second_theme_threshold")

    def rule_for(self, target_accuracy: float) -> ReviewRule:
        """The review rule re-chosen for another target accuracy from the same CV evidence."""
        confidence, correct = self.review_evidence or (None, None)
        return choose_review_rule(
            confidence,
            correct,
            target_accuracy=target_accuracy,
            min_margin=self.review_rule.min_margin,
            min_similarity=self.review_rule.min_similarity,
        )

    @property
    def classes_(self) -> np.ndarray:
        return self.classifier.classes_

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.classifier.predict_proba(texts)

    def save(self, directory: str | Path) -> Path:
        """Write the model directory atomically: a complete new directory replaces the old one
        under a lock, so the path always holds a loadable model (see :func:`_swap_in`)."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        if directory.exists() and not directory.is_dir():
            raise QualcodeError(f"-o {str(directory)!r} is a file: a model needs its own folder")
        with lock_beside(directory):
            recover_model_dir(directory)
            foreign = _foreign_files(directory)
            if foreign:
                raise QualcodeError(
                    f"{directory} holds files qualcode did not write ({', '.join(foreign[:3])}"
                    f"{' …' if len(foreign) > 3 else ''}): move them or choose another -o; "
                    "nothing was written"
                )
            staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}-"))
            try:
                self._write(staging)
                write_manifest(staging, kind="qualcode-model", format=MODEL_FORMAT)
                _swap_in(staging, directory)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return directory

    def _write(self, out: Path) -> None:
        clf = self.classifier
        arrays: dict[str, np.ndarray] = {
            "train_features": clf.train_features_,
            "temperature": np.array([clf.temperature_]),
        }
        if clf.centroids_ is not None:
            arrays["centroids"] = clf.centroids_
        oof = review_evidence(clf)
        if oof is not None:
            arrays["oof_confidence"], arrays["oof_correct"] = oof
        if clf.multi_label:
            for j, head in enumerate(clf.heads_):
                if isinstance(head, LogisticRegression):
                    arrays[f"coef_{j}"] = head.coef_
                    arrays[f"intercept_{j}"] = head.intercept_
                else:
                    arrays[f"constant_{j}"] = np.array([head])
        else:
            arrays["coef"] = clf.head_.coef_
            arrays["intercept"] = clf.head_.intercept_
            arrays["head_classes"] = clf.head_.classes_.astype(np.int64)
            arrays["train_target"] = clf.oof_target_.astype(np.int64)
            if clf.proto_features_ is not None:
                arrays["proto_features"] = clf.proto_features_
                arrays["proto_target"] = clf.proto_target_.astype(np.int64)
            if clf.lexical_head_ is not None:
                arrays["lexical_coef"] = clf.lexical_head_.coef_
                arrays["lexical_intercept"] = clf.lexical_head_.intercept_
                arrays["lexical_classes"] = clf.lexical_head_.classes_.astype(np.int64)
                (out / "lexical.json").write_text(json.dumps(clf.lexical_.to_dict()))
        np.savez(out / "head.npz", **arrays)
        if clf.encoder == TFIDF:
            (out / "tfidf.json").write_text(json.dumps(clf.tfidf_.to_dict()))
        encoder_dir = getattr(clf, "finetuned_encoder_", None)
        if encoder_dir is not None:
            encoder_dir.save(str(out / "encoder"))
            write_manifest(out / "encoder")
        codebook_text = (
            self.codebook.path.read_text(encoding="utf-8")
            if self.codebook.path and Path(self.codebook.path).exists()
            else None
        )
        if codebook_text is None:
            raise QualcodeError("the codebook must come from a file to be saved with the model")
        (out / "codebook.yaml").write_text(codebook_text, encoding="utf-8")
        (out / "model.json").write_text(
            json.dumps(self.card, indent=2, ensure_ascii=False, default=_json_default),
            encoding="utf-8",
        )


SYSTEM_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")  # what file browsers drop in folders


def _foreign_files(directory: Path) -> list[str]:
    """Files in an existing model directory that its manifest does not list (an analyst's note):
    a retrain must not delete them. A folder that is not a model counts as all foreign."""
    if not directory.is_dir():
        return []
    try:
        listed = set(json.loads((directory / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        listed = set()
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if (p.is_file() or p.is_symlink())
        and p.name not in (MANIFEST, *SYSTEM_FILES)
        and str(p.relative_to(directory)) not in listed
    )


def _swap_in(staging: Path, directory: Path) -> None:
    """Replace ``directory`` by ``staging``: the old model is renamed aside first, so a kill
    between the two renames leaves it in ``.<name>.old``, where :func:`recover_model_dir` finds
    it again."""
    old = directory.with_name(f".{directory.name}.old")
    crash_point("model-staged")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    crash_point("model-swap")
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def recover_model_dir(directory: Path) -> None:
    """After an interrupted save: put the previous model back if the new one never arrived,
    and remove leftovers (the aside copy, staging folders). Call with the directory's lock."""
    old = directory.with_name(f".{directory.name}.old")
    if old.is_dir() and not directory.exists():
        old.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    # Exactly the staging folders of this model (mkdtemp adds 8 characters), not another
    # model's whose name starts the same.
    staging = re.compile(re.escape(f".{directory.name}-") + r"[a-z0-9_]{8}")
    for stale in directory.parent.iterdir():
        if staging.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value).__name__)


def _versions() -> dict[str, str]:
    import sentence_transformers
    import sklearn
    import torch

    return {
        "qualcode": qualcode.__version__,
        "python": platform.python_version(),
        "scikit-learn": sklearn.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


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


def correct_predictions(clf: ThemeClassifier) -> np.ndarray | None:
    """Whether each out-of-fold top prediction is one of the segment's themes."""
    if clf.oof_proba_ is None:
        return None
    top = clf.oof_proba_.argmax(axis=1)
    target = clf.oof_target_
    if target.ndim == 2:
        return target[np.arange(len(top)), top] == 1
    return top == target


def review_evidence(clf: ThemeClassifier) -> tuple[np.ndarray, np.ndarray] | None:
    """Out-of-fold confidence and correctness: what review thresholds are chosen from."""
    correct = correct_predictions(clf)
    if correct is None:
        return None
    return clf.oof_proba_.max(axis=1), correct


def _register_finetuned(encoder: Any) -> str:
    """Register a fine-tuned encoder in memory under a name of its weights; return the name."""
    name = f"finetuned:{encoder_identity(encoder)}"
    register_encoder(name, encoder)
    return name


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
    from qualcode.finetune import finetune_encoder

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
        name = _register_finetuned(encoder)
        try:
            head = ThemeClassifier(
                encoder=name,
                codebook=codebook,
                C=clf.C_,
                prior_weight=clf.prior_weight_,
                lexical_weight=clf.lexical_weight_,
                random_state=seed,
            ).fit(train_texts, train_themes)
            logits[test] = head.decision_function([texts[i] for i in test])
        finally:
            forget_encoder(name)
    clf.temperature_ = fit_temperature(logits, y)
    clf.oof_proba_ = softmax(logits / clf.temperature_)
    clf.oof_target_ = y
    score = f1_score(y, logits.argmax(1), average="macro")
    clf.cv_scores_ = {(clf.C_, clf.prior_weight_, clf.lexical_weight_): float(score)}


def fit_classifier(
    texts: list[str],
    themes: list[str],
    codebook: Codebook | None,
    *,
    encoder: str | None = None,
    multi_label: bool = False,
    finetune: bool = False,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    seed: int = 0,
    progress: bool = True,
) -> tuple[ThemeClassifier, ReviewRule]:
    """Fit a :class:`ThemeClassifier` and choose its review rule from cross-validation."""
    if finetune and multi_label:
        raise QualcodeError(
            "--finetune cannot be combined with --multi-label yet: the review flags would come "
            "from an encoder that has seen every label. Train with one of the two."
        )
    first = [t.split(";")[0] for t in themes]  # the dominant theme of each segment
    y: list[Any] = [t.split(";") for t in themes] if multi_label else first
    encoder_name = encoder
    finetuned = None
    if finetune:
        from qualcode.finetune import finetune_encoder

        base = None if encoder in (None, BUNDLED) else encoder
        if encoder == TFIDF:
            raise QualcodeError("--finetune needs a sentence-transformers encoder, not tfidf")
        finetuned = finetune_encoder(
            get_encoder(base),
            texts,
            first,
            codebook,
            seed=seed,
            progress=progress,
        )
        encoder_name = _register_finetuned(finetuned)
    fixed = (
        {"C": FINETUNED_HEAD_C, "prior_weight": FINETUNED_PRIOR_WEIGHT, "lexical_weight": 0.0}
        if finetune
        else {}
    )
    clf = ThemeClassifier(
        encoder=encoder_name,
        codebook=codebook,
        multi_label=multi_label,
        random_state=seed,
        progress=progress,
        **fixed,
    ).fit(texts, y)
    clf.finetuned_encoder_ = finetuned
    if finetune and not multi_label:
        _crossfit(clf, texts, first, codebook, base, seed, progress)
    confidence, correct = review_evidence(clf) or (None, None)
    rule = choose_review_rule(confidence, correct, target_accuracy=target_accuracy)
    return clf, rule


def train(
    labels: pd.DataFrame,
    codebook: Codebook,
    *,
    encoder: str | None = None,
    multi_label: bool = False,
    finetune: bool = False,
    target_accuracy: float = DEFAULT_TARGET_ACCURACY,
    seed: int = 0,
    progress: bool = True,
) -> ThemeModel:
    """Train a theme model on a labels table (see the module docstring for the contract)."""
    labels = prepare_labels(labels, codebook)
    texts = labels["text"].astype(str).tolist()
    themes = labels["theme"].astype(str).tolist()
    clf, rule = fit_classifier(
        texts,
        themes,
        codebook,
        encoder=encoder,
        multi_label=multi_label,
        finetune=finetune,
        target_accuracy=target_accuracy,
        seed=seed,
        progress=progress,
    )
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


def load_model(directory: str | Path, codebook: Codebook | None = None) -> ThemeModel:
    """Load a saved model directory, checking its integrity, format, codebook and encoder."""
    try:
        return _load_model(Path(directory), codebook)
    except (KeyError, TypeError, IndexError) as err:
        raise QualcodeError(
            f"{directory} has an incomplete or altered model card or weights ({type(err).__name__}:"
            f" {err}): retrain the model with `qualcode train`"
        ) from None


def _load_model(directory: Path, codebook: Codebook | None) -> ThemeModel:
    if not directory.exists() and directory.with_name(f".{directory.name}.old").is_dir():
        with lock_beside(directory):
            recover_model_dir(directory)  # a retrain was killed mid-swap: the old model is back
    if not directory.is_dir():
        raise QualcodeError(f"model directory {directory} does not exist")
    if not (directory / "model.json").exists():
        raise QualcodeError(f"{directory} is not a qualcode model (no model.json)")
    verify_manifest(directory)
    try:
        card = json.loads((directory / "model.json").read_text(encoding="utf-8"))
        head = dict(np.load(directory / "head.npz", allow_pickle=False))
    except (ValueError, OSError) as err:
        raise QualcodeError(f"{directory} is corrupt: {err}") from err
    if card.get("format") != MODEL_FORMAT:
        raise QualcodeError(
            f"{directory} was saved by qualcode {card.get('versions', {}).get('qualcode', '?')} "
            f"in model format {card.get('format')}; this qualcode ({qualcode.__version__}) reads "
            f"format {MODEL_FORMAT}: retrain the model with `qualcode train`"
        )
    saved_codebook = load_codebook(directory / "codebook.yaml")
    if codebook is not None and codebook.sha256 != saved_codebook.sha256:
        raise QualcodeError(
            f"{directory} was trained for a different codebook ({saved_codebook.name}, "
            f"{saved_codebook.sha256[:12]}) than the one given ({codebook.sha256[:12]}): retrain"
        )
    if card["codebook"]["sha256"] != saved_codebook.sha256:
        raise QualcodeError(f"{directory}: codebook.yaml does not match the model card")

    enc = card["encoder"]
    clf = ThemeClassifier(
        encoder=enc["name"], codebook=saved_codebook, multi_label=card["multi_label"]
    )
    if enc["name"] == TFIDF:
        state = json.loads((directory / "tfidf.json").read_text())
        clf.tfidf_ = CharNgramEncoder.from_dict(state)
    else:
        if enc.get("finetuned"):
            from qualcode.encoders import load_encoder

            model = load_encoder(directory / "encoder")
            model._qualcode_identity = enc["identity"]
            clf.encoder = _register_finetuned(model)
        actual = encoder_identity(get_encoder(clf.encoder))
        if not enc.get("finetuned") and actual != enc["identity"]:
            raise QualcodeError(
                f"the encoder {enc['name']} differs from the one this model was trained with "
                f"({actual} vs {enc['identity']}): retrain the model"
            )
    classes = np.array(card["codebook"]["themes"], dtype=object)
    clf.classes_ = classes
    clf.temperature_ = float(head["temperature"][0])
    clf.train_features_ = head["train_features"]
    clf.C_ = card["classifier"]["C"]
    clf.prior_weight_ = card["classifier"]["prior_weight"]
    clf.centroids_ = head.get("centroids")
    if card["multi_label"]:
        clf.heads_ = []
        for j in range(len(classes)):
            if f"coef_{j}" in head:
                clf.heads_.append(_logistic(head[f"coef_{j}"], head[f"intercept_{j}"], [0, 1]))
            else:
                clf.heads_.append(float(head[f"constant_{j}"][0]))
    else:
        clf.head_ = _logistic(head["coef"], head["intercept"], head["head_classes"])
        clf.oof_target_ = head["train_target"]
        clf.proto_features_ = head.get("proto_features")
        clf.proto_target_ = head.get("proto_target")
        clf.lexical_weight_ = card["classifier"].get("lexical_weight", 0.0)
        clf.lexical_, clf.lexical_head_ = None, None
        if "lexical_coef" in head:
            state = json.loads((directory / "lexical.json").read_text())
            clf.lexical_ = CharNgramEncoder.from_dict(state)
            clf.lexical_head_ = _logistic(
                head["lexical_coef"], head["lexical_intercept"], head["lexical_classes"]
            )
    model = ThemeModel(clf, saved_codebook, ReviewRule.from_dict(card["review_rule"]), card)
    if "oof_confidence" in head:
        model.review_evidence = (head["oof_confidence"], head["oof_correct"].astype(bool))
    return model


def _logistic(coef: np.ndarray, intercept: np.ndarray, classes: Any) -> LogisticRegression:
    head = LogisticRegression()
    head.coef_, head.intercept_ = coef, intercept
    head.classes_ = np.asarray(classes)
    head.n_features_in_ = coef.shape[1]
    return head
