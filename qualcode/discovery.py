"""Step 6b: discover themes the codebook lacks, in the segments it covers badly.

A codebook is a hypothesis; in real material some answers fit none of its themes. This step
finds them (BERTopic's recipe, adapted to a coded batch):

1. **Which segments.** Each segment gets a *novelty*: the mean of two ranks, its cosine to
   the nearest labelled segment (low is novel) and how many of its nearest neighbours, among
   the labelled segments and the batch together, come from the batch (a region the labelled
   segments do not reach), averaged with its batch neighbours' novelty (novelty is a property
   of a region). The model's confidence is not used: self-training makes the model confident
   on whole regions it never saw labelled. The third of the batch with the highest novelty
   (``share``), and every segment coded ``other`` or flagged for review, are considered;
   ``all_segments`` considers everything.
2. **Clusters.** The directions the known themes explain (their centroids) are projected out,
   and k-means clusters what remains, with the number of clusters chosen by the silhouette.
   Each cluster then competes with the known themes for the segments of the batch covered
   worse than the median: one closer to the cluster's centroid than to every prototype of a
   theme joins it; the centroids are recomputed from the members that joined and the
   competition runs again (three rounds at most), so that a cluster settles where its members
   are rather than where k-means put it among the considered segments. A theme's prototypes
   are the centroids of up to three k-means groups of its labelled segments (one per ten), so
   that a theme with several faces keeps the segments near any of them. Membership is then
   voted: the competition runs again against the prototypes of 15 random subsets of 80 % of
   each theme's labelled segments, and a segment stays in its cluster only if it joins in more
   than 70 % of them (one that joins by a hair would go with another set of labels).
3. **Verdicts.** A cluster is new when its members' neighbourhoods lie outside what was
   labelled more than chance allows: the mean share of batch segments among their nearest
   neighbours exceeds the share expected if the batch were like the labelled segments (the
   batch's share of all segments) by more than three standard errors. Otherwise it is a
   sub-theme of (or a candidate to merge into) the theme whose centroid is nearest.
   Keywords come from class-based tf-idf over Swedish stems (:mod:`qualcode.model.keywords`);
   quotes are the members nearest the centroid.

On SIB-200 Swedish with two of seven topics hidden from the codebook, the best-matching
cluster of each hidden topic reaches a mean F1 of 0.635 over 10 seeds and all 21 pairs: 0.66 on
the five seeds the design was chosen on, 0.61 on five others (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qualcode.codebook import Codebook
from qualcode.errors import QualcodeError
from qualcode.files.coded import (
    PROVENANCE,
    column_text,
    is_predictions,
    model_column,
    non_answers,
    parse_flags,
    parse_number,
)
from qualcode.files.tables import spreadsheet_rows
from qualcode.model.keywords import Vocabulary, class_keywords

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from qualcode.model.storage import ThemeModel

__all__ = ["Cluster", "Discovery", "discover"]

OTHER = "other"  # the codebook's catch-all theme, if it has one
SHARE = 1 / 3  # the share of the batch considered, by novelty
NEIGHBOURS = 20  # neighbours among labelled + batch segments for the novelty
SMOOTHING = 10  # batch neighbours whose novelty is averaged in
JOIN_ABOVE = 0.5  # quantile of novelty above which a segment may join a cluster
ROUNDS = 3  # times the clusters compete again with centroids of the members that joined
MAX_CLUSTERS = 8
PROTOTYPES = 3  # at most this many prototypes per known theme, one per PER_PROTOTYPE segments
PER_PROTOTYPE = 10
RESAMPLES = 15  # subsets of the labelled segments that membership is voted over
RESAMPLED = 0.8  # share of each theme's labelled segments in a subset
VOTES = 0.7  # a member joins its cluster in more than this share of the subsets
MIN_CLUSTER = 3  # smaller groups are not clusters
MIN_SEGMENTS = 2 * MIN_CLUSTER  # fewer segments than this: nothing to cluster
QUOTES = 5
KEYWORDS = 8
SAME_SIMILARITY = 6e-3  # the predictions' similarity has 4 decimals (2 if a spreadsheet cut them)
CHUNK = 2048  # rows per block of the similarity matrix (bounded memory on large batches)
SILHOUETTE_SAMPLE = 3000
LARGE = 2000  # segments clustered: above this, k-means restarts 3 times instead of 10
NEW, SUB_THEME = "new", "sub-theme"


@dataclass
class Cluster:
    """One discovered group of segments: its number, members (row positions in the batch),
    keywords, quotes (rows nearest its centroid), the nearest theme with the cosine between
    the two centroids, and the verdict (``new`` or ``sub-theme`` of ``nearest_theme``)."""

    number: int
    members: np.ndarray
    keywords: list[str]
    quotes: list[int]
    nearest_theme: str
    closeness: float
    verdict: str
    outside: float = 0.0  # mean share of batch segments among the members' nearest neighbours

    @property
    def name(self) -> str:
        return f"K{self.number}"

    @property
    def label(self) -> str:
        """A label from the keywords: ``Turist, hotell och resa``."""
        words = self.keywords[:3]
        if not words:
            return self.name
        text = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " och " + words[-1]
        return text[0].upper() + text[1:]

    @property
    def theme_id(self) -> str:
        """A codebook id for the suggestion: ``ny_turist_hotell``."""
        table = str.maketrans("åäöéü", "aaoeu")
        parts = [re.sub(r"[^a-z0-9]+", "_", w.lower().translate(table)) for w in self.keywords[:2]]
        slug = "_".join(p.strip("_") for p in parts if p.strip("_"))
        return f"ny_{slug}" if slug else f"ny_{self.number}"


@dataclass
class Discovery:
    """What :func:`discover` found. ``segments`` is the batch (text, provenance, the model's
    theme), ``considered`` the rows looked at, ``assigned`` each row's cluster number (0:
    none), ``xy`` a 2-D map of the batch (PCA), ``novelty`` per row in [0, 1]."""

    segments: pd.DataFrame
    clusters: list[Cluster]
    considered: np.ndarray
    assigned: np.ndarray
    novelty: np.ndarray
    xy: np.ndarray
    codebook: Codebook
    seed: int
    messages: list[str] = field(default_factory=list)

    @property
    def new(self) -> list[Cluster]:
        return [c for c in self.clusters if c.verdict == NEW]

    def summary(self) -> str:
        """One line on what was found, said plainly when it is nothing."""
        n, considered = len(self.segments), int(self.considered.sum())
        if not self.clusters:
            return (
                f"nothing to discover: {considered} of {n} segments considered, and no group of "
                f"at least {MIN_CLUSTER} similar segments among them outside the codebook"
            )
        subs = len(self.clusters) - len(self.new)
        said = f"{len(self.new)} candidate new theme(s)" if self.new else "no new themes"
        if subs:
            said += f", {subs} group(s) close to an existing theme (sub-theme or merge)"
        return f"{said}: {considered} of {n} segments considered"

    def table(self) -> pd.DataFrame:
        """One row per segment considered or clustered: provenance, text, the model's theme,
        novelty, cluster, its label and keywords, the nearest theme and the verdict."""
        rows = np.flatnonzero(self.considered | (self.assigned > 0))
        by_number = {c.number: c for c in self.clusters}
        out = self.segments.iloc[rows].copy()
        out["novelty"] = np.round(self.novelty[rows], 3)
        clusters = [by_number.get(int(self.assigned[i])) for i in rows]
        out["cluster"] = [c.name if c else "" for c in clusters]
        out["cluster_label"] = [c.label if c else "" for c in clusters]
        out["keywords"] = [", ".join(c.keywords) if c else "" for c in clusters]
        out["nearest_theme"] = [c.nearest_theme if c else "" for c in clusters]
        out["verdict"] = [c.verdict if c else "" for c in clusters]
        order = [c.number if c else math.inf for c in clusters]
        out = out.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")
        return out.reset_index(drop=True)

    def suggestions(self) -> dict[str, Any]:
        """The new clusters as codebook themes (id, label, description, examples), for the
        analyst to edit and merge into the codebook."""
        themes = []
        for cluster in self.new:
            near = self.codebook.get(cluster.nearest_theme).label if cluster.nearest_theme else ""
            description = (
                f"Förslag från qualcode discover ({len(cluster.members)} segment): "
                f"{', '.join(cluster.keywords)}."
                + (f" Närmast befintliga tema: {near}." if near else "")
                + " Skriv om beskrivningen innan temat läggs till i kodboken."
            )
            themes.append(
                {
                    "id": cluster.theme_id,
                    "label": cluster.label,
                    "description": description,
                    "examples": [str(self.segments["text"].iloc[i]) for i in cluster.quotes[:3]],
                }
            )
        return {
            "name": f"Förslag till nya teman för {self.codebook.name}",
            "language": "sv",
            "themes": themes,
        }


# --------------------------------------------------------------------------- the batch


def _batch(table: pd.DataFrame, codebook: Codebook) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The segments to look at (non-answers and empty texts left out) with what the model
    said of them: ``flagged`` and ``similarity`` to its labelled segments (None for segments or
    labels) and the ``themes`` it coded with."""
    if "text" not in table.columns:
        raise QualcodeError(
            "discover needs a 'text' column (a predictions, segments or labels file)"
        )
    table = table.astype(object).fillna("").astype(str)  # as read from a file: every cell text
    keep = ~non_answers(table) & (column_text(table, "text").str.strip() != "")
    table = table[keep]
    segments = pd.DataFrame({c: column_text(table, c) for c in PROVENANCE if c in table.columns})
    segments["text"] = column_text(table, "text").to_numpy()
    info: dict[str, Any] = {"flagged": None, "similarity": None, "themes": set()}
    theme = model_column(table, "theme")
    segments["theme"] = column_text(table, theme).str.split(";").str[0].str.strip().to_numpy()
    if is_predictions(table):
        rows = spreadsheet_rows(table)
        segments["confidence"] = column_text(table, model_column(table, "confidence")).to_numpy()
        similarity = column_text(table, model_column(table, "similarity"))
        info["similarity"] = np.array([_number(v) for v in similarity], dtype=float)
        info["themes"] = {c.removeprefix("p_") for c in table.columns if c.startswith("p_")}
        if model_column(table, "needs_review") in table.columns:
            info["flagged"] = np.array(
                parse_flags(column_text(table, model_column(table, "needs_review")), rows)
            )
    segments["theme"] = [codebook_id(codebook, t) for t in segments["theme"]]
    return segments.reset_index(drop=True), info


