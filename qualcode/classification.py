"""Step 4: batch-classify segments with a trained model, with calibrated confidence and a review
flag the analyst can read and steer.

Predictions CSV contract (after every input column): ``theme, confidence, second_theme, margin,
needs_review, review_reason, themes, similarity``, then ``p_<theme>`` per theme.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from qualcode.errors import QualcodeError, crash_point
from qualcode.files.coded import (
    MODEL_PREFIX,
    NON_ANSWER,
    NON_ANSWER_REASON,
    PREDICTION_COLUMNS,
    model_column,
    non_answers,
)
from qualcode.model.review_rule import DECIMALS, INTERVAL_LEVEL, ReviewRule, fit_to_batch

if TYPE_CHECKING:
    from qualcode.model.classifier import Scores, ThemeClassifier
    from qualcode.model.storage import ThemeModel

TABLE_SUFFIXES = {".csv", ".tsv", ".xlsx", ".parquet", ".pq"}  # segments tables (.txt: notes)


def read_inputs(
    paths: Sequence[str | Path], *, column: str | None = None, unit: str = "paragraph"
) -> pd.DataFrame:
    """Segments to classify: segments tables (with a ``text`` column) are read as they are;
    documents (and survey exports with ``column``) are segmented on the fly."""
    frames = list(input_chunks(paths, column=column, unit=unit, rows=2**62)())
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    _check_segments(out)
    _refuse_duplicate_ids([_id_hashes(out)], lambda: iter([out]))
    return out


def _check_segments(segments: pd.DataFrame) -> None:
    from qualcode.files.tables import check_text_lengths

    if "text" not in segments.columns:
        raise QualcodeError("the segments to classify need a 'text' column")
    check_text_lengths(segments["text"], "segments to classify")


def _id_hashes(segments: pd.DataFrame) -> np.ndarray:
    """Hashes of the segment ids (none without the column): duplicates are found among them."""
    if "segment_id" not in segments.columns:
        return np.empty(0, np.uint64)
    named = segments["segment_id"][segments["segment_id"] != ""]
    return pd.util.hash_pandas_object(named, index=False).to_numpy()


def input_chunks(
    paths: Sequence[str | Path],
    *,
    column: str | None = None,
    unit: str = "paragraph",
    rows: int | None = None,
) -> Callable[[], Iterator[pd.DataFrame]]:
    """The segments to classify as chunks of at most ``rows`` rows (see :func:`read_inputs`):
    a segments table (CSV, XLSX, Parquet) is read a chunk at a time; documents (and survey
    exports with ``column``) are segmented whole, then cut. Every chunk has the columns of all
    inputs, in order of appearance (empty where a file has none)."""
    from qualcode.files.chunks import CHUNK_ROWS, aligned, iter_table
    from qualcode.files.tables import read_segments_table
    from qualcode.segmentation import segment_chunks

    if not paths:
        raise QualcodeError("give at least one input file")
    size = rows or CHUNK_ROWS

    def tables(path: Path) -> Iterator[pd.DataFrame]:
        if path.suffix.lower() in TABLE_SUFFIXES and column is None:
            yield from iter_table(
                path, required=["text"], what="segments file", rows=size, read=read_segments_table
            )
        else:
            yield from segment_chunks([path], unit=unit, column=column, rows=size)()

    return aligned([functools.partial(tables, path) for path in map(Path, paths)])


def classify_files(
    model_dir: str | Path,
    model: ThemeModel,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    column: str | None = None,
    unit: str = "paragraph",
    rule: ReviewRule | None = None,
    multi_label: bool = False,
    adapt: bool = True,
    max_flagged: float | None = None,
    excel: bool = False,
    resume: bool = False,
    chunk_rows: int | None = None,
    dask: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Classify input files chunk by chunk into ``output`` (:func:`code_chunks`), written as it
    goes to a temporary file renamed at the end. The scores of chunks done are kept in a run
    folder beside ``output`` until the run ends, so a killed run ``resume``s where it stopped.
    With ``dask`` (a scheduler address or ``local:N``) the chunks are scored on a Dask cluster.
    Returns the columns the summaries read (see :func:`code_chunks`)."""
    from qualcode.files.chunks import CHUNK_ROWS, RunFolder, file_fingerprint
    from qualcode.files.tables import file_sha256
    from qualcode.model.encoders import MANIFEST

    settings = {
        "rule": rule,
        "multi_label": multi_label,
        "adapt": adapt,
        "max_flagged": max_flagged,
        "progress": progress,
    }
    rows = chunk_rows or CHUNK_ROWS
    if rows < 1:
        raise QualcodeError(f"--chunk-size must be at least 1, not {rows}")
    chunks = input_chunks(inputs, column=column, unit=unit, rows=rows)
    key = {
        "inputs": file_fingerprint(inputs),
        "model": file_sha256(Path(model_dir) / MANIFEST),
        "column": column,
        "unit": unit,
        "rows": rows,
    }
    store = RunFolder(output, key, resume=resume)
    try:
        light = _code_files(model, chunks, store, output, excel, dask, model_dir, **settings)
    except QualcodeError:
        store.remove()  # bad input: nothing to resume
        raise
    store.remove()
    return light


