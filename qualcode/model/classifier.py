"""`ThemeClassifier`: a scikit-learn estimator from segment texts to codebook themes.

Texts are embedded with a sentence encoder (cached), the codebook's theme descriptions join the
training data as prototypes, the regularisation C is chosen by stratified cross-validation, and
the probabilities are temperature-scaled on out-of-fold predictions so that "confidence" means
what it says.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted

from qualcode.errors import QualcodeError
from qualcode.model.encoders import (
    BUNDLED,
    TFIDF,
    CharNgramEncoder,
    embed,
    open_encoder,
)

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from qualcode.codebook import Codebook

C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
# How much the codebook-similarity prior counts against the trained head (chosen by CV).
PRIOR_GRID = (0.0, 0.25, 0.5)
PRIOR_TEMPERATURE = 0.02
# The lexical head (character n-gram tf-idf) catches what embeddings of a two-word note blur:
# the codebook's own words ("Erfarenhetsutbyte", "SIP", "uppföljning"). Its share of the
# log-probabilities is chosen by CV from this grid (notes dev set: macro-F1 0.69 -> 0.73 at 0.25;
# BENCHMARKS.md).
LEXICAL_GRID = (0.0, 0.25)
LEXICAL_C = 3.0
LEXICAL_NGRAMS = (3, 5)
# Self-training on the batch: the most confident share of its predictions join the training data
# (weighted by confidence) for one refit of the embedding head. Fewer segments than ADAPT_MIN
# are too few to learn from.
ADAPT_SHARE = 0.5
ADAPT_MIN = 10
# Encoders loaded by name, once per process: a model on disk does not change while we run, and
# loading one takes seconds. An encoder held in memory (a fine-tuned one) is passed as itself.
_LOADED: dict[str, SentenceTransformer] = {}


def get_encoder(encoder: str | SentenceTransformer | None) -> SentenceTransformer:
    """The encoder ``encoder`` names (loaded on first use), or ``encoder`` itself when it is a
    loaded model."""
    if encoder is not None and not isinstance(encoder, str):
        return encoder
    key = encoder or BUNDLED
    if key not in _LOADED:
        _LOADED[key] = open_encoder(key)
    return _LOADED[key]


@dataclass
class Features:
    """What the heads see for a batch of texts: ``dense`` sentence embeddings (tf-idf vectors for
    the baseline encoder) and ``lexical`` character n-gram tf-idf for the lexical head."""

    dense: Any
    lexical: Any = None

    def __len__(self) -> int:
        return self.dense.shape[0]


@dataclass
class Scores:
    """What coding a batch needs of each of its segments, computed chunk by chunk:
    ``proba`` (calibrated, before learning from the batch), ``similarity`` to the labelled
    segments, the unit-length embeddings ``dense`` (float32, only when the head can learn from
    the batch) and the lexical head's log-probabilities ``lexical`` (None without one)."""

    proba: np.ndarray
    similarity: np.ndarray
    dense: np.ndarray | None = None
    lexical: np.ndarray | None = None

    def arrays(self) -> dict[str, np.ndarray | None]:
        return {
            "proba": self.proba,
            "similarity": self.similarity,
            "dense": self.dense,
            "lexical": self.lexical,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Scores:
        return cls(
            arrays["proba"], arrays["similarity"], arrays.get("dense"), arrays.get("lexical")
        )


def unit_length(dense: np.ndarray) -> bool:
    """Whether every row is unit-length (as the stored training features are)."""
    return bool(np.allclose(np.linalg.norm(dense, axis=1), 1, atol=1e-3))


def confident(confidence: np.ndarray, share: float = ADAPT_SHARE) -> np.ndarray:
    """The most confident ``share`` of a batch (ties at the cut included): its pseudo-labels."""
    return confidence >= np.quantile(confidence, 1 - share)


def prototype_texts(codebook: Codebook) -> tuple[list[str], list[str]]:
    """Texts that describe each theme (label + description, examples, the label and its parts
    on their own) and their theme ids."""
    from qualcode.codebook import label_phrases, theme_texts

    texts, themes = [], []
    for theme in codebook.themes:
        for text in [*theme_texts(theme), *label_phrases(theme)]:
            texts.append(text)
            themes.append(theme.id)
    return texts, themes


def zero_shot_proba(
    texts: Sequence[str], codebook: Codebook, encoder: str | None = None, temperature: float = 0.02
) -> np.ndarray:
    """Theme probabilities from similarity to the codebook alone (columns: ``codebook.ids``)."""
    model = get_encoder(encoder)
    proto, themes = prototype_texts(codebook)
    p = embed(proto, model, progress=False)
    centroids = np.stack([p[[t == i for t in themes]].mean(0) for i in codebook.ids])
    centroids = normalize(centroids)
    x = embed(list(texts), model, progress=len(texts) > 64)
    return softmax(x @ centroids.T / temperature)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on one thread while heads are fitted (a decorator too). scipy's L-BFGS-B makes many
    small BLAS calls, where a second OpenBLAS thread costs far more in hand-offs than it does
    work (scipy/scipy#26137): on 2 busy cores the seed set trains in 4 s instead of 14-25 s,
    and 100,000 rows refit in 3.9 s instead of 37 s. The heads come out the same."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the log-loss of softmax(logits / T) on held-out data."""
    rows = np.arange(len(y))
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)):
        nll = -np.log(softmax(logits / t)[rows, y] + 1e-12).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def fit_sigmoid_calibration(log_odds: np.ndarray, Y: np.ndarray) -> tuple[float, float]:
    """Platt scaling shared by all themes: the temperature T and bias b minimising the log-loss
    of sigmoid(log_odds / T + b) on held-out 0/1 targets ``Y`` (every theme's yes/no counts)."""
    z, y = log_odds.ravel(), Y.ravel()
    if len(set(y.tolist())) < 2:
        return 1.0, 0.0
    fit = LogisticRegression(C=1e4).fit(z[:, None], y)
    slope = max(float(fit.coef_[0, 0]), 1e-3)  # never invert the ranking
    return 1 / slope, float(fit.intercept_[0])