def _number(value: str) -> float:
    try:
        return parse_number(value)
    except ValueError:
        return math.nan


def codebook_id(codebook: Codebook, value: str) -> str:
    """The theme id ``value`` names in ``codebook`` ('' when none)."""
    try:
        return codebook.resolve(value) if value else ""
    except QualcodeError:
        return ""


def _reference(
    codebook: Codebook, model: ThemeModel | None, encoder: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of what the known themes look like, with their theme ids: the model's
    labelled segments (unless it is the tf-idf baseline, whose vectors are not the encoder's),
    else the codebook's descriptions, examples and labels. The catch-all
    ``other`` is not a theme to compare with."""
    from qualcode.model.classifier import prototype_texts
    from qualcode.model.encoders import TFIDF, embed

    if model is not None and model.classifier.encoder != TFIDF:  # tf-idf rows are not e5's
        clf = model.classifier
        target = np.asarray(clf.oof_target_)
        if target.ndim == 2:  # multi-label: the first theme of each segment
            target = target.argmax(axis=1)
        vectors = np.asarray(clf.train_features_, dtype=np.float32)
        themes = np.asarray(clf.classes_, dtype=object)[target]
    else:
        texts, ids = prototype_texts(codebook)
        vectors = embed(texts, encoder, progress=False)
        themes = np.asarray(ids, dtype=object)
    keep = themes != OTHER
    return _unit(vectors[keep]), themes[keep].astype(str)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _nearest(queries: np.ndarray, pool: np.ndarray, k: int, skip_self: int | None) -> np.ndarray:
    """Indices of the ``k`` most similar rows of ``pool`` for each query (blockwise). With
    ``skip_self``, query ``i`` is row ``skip_self + i`` of the pool and is left out."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), CHUNK):
        sims = queries[start : start + CHUNK] @ pool.T
        if skip_self is not None:
            rows = np.arange(len(sims))
            sims[rows, skip_self + start + rows] = -np.inf
        part = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
        out[start : start + CHUNK] = part
    return out


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged."""
    from scipy.stats import rankdata

    return rankdata(values) / len(values)


def _closest(x: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Each row's cosine to its nearest row of ``pool`` (blockwise); -inf if ``pool`` is empty."""
    if not len(pool):
        return np.full(len(x), -np.inf)
    return np.concatenate(
        [(x[start : start + CHUNK] @ pool.T).max(axis=1) for start in range(0, len(x), CHUNK)]
    )


def novelty_scores(x: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """How badly the known themes cover each segment, in [0, 1] (see the module docstring);
    the share of each segment's nearest neighbours that are batch segments; and the share
    expected if the batch were like the labelled segments."""
    n = len(x)
    pool = np.vstack([reference, x])
    k = min(NEIGHBOURS, len(pool) - 1)
    near = _nearest(x, pool, k, skip_self=len(reference))
    from_batch = (near >= len(reference)).mean(axis=1)
    score = _ranks(from_batch)
    if len(reference):
        score = (score + _ranks(-_closest(x, reference))) / 2
    expected = (n - 1) / (len(pool) - 1)
    smoothing = min(SMOOTHING, n - 1)
    if smoothing < 1:
        return score, from_batch, expected
    neighbours = _nearest(x, x, smoothing, skip_self=0)
    return (score + score[neighbours].mean(axis=1)) / 2, from_batch, expected


# --------------------------------------------------------------------------- clustering


def _centroids(x: np.ndarray, groups: np.ndarray, names: list[Any]) -> np.ndarray:
    return _unit(np.stack([x[groups == g].mean(axis=0) for g in names]))


def _prototypes(
    reference: np.ndarray,
    themes: np.ndarray,
    ids: list[str],
    seed: int,
    per: float = PER_PROTOTYPE,
) -> np.ndarray:
    """Up to PROTOTYPES unit vectors per known theme in ``ids`` (at least one): the centroids of
    a k-means of its labelled segments (one per ``per`` of them; the plain centroid when
    fewer)."""
    from sklearn.cluster import KMeans

    out = []
    for theme in ids:
        vectors = reference[themes == theme]
        k = max(1, min(PROTOTYPES, int(len(vectors) // per)))
        if k == 1:
            out.append(vectors.mean(axis=0, keepdims=True))
        else:
            out.append(KMeans(k, n_init=3, random_state=seed).fit(vectors).cluster_centers_)
    return _unit(np.vstack(out))


def _without(x: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """``x`` with the span of ``directions`` projected out, renormalised."""
    basis, _ = np.linalg.qr(directions.T)
    return _unit(x - (x @ basis) @ basis.T)


def _kmeans(z: np.ndarray, seed: int) -> np.ndarray:
    """k-means labels with the number of clusters (2 to MAX_CLUSTERS) of best silhouette."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    best: tuple[float, np.ndarray] | None = None
    restarts = 10 if len(z) <= LARGE else 3  # a large batch: fewer restarts, as stable
    for k in range(2, min(MAX_CLUSTERS, len(z) // (2 * MIN_CLUSTER)) + 1):
        labels = KMeans(k, n_init=restarts, random_state=seed).fit_predict(z)
        if len(set(labels)) < 2:
            continue
        sample = SILHOUETTE_SAMPLE if len(z) > SILHOUETTE_SAMPLE else None
        score = silhouette_score(z, labels, metric="cosine", sample_size=sample, random_state=seed)
        if best is None or score > best[0]:
            best = (score, labels)
    return best[1] if best is not None else np.zeros(len(z), dtype=int)


def _compete(
    x: np.ndarray, labels: np.ndarray, known: np.ndarray, eligible: np.ndarray
) -> np.ndarray:
    """Every ``eligible`` segment joins the cluster whose centroid is nearest, if nearer than
    every row of ``known`` (the known themes' prototypes); the centroids are then recomputed
    from the members that joined and the segments compete again (up to ROUNDS times, until
    nothing moves); clusters left with fewer than MIN_CLUSTER members dissolve. Returns
    cluster numbers from 1 (largest first), 0 for none."""
    names = [c for c in np.unique(labels) if c >= 0]
    if not names:
        return np.zeros(len(x), dtype=int)
    centroids = _centroids(x, labels, names)
    bar = _closest(x, known)
    alive = np.ones(len(names), dtype=bool)
    joined = np.full(len(x), -1)
    for _ in range(ROUNDS + 1):
        sims = x @ centroids.T
        sims[:, ~alive] = -np.inf  # a dissolved cluster attracts no one
        previous = joined
        joined = np.where((sims.max(axis=1) > bar) & eligible, sims.argmax(axis=1), -1)
        if np.array_equal(joined, previous):
            break
        alive = np.bincount(joined[joined >= 0], minlength=len(names)) >= MIN_CLUSTER
        if not alive.any():
            break
        centroids[alive] = _centroids(x, joined, list(np.flatnonzero(alive)))
    return _numbered(joined)


def _numbered(joined: np.ndarray) -> np.ndarray:
    """Cluster numbers from 1 (largest first) for groups (``joined`` >= 0) of at least
    MIN_CLUSTER members, 0 for everything else."""
    sizes = {int(c): int((joined == c).sum()) for c in np.unique(joined[joined >= 0])}
    ordered = sorted((c for c in sizes if sizes[c] >= MIN_CLUSTER), key=lambda c: (-sizes[c], c))
    number = {c: i + 1 for i, c in enumerate(ordered)}
    return np.array([number.get(int(c), 0) for c in joined], dtype=int)


def _vote(
    x: np.ndarray,
    clusters: np.ndarray,
    reference: np.ndarray,
    themes: np.ndarray,
    ids: list[str],
    eligible: np.ndarray,
    seed: int,
) -> np.ndarray:
    """Membership that holds when the labelled segments change: from ``clusters`` (numbers
    from 1, 0 for none) the competition runs again against the prototypes of RESAMPLES random
    subsets of each theme's labelled segments, and a segment stays in the cluster it joins in
    more than VOTES of them. Returns cluster numbers like :func:`_compete`."""
    if not clusters.any():
        return clusters
    rng = np.random.default_rng(seed)
    start = np.where(clusters > 0, clusters, -1)
    votes = np.zeros((len(x), clusters.max() + 1), dtype=int)
    groups = [np.flatnonzero(themes == theme) for theme in ids]
    per = PER_PROTOTYPE * RESAMPLED  # as many prototypes as the whole set has
    for r in range(RESAMPLES):
        keep = np.zeros(len(reference), dtype=bool)
        for rows in groups:
            keep[rng.choice(rows, max(1, round(RESAMPLED * len(rows))), replace=False)] = True
        prototypes = _prototypes(reference[keep], themes[keep], ids, seed + r + 1, per)
        joined = _compete(x, start, prototypes, eligible)
        for c in range(1, joined.max() + 1):
            members = joined == c
            origin = np.bincount(clusters[members], minlength=votes.shape[1])
            origin[0] = 0  # the clusters renumber themselves: a joined cluster is the one it
            if origin.any():  # took most of its members from
                votes[members, origin.argmax()] += 1
    held = votes[:, 1:].max(axis=1) > VOTES * RESAMPLES
    return _numbered(np.where(held, votes[:, 1:].argmax(axis=1) + 1, -1))


def _map(x: np.ndarray) -> np.ndarray:
    """A 2-D map of the batch (PCA), scaled to [0, 1]."""
    if len(x) < 2:
        return np.full((len(x), 2), 0.5)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    vt_sign = np.sign(xy[np.abs(xy).argmax(axis=0), [0, 1]])  # a fixed orientation
    xy = xy * np.where(vt_sign == 0, 1, vt_sign)
    span = np.ptp(xy, axis=0)
    return (xy - xy.min(axis=0)) / np.where(span > 0, span, 1)


# --------------------------------------------------------------------------- the step


def discover(
    table: pd.DataFrame,
    codebook: Codebook,
    *,
    model: ThemeModel | None = None,
    encoder: str | None = None,
    all_segments: bool = False,
    share: float = SHARE,
    seed: int = 0,
    embeddings: np.ndarray | None = None,
    candidates: Sequence[Path] | None = None,
    progress: bool = False,
) -> Discovery:
    """Find groups of segments the codebook does not cover (see the module docstring).

    ``table`` is a predictions file from ``qualcode classify`` (best: its flags and similarity
    say what the model found hard), a segments or a labels table. ``model`` (the one that made
    the predictions) describes the known themes by its labelled segments. Without it, the model
    folders in ``candidates`` are searched for the one that made the predictions (see
    :func:`_maker`; ``None``: no search), and failing that the codebook's own descriptions and
    examples stand in, which finds much less (a message says which). ``embeddings`` of the
    segments (non-answers and empty texts left out) already computed may be passed in. The
    result is deterministic for a ``seed``.
    """
    from qualcode.model.classifier import get_encoder
    from qualcode.model.encoders import BUNDLED, TFIDF, embed

    if not 0 < share <= 1:
        raise QualcodeError(f"--share must be above 0 and at most 1, not {share}")
    segments, info = _batch(table, codebook)
    n = len(segments)
    nothing = np.zeros(n, dtype=int)
    if n < MIN_SEGMENTS:
        result = Discovery(
            segments, [], nothing > 0, nothing, np.zeros(n), np.full((n, 2), 0.5), codebook, seed
        )
        result.messages.append(
            f"{n} segment(s): too few to discover themes in (at least {MIN_SEGMENTS} are needed)"
        )
        return result
    if embeddings is not None and len(embeddings) != n:
        raise QualcodeError(f"{len(embeddings)} embeddings for {n} segments")
    said = []
    embedded: dict[str, np.ndarray] = {}
    if model is None and candidates is not None:
        found = _maker(segments["text"].tolist(), info, candidates, embedded, progress)
        if found is not None:
            model, path = found
            said.append(f"model: {path} (it made these predictions)")
        else:
            searched = info["similarity"] is not None  # only predictions say who made them
            said.append(
                "no model given (--model)"
                + (", and none beside INPUT or in models/ made these predictions" * searched)
                + ": the codebook's descriptions and examples stand in for the labelled "
                "segments, which finds much less"
            )
    name = model.classifier.encoder if model is not None else encoder
    handle = get_encoder(None if name == TFIDF else name)
    if embeddings is None:
        embeddings = embedded.get(name or BUNDLED)  # the search embedded them already
    if embeddings is None:
        embeddings = embed(segments["text"].tolist(), handle, progress=progress)
    x = _unit(embeddings)
    result = Discovery(segments, [], nothing > 0, nothing, np.zeros(n), _map(x), codebook, seed)
    result.messages += said
    reference, ref_themes = _reference(codebook, model, handle)
    known_ids = [t for t in codebook.ids if t in set(ref_themes)]
    known = _centroids(reference, ref_themes, known_ids) if known_ids else np.empty((0, x.shape[1]))
    result.novelty, from_batch, expected = novelty_scores(x, reference)
    if all_segments:
        considered = np.ones(n, dtype=bool)
    else:
        considered = result.novelty >= np.quantile(result.novelty, 1 - share)
        considered |= segments["theme"].to_numpy() == OTHER
        if info["flagged"] is not None:
            considered |= info["flagged"]
    result.considered = considered
    if considered.sum() < MIN_SEGMENTS:
        result.messages.append(
            f"only {int(considered.sum())} segment(s) to consider: too few to cluster"
        )
        return result
    z = _without(x, known) if len(known) else x
    labels = np.full(n, -1)
    labels[considered] = _kmeans(z[considered], seed)
    eligible = considered | (result.novelty >= np.quantile(result.novelty, JOIN_ABOVE))
    prototypes = _prototypes(reference, ref_themes, known_ids, seed) if known_ids else known
    result.assigned = _compete(x, labels, prototypes, eligible)
    if known_ids:
        result.assigned = _vote(
            x, result.assigned, reference, ref_themes, known_ids, eligible, seed
        )
    result.clusters = _describe(result, x, known, known_ids, (from_batch, expected))
    return result


def _maker(
    texts: list[str],
    info: dict[str, Any],
    candidates: Sequence[Path],
    embedded: dict[str, np.ndarray],
    progress: bool,
) -> tuple[ThemeModel, Path] | None:
    """The model among ``candidates`` that made the predictions: it codes with the same themes,
    and its labelled segments give each segment the ``similarity`` the predictions report (to
    their decimals). ``embedded`` holds the segments' embeddings by encoder, filled as needed."""
    from qualcode.model.classifier import Features, get_encoder
    from qualcode.model.encoders import TFIDF, embed
    from qualcode.model.storage import load_model

    reported = info["similarity"]
    if reported is None or np.isfinite(reported).sum() < MIN_SEGMENTS:
        return None
    known = np.isfinite(reported)
    for path in candidates:
        try:  # a folder that cannot be read as a model of these themes is not the one
            card = json.loads((path / "model.json").read_text(encoding="utf-8"))
            if info["themes"] and set(card["codebook"]["themes"]) != info["themes"]:
                continue
            model = load_model(path)
            name = model.classifier.encoder
            if name == TFIDF:  # its reference is the codebook anyway
                continue
            if name not in embedded:
                embedded[name] = embed(texts, get_encoder(name), progress=progress)
            x = embedded[name]
            mine = np.concatenate(
                [
                    model.classifier.similarity_to_training(Features(x[start : start + CHUNK]))
                    for start in range(0, len(x), CHUNK)
                ]
            )
        except Exception:  # noqa: BLE001
            continue
        if np.abs(mine[known] - reported[known]).max() <= SAME_SIMILARITY:
            return model, path
    return None


def _describe(
    result: Discovery,
    x: np.ndarray,
    known: np.ndarray,
    known_ids: list[str],
    outside: tuple[np.ndarray, float],
) -> list[Cluster]:
    """Keywords, quotes, nearest theme and verdict of every cluster."""
    segments, assigned = result.segments, result.assigned
    texts = segments["text"].tolist()
    # Keywords contrast each cluster with the rest of the batch, grouped by the model's theme.
    groups = [f"K{a}" if a else f"theme:{t}" for a, t in zip(assigned, segments["theme"])]
    keywords = class_keywords(texts, groups, Vocabulary(texts), top=KEYWORDS)
    clusters = []
    for number in range(1, int(assigned.max()) + 1):
        members = np.flatnonzero(assigned == number)
        centroid = _unit(x[members].mean(axis=0, keepdims=True))[0]
        order = members[np.argsort(-(x[members] @ centroid), kind="stable")]
        if len(known):
            sims = known @ centroid
            nearest, closeness = known_ids[int(sims.argmax())], float(sims.max())
        else:
            nearest, closeness = "", 0.0
        from_batch, expected = outside
        share = float(from_batch[members].mean())
        error = math.sqrt(expected * (1 - expected) / (NEIGHBOURS * len(members)))
        verdict = NEW if not nearest or share > expected + 3 * error else SUB_THEME
        clusters.append(
            Cluster(
                number=number,
                members=members,
                keywords=keywords.get(f"K{number}", []),
                quotes=_distinct(order, texts, QUOTES),
                nearest_theme=nearest,
                closeness=round(closeness, 3),
                verdict=verdict,
                outside=round(share, 3),
            )
        )
    return clusters


def _distinct(order: np.ndarray, texts: list[str], n: int) -> list[int]:
    """The first ``n`` rows of ``order`` whose texts are not repeats of one already taken."""
    taken: list[int] = []
    seen: set[str] = set()
    for i in order:
        key = " ".join(texts[i].casefold().split())
        if key in seen:
            continue
        seen.add(key)
        taken.append(int(i))
        if len(taken) == n:
            break
    return taken