def _code_files(
    model: ThemeModel,
    chunks: Callable[[], Iterator[pd.DataFrame]],
    store: ScoreStore,
    output: str | Path,
    excel: bool,
    dask: str | None,
    model_dir: str | Path,
    **settings: Any,
) -> pd.DataFrame:
    import contextlib

    from qualcode.files.chunks import TableWriter

    with contextlib.ExitStack() as stack:
        scorer: Scorer = score_locally
        if dask:
            from qualcode.model.cluster import dask_scorer

            scorer = stack.enter_context(dask_scorer(dask, model_dir))
        with TableWriter(output, excel=excel) as writer:
            return code_chunks(
                model,
                chunks,
                store,
                lambda frame: writer.write(as_written(frame)),
                scorer=scorer,
                **settings,
            )


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


def ranked(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Themes ranked per row (column indices), the top probability and the margin to the
    second, rounded as written to the predictions file so the file agrees with its flags."""
    order = np.argsort(-proba, axis=1, kind="stable")
    rows = np.arange(len(proba))
    top = np.round(proba[rows, order[:, 0]], DECIMALS)
    margin = np.round(top - proba[rows, order[:, 1]], DECIMALS) if proba.shape[1] > 1 else top
    return order, top, margin


class ScoreStore(Protocol):
    """Where the :class:`Scores` of each chunk of a batch are kept between the passes (in memory,
    or a :class:`~qualcode.files.chunks.RunFolder` on disk)."""

    def done(self, index: int) -> bool: ...
    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None: ...
    def load(self, index: int) -> dict[str, np.ndarray]: ...


class MemoryStore(dict):  # type: ignore[type-arg]
    """A :class:`ScoreStore` in memory (a batch held whole)."""

    def done(self, index: int) -> bool:
        return index in self

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        self[index] = {k: v for k, v in arrays.items() if v is not None}

    def load(self, index: int) -> dict[str, np.ndarray]:
        return self[index]


def learn_from_batch(
    clf: ThemeClassifier, chunks: Callable[[], Iterator[Scores]], *, adapt: bool = True
) -> ThemeClassifier:
    """:meth:`ThemeClassifier.adapted` over a batch held as chunks of :class:`Scores`
    (``chunks()`` yields them, one at a time, in the same order every call): the most confident
    half of the whole batch, gathered from the chunks, refits the head once. What this holds in
    memory: one confidence per segment, and the embeddings of the confident half (384 float32 a
    segment with e5-small), the one part that grows with the batch."""
    from qualcode.model.classifier import ADAPT_MIN, confident, unit_length

    if not adapt or not clf.can_adapt():
        return clf
    confidence, unit = [], True
    for c in chunks():
        if len(c.proba):
            confidence.append(c.proba.max(axis=1))
            unit = unit and c.dense is not None and unit_length(c.dense)
    keep = np.concatenate(confidence) if confidence else np.empty(0)
    if len(keep) < ADAPT_MIN or not unit:
        return clf  # too few to learn from, or not unit-length as the training features are
    keep = confident(keep)

    def kept() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start = 0
        for c in chunks():
            mine = keep[start : start + len(c.proba)]
            start += len(c.proba)
            if mine.any():
                yield c.dense[mine], c.proba[mine]  # type: ignore[index]

    return clf.refit_on(kept(), int(keep.sum()))


def final_proba(clf: ThemeClassifier, head: ThemeClassifier, scores: Scores) -> np.ndarray:
    """The probabilities a chunk is coded with: its own, or those of the head that learnt from
    the batch."""
    if head is clf or not len(scores.proba):
        return scores.proba
    return head.proba_from_parts(scores.dense, scores.lexical)


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
    scores = clf.scores(texts)
    proba = final_proba(clf, learn_from_batch(clf, lambda: iter([scores]), adapt=adapt), scores)
    order, top, margin = ranked(proba)
    rule = fit_to_batch(rule, top, evidence=evidence, max_flagged=max_flagged)
    flags, reasons = rule.flag(top, margin, scores.similarity)
    return Coded(proba, order, flags, reasons, scores.similarity, rule, top, margin)


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
    frames: list[pd.DataFrame] = []
    light = code_chunks(
        model,
        lambda: iter([segments]),
        MemoryStore(),
        frames.append,
        rule=rule,
        multi_label=multi_label,
        adapt=adapt,
        max_flagged=max_flagged,
        progress=progress,
    )
    out = frames[0]
    out.attrs["review_rule"] = light.attrs["review_rule"]
    return out


Scorer = Callable[
    ["ThemeClassifier", Iterator[tuple[int, list[str]]]], Iterator[tuple[int, "Scores"]]
]


def score_locally(
    clf: ThemeClassifier, items: Iterator[tuple[int, list[str]]]
) -> Iterator[tuple[int, Scores]]:
    """Score chunks one after the other in this process."""
    for index, texts in items:
        yield index, clf.scores(texts)


def code_chunks(
    model: ThemeModel,
    chunks: Callable[[], Iterator[pd.DataFrame]],
    store: ScoreStore,
    write: Callable[[pd.DataFrame], None],
    *,
    rule: ReviewRule | None = None,
    multi_label: bool = False,
    adapt: bool = True,
    max_flagged: float | None = None,
    progress: bool = True,
    scorer: Scorer = score_locally,
) -> pd.DataFrame:
    """Classify a batch given as chunks (``chunks()`` yields the same segments tables, in the
    same order, every time it is called) and hand each coded chunk to ``write``.

    Three passes: (1) each chunk's :class:`Scores` (embeddings and predictions, the expensive
    part; ``scorer`` may spread it over a cluster) go to ``store``, skipping chunks already there
    (a resumed run); (2) the batch-level step: learning from the confident half of the batch
    and the review threshold over all its confidences; (3) each chunk's rows are coded and
    written. The result equals classifying the whole batch at once. Returns the columns the
    summaries read (themes, needs_review, confidence, non_answer), with the review rule used in
    ``attrs["review_rule"]``."""
    clf = model.classifier
    if multi_label and not clf.multi_label:
        raise QualcodeError(
            "this model was trained single-label: retrain with `qualcode train --multi-label`"
        )
    from qualcode.model.classifier import Scores

    clf = copy.copy(clf)
    clf.progress = progress
    n_chunks = _score_chunks(clf, chunks, store, scorer)

    def parts() -> Iterator[Scores]:
        for i in range(n_chunks):
            yield Scores.from_arrays(store.load(i))

    head = learn_from_batch(clf, parts, adapt=adapt)
    top = np.concatenate([ranked(final_proba(clf, head, p))[1] for p in parts()])
    if not len(top):
        raise QualcodeError(
            "every segment is marked as a non-answer (column non_answer): nothing to classify"
        )
    rule = fit_to_batch(
        rule or model.review_rule, top, evidence=model.review_evidence, max_flagged=max_flagged
    )
    del top
    light = []
    for index, segments in enumerate(chunks()):
        scores = Scores.from_arrays(store.load(index))
        out = _coded_rows(model, clf, segments, scores, final_proba(clf, head, scores), rule)
        write(out)
        names = [model_column(out, c) for c in ("themes", "needs_review", "confidence")]
        light.append(out[[c for c in (*names, NON_ANSWER) if c in out.columns]])
    summary = pd.concat(light, ignore_index=True)
    summary.attrs["review_rule"] = rule
    return summary


def _score_chunks(
    clf: ThemeClassifier,
    chunks: Callable[[], Iterator[pd.DataFrame]],
    store: ScoreStore,
    scorer: Scorer,
) -> int:
    """Pass 1: check every chunk and score those not yet in ``store``; the number of chunks."""
    ids: list[np.ndarray] = []
    count = 0

    def todo() -> Iterator[tuple[int, list[str]]]:
        nonlocal count
        for index, segments in enumerate(chunks()):
            count += 1
            _check_segments(segments)
            ids.append(_id_hashes(segments))
            if not store.done(index):
                skipped = non_answers(segments)  # survey answers with nothing to code
                texts = segments["text"].astype(str)[~skipped].tolist()
                if texts:
                    yield index, texts
                else:  # nothing to score: an empty chunk of scores
                    k = len(clf.classes_)
                    store.save(index, {"proba": np.empty((0, k)), "similarity": np.empty(0)})

    for index, scores in scorer(clf, todo()):
        store.save(index, scores.arrays())  # type: ignore[arg-type]
        crash_point("chunk-scored")
    _refuse_duplicate_ids(ids, chunks)
    return count


def _refuse_duplicate_ids(
    ids: list[np.ndarray], chunks: Callable[[], Iterator[pd.DataFrame]]
) -> None:
    hashes = np.sort(np.concatenate(ids)) if ids else np.empty(0, np.uint64)
    if not len(hashes) or not (hashes[1:] == hashes[:-1]).any():
        return
    seen: dict[str, int] = {}
    for segments in chunks():
        for sid in segments.get("segment_id", pd.Series(dtype=str)):
            if sid:
                seen[sid] = seen.get(sid, 0) + 1
    dupes = [sid for sid, n in seen.items() if n > 1]
    raise QualcodeError(
        f"duplicate segment_id {dupes[0]!r} ({len(dupes)} ids repeat): "
        "each segment needs its own id"
    )


def _coded_rows(
    model: ThemeModel,
    clf: ThemeClassifier,
    segments: pd.DataFrame,
    scores: Scores,
    proba: np.ndarray,
    rule: ReviewRule,
) -> pd.DataFrame:
    """Pass 3 for one chunk: its rows with the prediction columns added."""
    order, top, margin = ranked(proba)
    flags, reasons = rule.flag(top, margin, scores.similarity)
    skipped = non_answers(segments)
    classes = [str(c) for c in clf.classes_]

    def spread(values: Any, blank: Any) -> list[Any]:
        """Values of the coded rows in place, ``blank`` for the non-answers."""
        it = iter(list(values))
        return [blank if skip else next(it) for skip in skipped]

    nan = float("nan")
    columns: dict[str, Any] = {
        "theme": spread((classes[j] for j in order[:, 0]), ""),
        "confidence": spread(top, nan),
        "second_theme": spread((classes[j] for j in order[:, 1]), ""),
        "margin": spread(margin, nan),
        "needs_review": spread(flags, False),
        "review_reason": spread(reasons, NON_ANSWER_REASON),
        "themes": spread(theme_lists(proba, order, classes, model, clf.multi_label), ""),
        # float64 before rounding: a float32 0.8937 would be written 0.8937000036239624 in a
        # column that also holds a non-answer's NaN, and 0.8937 in one that does not.
        "similarity": spread(np.round(scores.similarity.astype(float), DECIMALS), nan),
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

    write_table(as_written(predictions), path, excel=excel)


def as_written(predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions as the file holds them: ``needs_review`` as ``true``/``false``."""
    out = predictions.copy()
    column = model_column(out, "needs_review")
    out[column] = np.where(out[column].astype(bool), "true", "false")
    return out
