"""What a saved model holds, and saving and loading it.

A saved model is a directory that runs no code on load::

    model.json        model card: encoder identity, codebook and data hashes, themes, CV metrics,
                      review rule, versions, date
    codebook.yaml     the codebook it was trained with
    head.npz          classifier weights and the training embeddings (float arrays only)
    lexical.json      the character n-gram vocabulary of the lexical head (when it has a share)
    tfidf.json        vocabulary and idf (tf-idf baseline only)
    encoder/          the fine-tuned encoder (``--finetune`` only)
    qualcode_manifest.json   sha256 of every file, checked on load
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from qualcode.codebook import Codebook, load_codebook
from qualcode.errors import QualcodeError, crash_point
from qualcode.files.tables import lock_beside
from qualcode.model.classifier import ThemeClassifier, get_encoder
from qualcode.model.encoders import (
    MANIFEST,
    TFIDF,
    CharNgramEncoder,
    encoder_identity,
    verify_manifest,
    write_manifest,
)
from qualcode.model.review_rule import ReviewRule, choose_review_rule

MODEL_FORMAT = 2


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
        if clf.multi_label:
            arrays["calibration_bias"] = np.array([clf.calibration_bias_])
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
        if clf.encoder is not None and not isinstance(clf.encoder, str):  # fine-tuned, in memory
            clf.encoder.save(str(out / "encoder"))
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
    """The versions a model was trained with, from package metadata (importing torch and
    sentence-transformers for them would cost seconds when every embedding is cached)."""

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {
        "qualcode": installed("qualcode"),
        "python": platform.python_version(),
        "scikit-learn": installed("scikit-learn"),
        "sentence-transformers": installed("sentence-transformers"),
        "torch": installed("torch"),
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


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


def model_folders(near: list[Path]) -> list[Path]:
    """Folders holding a saved model that may have made the files in ``near``: beside each
    file or its folder, in a ``models/`` folder there, and in ``models/`` here; newest first."""
    places = [Path("models")]
    for path in near:
        for folder in (path.parent, path.parent.parent):
            places += [folder, folder / "models"]
    found: dict[Path, Path] = {}
    for place in places:
        try:
            cards = list(place.glob("*/model.json"))
        except OSError:  # unreadable or gone: not where the model is
            continue
        for card in cards:
            if card.parent.name.startswith("."):  # a model being written or replaced
                continue
            try:
                found.setdefault(card.parent.resolve(), (card.stat().st_mtime, card.parent))
            except OSError:
                continue
    return [folder for _, folder in sorted(found.values(), key=lambda m: -m[0])]


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
            f"in model format {card.get('format')}; this qualcode ({version('qualcode')}) reads "
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
            from qualcode.model.encoders import open_encoder

            clf.encoder = open_encoder(directory / "encoder")
        actual = encoder_identity(get_encoder(clf.encoder))
        if not enc.get("finetuned") and actual != enc["identity"]:
            raise QualcodeError(
                f"the encoder {enc['name']} differs from the one this model was trained with "
                f"({actual} vs {enc['identity']}): retrain the model"
            )
    classes = np.array(card["codebook"]["themes"], dtype=object)
    clf.classes_ = classes
    clf.temperature_ = float(head["temperature"][0])
    if card["multi_label"]:
        # models saved before multi-label calibration: their temperature is 1, no bias
        clf.calibration_bias_ = float(head.get("calibration_bias", [0.0])[0])
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