class ThemeClassifier(ClassifierMixin, BaseEstimator):
    """Classify segment texts into themes.

    Parameters
    ----------
    encoder : ``"e5-small"`` (bundled, default), ``"tfidf"`` (character n-gram baseline), any
        sentence-transformers model name or directory, or a loaded model (a fine-tuned one is
        held here, not in a registry).
    codebook : a :class:`~qualcode.codebook.Codebook`; its descriptions and examples are added as
        training examples (weight ``prototype_weight``) and every codebook theme becomes a class.
    C : inverse regularisation strength, or ``"auto"`` to choose it from ``C_GRID`` by stratified
        ``cv``-fold cross-validation on macro-F1.
    prior_weight : weight in [0, 1] of the codebook prior (similarity to each theme's
        prototype centroid) mixed into the head's log-probabilities, or ``"auto"`` to choose it
        from ``PRIOR_GRID`` together with C.
    lexical_weight : share in [0, 1] of a character n-gram tf-idf head in the log-probabilities,
        or ``"auto"`` to choose it from ``LEXICAL_GRID`` together with C (single-label only).
    multi_label : one-vs-rest per theme instead of one softmax (a theme is present at
        probability ≥ 0.5).
    """

    def __init__(
        self,
        encoder: str | None = None,
        codebook: Codebook | None = None,
        C: float | str = "auto",
        prior_weight: float | str = "auto",
        prototype_weight: float = 1.0,
        lexical_weight: float | str = "auto",
        multi_label: bool = False,
        cv: int = 5,
        random_state: int = 0,
        progress: bool = False,
    ):
        self.encoder = encoder
        self.codebook = codebook
        self.C = C
        self.prior_weight = prior_weight
        self.prototype_weight = prototype_weight
        self.lexical_weight = lexical_weight
        self.multi_label = multi_label
        self.cv = cv
        self.random_state = random_state
        self.progress = progress

    # ------------------------------------------------------------------ features
    def _featurize(self, texts: Sequence[str], embeddings: Any = None) -> Features:
        texts = [str(t) for t in texts]
        if embeddings is not None:
            dense = embeddings
        elif self.encoder == TFIDF:
            dense = self.tfidf_.encode(texts)
        else:
            dense = embed(texts, get_encoder(self.encoder), progress=self.progress)
        lexical = getattr(self, "lexical_", None)
        return Features(dense, None if lexical is None else lexical.encode(texts))

    def transform(self, texts: Sequence[str], embeddings: Any = None) -> Features:
        """The features the heads see; ``embeddings`` of ``texts`` already computed may be
        passed in."""
        return self._featurize(texts, embeddings)

    def _uses_lexical(self) -> bool:
        return (
            self.encoder != TFIDF and not self.multi_label and self.lexical_weight not in (0, 0.0)
        )

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Sequence[str], y: Sequence[Any]) -> ThemeClassifier:
        texts = [str(t) for t in X]
        targets = [self._as_list(v) for v in y]
        if len(texts) != len(targets):
            raise QualcodeError(f"{len(texts)} texts but {len(targets)} theme labels")
        if not texts:
            raise QualcodeError("no labelled segments to train on")
        proto_texts, proto_themes = prototype_texts(self.codebook) if self.codebook else ([], [])
        seen = sorted({t for ts in targets for t in ts})
        if self.codebook is not None:
            unknown = sorted(set(seen) - set(self.codebook.ids))
            if unknown:
                raise QualcodeError(f"themes not in the codebook: {', '.join(unknown)}")
            classes = list(self.codebook.ids)
        else:
            classes = seen
        if len(set(seen) | set(proto_themes)) < 2:
            raise QualcodeError(
                f"need at least two different themes to train; the labels only use {seen}"
            )
        self.classes_ = np.array(classes, dtype=object)
        index = {c: i for i, c in enumerate(classes)}

        if self.encoder == TFIDF:
            self.tfidf_ = CharNgramEncoder().fit(texts + proto_texts)
        self.lexical_ = (
            CharNgramEncoder(LEXICAL_NGRAMS, max_features=None).fit(texts + proto_texts)
            if self._uses_lexical()
            else None
        )
        features = self._featurize(texts)
        proto_features = self._featurize(proto_texts) if proto_texts else None
        self.centroids_ = self._centroids(
            None if proto_features is None else proto_features.dense, proto_themes, classes
        )

        if self.multi_label:
            Y = np.zeros((len(texts), len(classes)), dtype=int)
            for r, ts in enumerate(targets):
                Y[r, [index[t] for t in ts]] = 1
            P = np.zeros((len(proto_texts), len(classes)), dtype=int)
            for r, t in enumerate(proto_themes):
                P[r, index[t]] = 1
            self._fit_multi_label(
                features.dense, Y, None if proto_features is None else proto_features.dense, P
            )
            self.lexical_, self.lexical_head_, self.lexical_weight_ = None, None, 0.0
        else:
            y_idx = np.array([index[ts[0]] for ts in targets])
            p_idx = np.array([index[t] for t in proto_themes], dtype=int)
            self._fit_single_label(features, y_idx, proto_features, p_idx)
        self.proto_features_ = (
            None
            if proto_features is None or self.encoder == TFIDF
            else np.asarray(proto_features.dense, dtype=np.float32)
        )
        self.proto_target_ = np.array([index[t] for t in proto_themes], dtype=int)
        self.train_features_ = normalize(self._dense(features.dense)).astype(np.float32)
        return self

    def _centroids(self, proto: Any, themes: list[str], classes: list[str]) -> np.ndarray | None:
        """Unit-length mean prototype per class (None without a codebook)."""
        if proto is None:
            return None
        dense = normalize(self._dense(proto))
        rows = [dense[[t == c for t in themes]].mean(axis=0) for c in classes]
        return normalize(np.stack(rows)).astype(np.float32)

    def _prior(self, features: Any) -> np.ndarray | None:
        if self.centroids_ is None:
            return None
        sims = normalize(self._dense(features)) @ self.centroids_.T
        return log_softmax(sims / PRIOR_TEMPERATURE)

    @staticmethod
    def _mix(head_logits: np.ndarray, prior: np.ndarray | None, weight: float) -> np.ndarray:
        if prior is None or weight == 0:
            return head_logits
        return (1 - weight) * log_softmax(head_logits) + weight * prior

    @staticmethod
    def _as_list(value: Any) -> list[str]:
        if isinstance(value, (list, tuple, set, np.ndarray)):
            return [str(v) for v in value]
        return [part.strip() for part in str(value).split(";") if part.strip()]

    @staticmethod
    def _dense(features: Any) -> np.ndarray:
        return features.toarray() if hasattr(features, "toarray") else np.asarray(features)

    def _stack(self, features: Any, proto: Any) -> Any:
        if proto is None:
            return features
        if hasattr(features, "toarray"):
            from scipy.sparse import vstack

            return vstack([features, proto]).tocsr()
        return np.vstack([features, proto])

    def _weights(self, n: int, n_proto: int) -> np.ndarray:
        return np.concatenate([np.ones(n), np.full(n_proto, float(self.prototype_weight))])

    def _head(self, C: float) -> LogisticRegression:
        return LogisticRegression(C=C, max_iter=3000, class_weight="balanced")

    def _folds(self, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        counts = np.bincount(y)
        k = min(self.cv, int(counts[counts > 0].min()))
        if k < 2:
            return []
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=self.random_state)
        return list(splitter.split(np.zeros(len(y)), y))

    @one_blas_thread()
    def _fit_single_label(
        self, X: Features, y: np.ndarray, Xp: Features | None, yp: np.ndarray
    ) -> None:
        n_classes = len(self.classes_)
        folds = self._folds(y)
        c_grid = C_GRID if self.C == "auto" else (float(self.C),)
        if self.centroids_ is None:
            p_grid: tuple[float, ...] = (0.0,)
        else:
            p_grid = PRIOR_GRID if self.prior_weight == "auto" else (float(self.prior_weight),)
        if self.lexical_ is None:
            l_grid: tuple[float, ...] = (0.0,)
        else:
            l_grid = (
                LEXICAL_GRID if self.lexical_weight == "auto" else (float(self.lexical_weight),)
            )
        dense_p = None if Xp is None else Xp.dense
        lexical_p = None if Xp is None else Xp.lexical
        prior = self._prior(X.dense)
        lexical = np.zeros((len(y), n_classes))
        if self.lexical_ is not None:
            for train, test in folds:
                head = self._fit_lexical(X.lexical[train], y[train], lexical_p, yp)
                lexical[test] = log_softmax(self._full_logits(head, X.lexical[test], n_classes))
        self.cv_scores_: dict[tuple[float, ...], float] = {}
        oof: dict[tuple[float, ...], np.ndarray] = {}
        for C in c_grid if folds else ():
            logits = np.zeros((len(y), n_classes))
            for train, test in folds:
                head = self._head(C).fit(
                    self._stack(X.dense[train], dense_p),
                    np.concatenate([y[train], yp]),
                    sample_weight=self._weights(len(train), len(yp)),
                )
                logits[test] = self._full_logits(head, X.dense[test], n_classes)
            for w in p_grid:
                for a in l_grid:
                    mixed = self._mix_lexical(self._mix(logits, prior, w), lexical, a)
                    oof[(C, w, a)] = mixed
                    self.cv_scores_[(C, w, a)] = f1_score(y, mixed.argmax(1), average="macro")
        if folds:
            # Ties go to the stronger regularisation, the smaller prior and lexical share.
            best = max(
                self.cv_scores_,
                key=lambda k: (round(self.cv_scores_[k], 6), -k[0], -k[1], -k[2]),
            )
            self.C_, self.prior_weight_, self.lexical_weight_ = best
            self.temperature_ = fit_temperature(oof[best], y)
            self.oof_proba_ = softmax(oof[best] / self.temperature_)
        else:  # too few labels per theme to cross-validate: keep defaults, the card says so
            self.C_ = 10.0 if self.C == "auto" else float(self.C)
            self.prior_weight_ = p_grid[len(p_grid) // 2]
            self.lexical_weight_ = l_grid[-1]
            self.temperature_ = 1.0
            self.oof_proba_ = None
        self.oof_target_ = y
        self.head_ = self._head(self.C_).fit(
            self._stack(X.dense, dense_p),
            np.concatenate([y, yp]),
            sample_weight=self._weights(len(y), len(yp)),
        )
        if self.lexical_ is not None and self.lexical_weight_ > 0:
            self.lexical_head_ = self._fit_lexical(X.lexical, y, lexical_p, yp)
        else:
            self.lexical_, self.lexical_head_, self.lexical_weight_ = None, None, 0.0

    def _fit_lexical(self, X: Any, y: np.ndarray, Xp: Any, yp: np.ndarray) -> LogisticRegression:
        return LogisticRegression(C=LEXICAL_C, max_iter=3000, class_weight="balanced").fit(
            self._stack(X, Xp), np.concatenate([y, yp])
        )

    @staticmethod
    def _mix_lexical(logits: np.ndarray, lexical: np.ndarray | None, weight: float) -> np.ndarray:
        if lexical is None or weight == 0:
            return logits
        return (1 - weight) * log_softmax(logits) + weight * lexical

    @one_blas_thread()
    def _fit_multi_label(self, X: Any, Y: np.ndarray, Xp: Any, P: np.ndarray) -> None:
        from sklearn.model_selection import KFold

        grid = C_GRID if self.C == "auto" else (float(self.C),)
        k = min(self.cv, len(Y))
        folds = (
            list(KFold(k, shuffle=True, random_state=self.random_state).split(Y)) if k > 1 else []
        )
        self.cv_scores_ = {}
        oof_by_c = {}
        for C in grid if folds else ():
            proba = np.zeros(Y.shape)
            for train, test in folds:
                heads = self._fit_ovr(C, self._stack(X[train], Xp), np.vstack([Y[train], P]))
                proba[test] = self._ovr_proba(heads, X[test])
            oof_by_c[(C, 0.0)] = proba
            self.cv_scores_[(C, 0.0)] = f1_score(Y, proba >= 0.5, average="macro", zero_division=0)
        best = (
            max(self.cv_scores_, key=lambda k: (round(self.cv_scores_[k], 6), -k[0]))
            if folds
            else (10.0 if self.C == "auto" else float(self.C), 0.0)
        )
        self.C_, self.prior_weight_ = best
        oof = oof_by_c.get(best)
        # Class-balanced heads over-state rare themes: one Platt scaling of the out-of-fold
        # log-odds makes a theme's probability mean how often it is there.
        self.temperature_, self.calibration_bias_ = (
            (1.0, 0.0) if oof is None else fit_sigmoid_calibration(_log_odds(oof), Y)
        )
        self.oof_proba_ = None if oof is None else self._calibrated(_log_odds(oof))
        self.oof_target_ = Y
        self.heads_ = self._fit_ovr(self.C_, self._stack(X, Xp), np.vstack([Y, P]))

    def _fit_ovr(self, C: float, X: Any, Y: np.ndarray) -> list[LogisticRegression | float]:
        heads: list[LogisticRegression | float] = []
        for j in range(Y.shape[1]):
            col = Y[:, j]
            heads.append(self._head(C).fit(X, col) if 0 < col.sum() < len(col) else float(col[0]))
        return heads

    @staticmethod
    def _ovr_proba(heads: list, X: Any) -> np.ndarray:
        cols = [
            h.predict_proba(X)[:, 1]
            if isinstance(h, LogisticRegression)
            else np.full(X.shape[0], h)
            for h in heads
        ]
        return np.column_stack(cols)

    @staticmethod
    def _full_logits(head: LogisticRegression, X: Any, n_classes: int) -> np.ndarray:
        """Logits over all classes, even those a fold's head never saw (they get -inf-ish)."""
        raw = head.decision_function(X)
        if raw.ndim == 1:
            raw = np.column_stack([-raw / 2, raw / 2])
        out = np.full((X.shape[0], n_classes), -30.0)
        out[:, head.classes_] = raw
        return out

    # ------------------------------------------------------------------ prediction
    def decision_function(self, X: Sequence[str]) -> np.ndarray:
        check_is_fitted(self)
        return self._logits(self._featurize(X))

    def _logits(self, features: Features) -> np.ndarray:
        return self._logits_from(features.dense, self._lexical_logp(features))

    def _lexical_logp(self, features: Features) -> np.ndarray | None:
        """The lexical head's log-probabilities (None without a lexical head)."""
        if self.multi_label or getattr(self, "lexical_head_", None) is None:
            return None
        return log_softmax(
            self._full_logits(self.lexical_head_, features.lexical, len(self.classes_))
        )

    def _logits_from(self, dense: Any, lexical: np.ndarray | None) -> np.ndarray:
        if self.multi_label:  # one-vs-rest: the log-odds of each theme
            return _log_odds(self._ovr_proba(self.heads_, dense))
        head = self._full_logits(self.head_, dense, len(self.classes_))
        mixed = self._mix(head, self._prior(dense), self.prior_weight_)
        if lexical is None:
            return mixed
        return self._mix_lexical(mixed, lexical, self.lexical_weight_)

    def predict_proba(self, X: Sequence[str]) -> np.ndarray:
        """Calibrated theme probabilities, one column per ``classes_``."""
        check_is_fitted(self)
        return self.proba_from_features(self._featurize(X))

    def proba_from_features(self, features: Features) -> np.ndarray:
        """Like :meth:`predict_proba`, from features already computed by :meth:`transform`."""
        return self.proba_from_parts(features.dense, self._lexical_logp(features))

    def proba_from_parts(self, dense: Any, lexical: np.ndarray | None) -> np.ndarray:
        """Calibrated probabilities from the dense features and the lexical head's
        log-probabilities (the parts :class:`Scores` keeps)."""
        if self.multi_label:
            return self._calibrated(self._logits_from(dense, lexical))
        return softmax(self._logits_from(dense, lexical) / self.temperature_)

    def _calibrated(self, log_odds: np.ndarray) -> np.ndarray:
        return _sigmoid(log_odds / self.temperature_ + getattr(self, "calibration_bias_", 0.0))

    def predict(self, X: Sequence[str]) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    def can_adapt(self) -> bool:
        """Whether this head can learn from a batch (:meth:`adapted`): single-label, on
        sentence embeddings, with the codebook's prototypes at hand."""
        check_is_fitted(self)
        return (
            not self.multi_label
            and self.encoder != TFIDF
            and getattr(self, "proto_features_", None) is not None
        )

    def scores(self, texts: Sequence[str]) -> Scores:
        """What coding ``texts`` as part of a batch needs of each of them (:class:`Scores`):
        the expensive part of classifying, done chunk by chunk or on a cluster's workers."""
        features = self.transform(texts)
        dense = None
        if self.can_adapt():
            dense = np.asarray(self._dense(features.dense), dtype=np.float32)
        lexical = self._lexical_logp(features)
        proba = self.proba_from_parts(features.dense, lexical)
        return Scores(proba, self.similarity_to_training(features), dense, lexical)

    def adapted(self, batch: Features, share: float = ADAPT_SHARE) -> ThemeClassifier:
        """A copy that has learnt from the batch it is about to code: the most confident
        ``share`` of its predictions join the labelled segments as pseudo-labels (weighted by
        confidence) and the embedding head is refit once, with the same C, prior, lexical head
        and temperature. Multi-label, tf-idf and small batches are returned unchanged."""
        if not self.can_adapt() or len(batch) < ADAPT_MIN:
            return self
        dense = np.asarray(self._dense(batch.dense), dtype=np.float32)
        if not unit_length(dense):
            return self  # the stored training features are unit-length; these are not
        proba = self.proba_from_features(batch)
        keep = confident(proba.max(axis=1), share)
        return self.refit_on([(dense[keep], proba[keep])], int(keep.sum()))

    @one_blas_thread()
    def refit_on(self, batch: Iterable[tuple[np.ndarray, np.ndarray]], n: int) -> ThemeClassifier:
        """A copy whose embedding head is refit on the labelled segments plus ``n`` batch
        segments, given in parts (unit-length dense rows, their probabilities): each is
        pseudo-labelled with its most probable theme and weighted by that probability. The
        training matrix is filled in place, part by part (one copy of the batch rows)."""
        n_train, n_proto = len(self.oof_target_), len(self.proto_target_)
        X = np.empty((n_train + n + n_proto, self.train_features_.shape[1]), dtype=np.float32)
        y = np.empty(len(X), dtype=np.int64)
        weights = np.empty(len(X))
        X[:n_train], y[:n_train], weights[:n_train] = self.train_features_, self.oof_target_, 1.0
        row = n_train
        for dense, proba in batch:
            rows = slice(row, row + len(dense))
            X[rows], y[rows], weights[rows] = dense, proba.argmax(axis=1), proba.max(axis=1)
            row += len(dense)
        if row != n_train + n:
            raise ValueError(f"refit_on: {row - n_train} batch rows given, {n} announced")
        X[row:], y[row:] = self.proto_features_, self.proto_target_
        weights[row:] = float(self.prototype_weight)
        clone = copy.copy(self)
        clone.head_ = self._head(self.C_).fit(X, y, sample_weight=weights)
        return clone

    def similarity_to_training(self, features: Features) -> np.ndarray:
        """Cosine similarity of each row to its nearest labelled training segment."""
        x = normalize(self._dense(features.dense)).astype(np.float32)
        return (x @ self.train_features_.T).max(axis=1)
