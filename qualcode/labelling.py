"""Labelling a seed set: an interactive terminal labeller and an Excel (XLSX) alternative.

Labels CSV contract (:data:`LABEL_COLUMNS`, written by the labeller and by ``--import``)::

    segment_id   id from the segments file (``qualcode segment``)
    document     source document
    section      heading the segment stands under
    text         the segment text (what ``qualcode train`` learns from)
    theme        theme id(s), several separated by ";" with the dominant one first;
                 empty = the coder skipped the segment (``qualcode train`` ignores such rows)
    coder        who labelled it
    labelled_at  ISO 8601 time of the answer
    note         the coder's note on the answer (may be empty)

Files from before the ``note`` column are read as they are and given the (empty) column, after
a backup, when a labelling session first opens them.

The labeller appends one row per answer and fsyncs it at once, so killing the process loses at
most the answer being typed. The file is append-only except for undo, which rewrites it
atomically without the coder's last row. For a (segment, coder) pair the last row counts.
"""

from __future__ import annotations

import csv
import getpass
import io
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from qualcode.errors import QualcodeError
from qualcode.files.coded import NON_ANSWER, non_answers
from qualcode.files.labels import finish_pending_apply, labels_lock, last_answers
from qualcode.files.tables import (
    append_row_durably,
    atomic_write_bytes,
    atomic_write_text,
    backup_file,
    lock_beside,
    read_segments_table,
    read_table,
    spreadsheet_rows,
    unneutralise,
    write_table,
)

if TYPE_CHECKING:
    from qualcode.codebook import Codebook
    from qualcode.model.storage import ThemeModel

__all__ = [
    "LABEL_COLUMNS",
    "LabelStore",
    "LabellingSession",
    "import_template",
    "pick_diverse",
    "read_labels_table",
    "read_segments",
    "uncertainty",
    "write_template",
]

LABEL_COLUMNS = (
    "segment_id", "document", "section", "text", "theme", "coder", "labelled_at", "note"
)  # fmt: skip
LABEL_COLUMNS_BEFORE_NOTE = LABEL_COLUMNS[:-1]
MIN_LABELS_PER_THEME = 2  # zero-shot suggestions until every theme has this many labels ...
COLD_START_ANSWERS_PER_THEME = 4  # ... or the coder gave this many answers per theme
UNCERTAIN_POOL = 10  # choose the next segment among this many least certain ones
RECENT = 10  # ... as far as possible from the last RECENT segments asked
# Asking first about a batch with a trained model: uncertainty × density (mean cosine to the
# DENSITY_NEIGHBOURS nearest segments of the batch), then greedily traded against similarity to
# the segments already chosen (weight DIVERSITY), as in Prodigy's textcat.teach.
DENSITY_NEIGHBOURS = 5
DIVERSITY = 0.5
TEMPLATE_SHEET, THEMES_SHEET = "segments", "themes"
# Segment columns the template leaves out (the analyst needs the words and the respondent).
TEMPLATE_HIDDEN = ("line_start", "line_end", "non_answer")


def default_coder() -> str:
    """The login name, used when no ``--coder`` is given."""
    try:
        return getpass.getuser() or "coder"
    except Exception:  # noqa: BLE001 - no login name (containers): any fixed name will do
        return "coder"


def now() -> str:
    """Local time with UTC offset, to the second (``labelled_at``)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------- reading


def read_segments(path: str | Path) -> pd.DataFrame:
    """Read a segments table (``segment_id`` and ``text`` required; ``document``, ``section``
    optional); rows with empty text are dropped and duplicate ids refused."""
    path = Path(path)
    table = read_segments_table(path, required=("segment_id", "text"))
    for column in ("document", "section"):
        if column not in table.columns:
            table[column] = ""
    ids = table["segment_id"].str.strip()
    rows = spreadsheet_rows(table)
    empty_ids = [r for r, i, t in zip(rows, ids, table["text"]) if not i and t.strip()]
    if empty_ids:
        raise QualcodeError(
            f"segments file {path.name!r}: row(s) {_list(empty_ids)} have text "
            "but no segment_id; create the file with `qualcode segment`."
        )
    dupes = ids[ids.duplicated() & (ids != "")]
    if len(dupes):
        raise QualcodeError(
            f"segments file {path.name!r}: segment_id {dupes.iloc[0]!r} occurs "
            f"more than once ({dupes.nunique()} id(s) repeat); ids must be unique."
        )
    table = table.assign(segment_id=ids)
    table = table[table["text"].str.strip() != ""].reset_index(drop=True)
    if table.empty:
        raise QualcodeError(f"segments file {path.name!r} has no segment with text.")
    return table


def _list(values: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _has_rows(path: Path) -> bool:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip()) > 1


def read_labels_table(path: str | Path, codebook: Codebook | None = None) -> pd.DataFrame:
    """Read a labels file in the :data:`LABEL_COLUMNS` contract (empty if missing or header-only).

    With ``codebook``, every non-empty ``theme`` is checked (one error lists all unknown themes
    with their row numbers) and normalised to theme ids.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0 or not _has_rows(path):
        return pd.DataFrame({c: pd.Series(dtype=str) for c in LABEL_COLUMNS})
    table = read_table(path, required=LABEL_COLUMNS_BEFORE_NOTE, what="labels file")
    if "note" not in table.columns:
        table["note"] = ""
    if codebook is not None:
        parsed = codebook.check_themes(
            table["theme"], what=f"labels file {path.name!r}", rows=spreadsheet_rows(table)
        )
        table["theme"] = [";".join(ids) for ids in parsed]
    return table


def latest_answers(labels: pd.DataFrame) -> pd.DataFrame:
    """The last row per (segment_id, coder): the answers that count."""
    if labels.empty:
        return labels
    return last_answers(labels, "segment_id", "coder")


# --------------------------------------------------------------------------- the labels file


class LabelStore:
    """The labels CSV of one coder's session: durable appends, atomic undo, a session lock.

    Use as a context manager; a second session on the same file is refused while the first
    runs (the lock is released by the OS even if the process is killed), unless ``wait`` gives
    the seconds to wait for it (the app holds the lock only while it reads or writes).
    """

    def __init__(
        self, path: str | Path, coder: str, codebook: Codebook | None = None, *, wait: float = 0
    ):
        self.path = Path(path)
        self.coder = coder
        self.codebook = codebook
        self.wait = wait
        self.repaired: Path | None = None
        self._lock: Any = None

    def __enter__(self) -> LabelStore:
        from filelock import Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = lock_beside(self.path)
        try:
            lock.acquire(timeout=self.wait)
        except Timeout:
            raise QualcodeError(
                f"another `qualcode label` session is writing {self.path.name!r}; "
                "finish it first (or write to another file)."
            ) from None
        self._lock = lock
        try:
            finish_pending_apply(self.path)  # a `review apply` killed mid-way is completed first
            self._check_header()
            self.repaired = self._repair_tail()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _repair_tail(self) -> Path | None:
        """Cut off a row torn by a crash in the middle of a write (after backing the file up);
        return the backup's path if there was one."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        data = self.path.read_bytes()
        end = 0
        lines = iter(data.splitlines(keepends=True))

        def feed():
            nonlocal end
            for line in lines:
                end += len(line)
                yield line.decode("utf-8-sig" if end == len(line) else "utf-8", "replace")

        ends: list[tuple[int, bool]] = []  # where each record ends, and whether it is whole
        try:
            for record in csv.reader(feed()):
                whole = data[end - 1 : end] == b"\n" and len(record) in (0, len(LABEL_COLUMNS))
                ends.append((end, whole))
        except csv.Error:
            return None  # not a torn row: leave it to the reader's clear error
        if not ends or ends[-1][1]:
            return None
        good = ends[-2][0] if len(ends) > 1 else 0
        backup = backup_file(self.path)
        atomic_write_bytes(self.path, data[:good])
        return backup

    def _check_header(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with self.path.open("rb") as handle:
            first = handle.readline().decode("utf-8-sig", errors="replace")
        header = [unneutralise(h.strip()) for h in next(csv.reader([first]), [])]
        if header == list(LABEL_COLUMNS_BEFORE_NOTE):
            table = read_table(self.path, what="labels file")
            backup_file(self.path)
            write_table(table.assign(note=""), self.path)
            return
        if header != list(LABEL_COLUMNS):
            raise QualcodeError(
                f"{self.path.name!r} exists but is not a labels file of `qualcode label` (columns "
                f"{', '.join(header) or 'none'}; expected {', '.join(LABEL_COLUMNS)}); choose "
                "another -o file, or use `qualcode label --import` to merge a spreadsheet."
            )

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def read(self) -> pd.DataFrame:
        """All rows of the file (themes checked against the codebook when one was given)."""
        return read_labels_table(self.path, self.codebook)

    def append(
        self, segment: Mapping[str, Any], themes: Sequence[str], note: str = ""
    ) -> dict[str, str]:
        """Append the answer ``themes`` (empty = skipped) and ``note`` for ``segment`` and
        fsync it."""
        row = {
            "segment_id": str(segment["segment_id"]),
            "document": str(segment.get("document", "")),
            "section": str(segment.get("section", "")),
            "text": str(segment["text"]),
            "theme": ";".join(themes),
            "coder": self.coder,
            "labelled_at": now(),
            "note": note.strip(),
        }
        append_row_durably(self.path, LABEL_COLUMNS, row)
        return row

    def undo(self) -> str | None:
        """Remove this coder's last row (atomic rewrite); return its segment_id, or None."""
        if not self.path.exists():
            return None
        text = self.path.read_bytes().decode("utf-8-sig")
        records = list(csv.reader(io.StringIO(text)))
        if len(records) < 2:
            return None
        header = [unneutralise(h) for h in records[0]]
        if header != list(LABEL_COLUMNS):
            raise QualcodeError(
                f"{self.path.name!r} is not a labels file written by `qualcode label`; cannot undo."
            )
        coder_at, id_at = header.index("coder"), header.index("segment_id")
        for i in range(len(records) - 1, 0, -1):
            record = records[i]
            if len(record) > coder_at and unneutralise(record[coder_at]) == self.coder:
                del records[i]
                buffer = io.StringIO()
                csv.writer(buffer, lineterminator="\n").writerows(
                    r for r in records if any(c.strip() for c in r)
                )
                atomic_write_text(self.path, buffer.getvalue())
                return unneutralise(record[id_at])
        return None


# --------------------------------------------------------------------------- choosing segments


def uncertainty(proba: np.ndarray, *, multi_label: bool = False) -> np.ndarray:
    """Margin per row (smaller = less certain): top-1 minus top-2 probability; for multi-label
    models, twice the distance of the most undecided theme from 0.5."""
    if multi_label:
        return 2 * np.abs(proba - 0.5).min(axis=1)
    top2 = np.sort(proba, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def pick_diverse(
    candidates: Sequence[int],
    features: np.ndarray,
    recent: Sequence[int],
    pool: int = UNCERTAIN_POOL,
) -> int:
    """Among the first ``pool`` ``candidates`` (best first), the one least similar to the
    ``recent`` ones (cosine, features L2-normalised); ties go to the better candidate."""
    if not candidates:
        raise ValueError("no candidates")
    head = list(candidates[:pool])
    if not recent or len(head) == 1:
        return head[0]
    similarity = features[head] @ features[list(recent)].T
    return head[int(np.argmin(similarity.max(axis=1)))]


def most_helpful_first(
    model: ThemeModel, texts: Sequence[str], count: int | None = None
) -> tuple[list[int], np.ndarray]:
    """The order in which to ask about a batch's ``texts`` so that a few answers help a trained
    ``model`` most: uncertain segments (small top-1 − top-2 margin) that many others resemble
    (density), spread over the batch (diversity). Returns the first ``count`` row indices (all
    by default) and the model's probabilities for every row, as ``classify`` would give them."""
    texts = [str(t) for t in texts]
    if not texts:
        return [], np.zeros((0, len(model.codebook.ids)))
    clf = model.classifier
    features = clf.transform(texts)
    clf = clf.adapted(features)
    proba = clf.proba_from_features(features)
    unsure = 1 - uncertainty(proba, multi_label=clf.multi_label)
    x = _normalised(np.asarray(clf._dense(features.dense), dtype=np.float32))
    n = len(texts)
    k = min(DENSITY_NEIGHBOURS, n - 1)
    density = np.ones(n, dtype=np.float32)
    low, high = 1.0, -1.0
    for start in range(0, n, 1024):  # n × n similarities in blocks: memory stays bounded
        block = x[start : start + 1024] @ x.T
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = np.nan
        low, high = (
            min(low, float(np.nanmin(block, initial=1.0))),
            max(high, float(np.nanmax(block, initial=-1.0))),
        )
        if k:
            density[start : start + 1024] = np.sort(np.nan_to_num(block, nan=-1.0), axis=1)[
                :, -k:
            ].mean(axis=1)
    score = unsure * np.clip(density, 0, None)
    score = score / score.max() if score.max() > 0 else score
    scale = high - low if high > low else 1.0
    chosen: list[int] = []
    closest = np.zeros(n)
    left = np.ones(n, dtype=bool)
    for _ in range(n if count is None else min(count, n)):
        value = np.where(left, (1 - DIVERSITY) * score - DIVERSITY * closest, -np.inf)
        pick = int(np.argmax(value))
        chosen.append(pick)
        left[pick] = False
        closest = np.maximum(closest, (x @ x[pick] - low) / scale)
    return chosen, proba


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


@dataclass
class _Trained:
    proba: np.ndarray  # over all segments, columns = codebook ids
    labels: int
    macro_f1: float | None


class BackgroundTrainer:
    """Retrains a :class:`~qualcode.model.classifier.ThemeClassifier` in a daemon thread.

    ``request(texts, themes)`` starts a fit (or queues the newest data if one is running);
    ``latest()`` returns the newest predictions over ``features`` once a fit has finished.
    """

    def __init__(
        self,
        codebook: Codebook,
        features: np.ndarray,
        *,
        texts: list[str],
        encoder: str | None = None,
        multi_label: bool = False,
    ):
        self.codebook = codebook
        self.encoder = encoder
        self.features = features
        self.texts = texts
        self.multi_label = multi_label
        self._lock = threading.Lock()
        self._pending: tuple[list[str], list[Any]] | None = None
        self._running = False
        self._thread: threading.Thread | None = None
        self._latest: _Trained | None = None
        self.error: str | None = None

    def request(self, texts: list[str], themes: list[list[str]]) -> None:
        y: list[Any] = themes if self.multi_label else [t[0] for t in themes]
        with self._lock:
            self._pending = (texts, y)
            if not self._running:
                self._running = True
                self._thread = threading.Thread(
                    target=self._run, name="qualcode-retrain", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        from qualcode.model.classifier import ThemeClassifier

        while True:
            with self._lock:
                job, self._pending = self._pending, None
                if job is None:
                    self._running = False
                    return
            texts, y = job
            try:
                # Every text was embedded up front, so this fit reads the embedding cache only.
                clf = ThemeClassifier(
                    encoder=self.encoder, codebook=self.codebook, multi_label=self.multi_label
                )
                clf.fit(texts, y)
                proba = clf.proba_from_features(clf.transform(self.texts, self.features))
                scores = getattr(clf, "cv_scores_", {})
                trained = _Trained(proba, len(texts), max(scores.values()) if scores else None)
            except Exception as err:  # noqa: BLE001 - keep labelling with older suggestions
                self.error = f"{type(err).__name__}: {err}"
                continue
            with self._lock:
                self._latest = trained

    def latest(self) -> _Trained | None:
        with self._lock:
            return self._latest

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current fit (if any) is done: for tests and scripted sessions."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


# --------------------------------------------------------------------------- the session


@dataclass
class SessionResult:
    """What a labelling session did."""

    answered: int = 0
    skipped: int = 0
    undone: int = 0
    labelled: int = 0  # segments of the segments file labelled by this coder, in total
    total: int = 0
    finished: bool = False  # every segment answered
    per_theme: dict[str, int] = field(default_factory=dict)


class LabellingSession:
    """One coder labelling a segments table: which segment to ask next, what to suggest, and
    the answers, written to the labels file at once. It has no screen:
    :class:`qualcode.cli.labeller.Labeller` shows it in a terminal.

    Parameters
    ----------
    segments : table from :func:`read_segments`.
    codebook : the themes to choose from.
    output : labels CSV (:data:`LABEL_COLUMNS`); appended to, and resumed from.
    coder : name stored with every answer; answers by other coders are used for suggestions but
        their segments are still asked.
    order : ``"active"`` (uncertain and diverse segments first) or ``"file"``.
    model : a trained model: its suggestions are shown, and with ``order="active"`` the
        segments come in :func:`most_helpful_first` order (labelling a new batch).
    retrain_every : retrain the suggestion model after this many answers.
    lock_wait : seconds to wait for the labels file's lock (0: refuse at once while another
        session holds it).

    Use it as a context manager (it holds the labels file's lock), then :meth:`prepare`.
    """

    def __init__(
        self,
        segments: pd.DataFrame,
        codebook: Codebook,
        output: str | Path,
        *,
        coder: str | None = None,
        multi_label: bool = False,
        order: str = "active",
        retrain_every: int = 5,
        encoder: str | None = None,
        model: ThemeModel | None = None,
        progress: bool = True,
        lock_wait: float = 0,
    ):
        if order not in ("active", "file"):
            raise QualcodeError(f"order must be 'active' or 'file', not {order!r}")
        if retrain_every < 1:
            raise QualcodeError("--retrain-every must be at least 1")
        if encoder == "tfidf":
            raise QualcodeError(
                "the labeller needs a sentence encoder for its suggestions; "
                "use the default encoder or a sentence-transformers model."
            )
        self.segments = segments.reset_index(drop=True)
        self.codebook = codebook
        self.store = LabelStore(output, coder or default_coder(), codebook, wait=lock_wait)
        self.multi_label = multi_label
        self.order = order
        self.retrain_every = retrain_every
        self.encoder = encoder
        self.model = model
        self.progress = progress
        self.ids = list(codebook.ids)
        self.index = {sid: i for i, sid in enumerate(self.segments["segment_id"])}
        self.neighbours = self._neighbour_index()
        self.non_answers = non_answers(self.segments)
        # A survey's answers are not a text: show the respondent's other columns, not the
        # answers above and below.
        self.respondent_columns = (
            [c for c in self.segments.columns if c not in (*LABEL_COLUMNS, *TEMPLATE_HIDDEN)]
            if NON_ANSWER in self.segments.columns
            else []
        )
        self.result = SessionResult(total=len(self.segments))

    def __enter__(self) -> LabellingSession:
        self.store.__enter__()
        try:
            self._state()
        except BaseException:
            self.store.__exit__()
            raise
        self._forced: list[str] = []
        self._asked: set[int] = set()
        self._recent: list[int] = []
        self._since_retrain = 0
        return self

    def __exit__(self, *exc: object) -> None:
        self.result.labelled = self.labelled
        self.result.per_theme = dict(self.mine_per_theme)
        self.store.__exit__(*exc)

    @property
    def coder(self) -> str:
        return self.store.coder

    def suggestion_model(self) -> _Trained | None:
        """The latest model trained on this session's labels, once past the cold start."""
        trained = self.trainer.latest()
        return None if trained is None or self._cold() else trained

    # ------------------------------------------------------------------ setup
    def _neighbour_index(self) -> list[tuple[int | None, int | None]]:
        docs = self.segments["document"].tolist()
        out: list[tuple[int | None, int | None]] = []
        for i, doc in enumerate(docs):
            prev = i - 1 if i > 0 and docs[i - 1] == doc else None
            nxt = i + 1 if i + 1 < len(docs) and docs[i + 1] == doc else None
            out.append((prev, nxt))
        return out

    def prepare(self) -> None:
        """Embed the segments and start the suggestion model (slow: the encoder loads). It
        reads no file: the labels are those read on entering (or at the last refresh)."""
        from qualcode.model.classifier import get_encoder, prototype_texts, zero_shot_proba
        from qualcode.model.encoders import embed

        model = get_encoder(self.encoder)
        texts = self.segments["text"].tolist()
        known = set(texts)
        extra = [t for t, _ in self.training if t not in known]
        everything = list(dict.fromkeys(texts + extra + prototype_texts(self.codebook)[0]))
        vectors = embed(everything, model, progress=self.progress)
        lookup = dict(zip(everything, vectors))
        self.features = _normalised(np.stack([lookup[t] for t in texts]))
        self.zero_shot = zero_shot_proba(texts, self.codebook, encoder=self.encoder)
        if self.model is not None:
            self.priority, self.model_proba = most_helpful_first(self.model, texts)
        self.trainer = BackgroundTrainer(
            self.codebook,
            self.features,
            texts=texts,
            encoder=self.encoder,
            multi_label=self.multi_label,
        )
        self._maybe_retrain(force=True)

    # ------------------------------------------------------------------ state
    def _state(self) -> None:
        """Re-read the labels file: this coder's answers and all training labels."""
        labels = latest_answers(self.store.read())
        mine = labels[labels["coder"] == self.store.coder]
        self.answers = dict(zip(mine["segment_id"], mine["theme"]))
        labelled = labels[labels["theme"] != ""]
        self.training = list(zip(labelled["text"], labelled["theme"].str.split(";")))
        counts = dict.fromkeys(self.ids, 0)
        for themes in labelled["theme"]:
            for t in themes.split(";"):
                counts[t] = counts.get(t, 0) + 1
        self.counts = counts
        mine_in_file = [t for s, t in self.answers.items() if s in self.index and t]
        self.mine_per_theme = dict.fromkeys(self.ids, 0)
        for themes in mine_in_file:
            for t in themes.split(";"):
                self.mine_per_theme[t] = self.mine_per_theme.get(t, 0) + 1
        self.labelled = len(mine_in_file)

    def _cold(self) -> bool:
        if self.model is not None:
            return False
        lacking = any(self.counts.get(t, 0) < MIN_LABELS_PER_THEME for t in self.ids)
        limit = COLD_START_ANSWERS_PER_THEME * len(self.ids)
        return lacking and len(self.training) < limit

    def _proba(self) -> tuple[np.ndarray, str]:
        if self.model is not None:
            return self.model_proba, "trained model"
        trained = None if self._cold() else self.trainer.latest()
        if trained is None:
            return self.zero_shot, "zero-shot"
        return trained.proba, f"model, {trained.labels} labels"

    def _maybe_retrain(self, force: bool = False) -> None:
        if self.model is not None or self._cold() or not self.training:
            return
        if force or self._since_retrain >= self.retrain_every or self.trainer.latest() is None:
            self._since_retrain = 0
            texts = [t for t, _ in self.training]
            themes = [list(ts) for _, ts in self.training]
            self.trainer.request(texts, themes)

    # ------------------------------------------------------------------ ordering
    def next_segment(self) -> int | None:
        """The row to ask about next; None when every segment has an answer."""
        if self._forced:
            return self.index[self._forced.pop()]
        fresh = [
            i
            for i, sid in enumerate(self.segments["segment_id"])
            if sid not in self.answers and i not in self._asked
        ]
        skipped = [
            i
            for i, sid in enumerate(self.segments["segment_id"])
            if self.answers.get(sid) == "" and i not in self._asked
        ]
        candidates = fresh or skipped
        if not candidates:
            return None
        answers = [i for i in candidates if not self.non_answers[i]]
        candidates = answers or candidates  # "vet ej", "nej": asked last
        if self.order == "file":
            return candidates[0]
        if self.model is not None:
            open_rows = set(candidates)
            return next(i for i in self.priority if i in open_rows)
        if self._cold():
            under = [t for t in self.ids if self.counts.get(t, 0) < MIN_LABELS_PER_THEME]
            target = self.ids.index(under[len(self._recent) % len(under)])
            ranked = sorted(candidates, key=lambda i: -self.zero_shot[i, target])
        else:
            proba, _ = self._proba()
            margin = uncertainty(proba, multi_label=self.multi_label)
            ranked = sorted(candidates, key=lambda i: margin[i])
        return pick_diverse(ranked, self.features, self._recent[-RECENT:])

    def suggest(self, i: int) -> tuple[list[str], float, str]:
        """The suggested themes for row ``i``, their confidence, and where they come from."""
        proba, source = self._proba()
        row = proba[i]
        top = int(row.argmax())
        themes = [self.ids[top]]
        if self.multi_label and source != "zero-shot":
            themes = [self.ids[j] for j in np.argsort(-row) if row[j] >= 0.5] or themes
        return themes, float(row[top]), source

    # ------------------------------------------------------------------ answers
    def record(self, i: int, themes: Sequence[str], note: str = "") -> None:
        """Save the themes of row ``i`` (none: skipped) and the coder's ``note``."""
        self.store.append(self.segments.iloc[i], list(themes), note)
        self._asked.add(i)
        self._recent.append(i)
        if themes:
            self.result.answered += 1
            self._since_retrain += 1
        else:
            self.result.skipped += 1
        self._after_change()

    def undo(self, i: int) -> str | None:
        """Remove this coder's last answer; it is asked first, then row ``i`` again. Returns
        the segment id undone, or None when there is nothing to undo."""
        undone = self.store.undo()
        if undone is None:
            return None
        self.result.undone += 1
        self._asked.discard(self.index.get(undone, -1))
        self._forced.append(str(self.segments.at[i, "segment_id"]))
        if undone in self.index:
            self._forced.append(undone)
        self._after_change()
        return undone

    def finish(self) -> None:
        """Every segment has an answer."""
        self.result.finished = True

    def refresh(self) -> None:
        """Read the labels file again (another tab, coder or command may have written it)."""
        self._state()

    def _after_change(self) -> None:
        self._state()
        self._maybe_retrain()

    # ------------------------------------------------------------------ typed answers
    def parse(self, answer: str, suggestion: Sequence[str]) -> list[str] | str:
        """Themes for a typed answer, a command (``s u ? q``), or an error message (str
        starting with ``!``)."""
        answer = answer.strip()
        if not answer:
            return list(suggestion)
        if answer.lower() in ("s", "u", "?", "h", "q"):
            return "?" if answer.lower() == "h" else answer.lower()
        themes: list[str] = []
        for part in (p.strip() for p in re.split(r"[,;]", answer)):
            if not part:
                continue
            try:
                picked = [self.codebook.resolve(part)]  # an id or a label (may hold spaces)
            except QualcodeError:
                picked = []
                for token in part.split():
                    if not token.isdigit():
                        return f"! {part!r} is neither a theme number nor a theme; type ? for help"
                    number = int(token)
                    if not 1 <= number <= len(self.ids):
                        return f"! no theme number {number}; use 1-{len(self.ids)}"
                    picked.append(self.ids[number - 1])
            themes += [t for t in picked if t not in themes]
        if len(themes) > 1 and not self.multi_label:
            return "! one theme per segment (start with --multi-label to allow several)"
        return themes


# --------------------------------------------------------------------------- XLSX round trip


def _autosize(sheet: Any, widths: Mapping[str, int]) -> None:
    for letter, width in widths.items():
        sheet.column_dimensions[letter].width = width


def template_segments(
    segments: pd.DataFrame,
    *,
    model: ThemeModel | None = None,
    first: int | None = None,
    labelled: Sequence[str | Path] = (),
) -> tuple[pd.DataFrame, str]:
    """The segments a labelling template asks about, in asking order, and that order in words:
    segments already labelled in the ``labelled`` files are left out; with a ``model``, the
    most helpful first (:func:`most_helpful_first`), else file order; non-answers (survey
    answers such as "vet ej") last; then the ``first`` N."""
    done: set[str] = set()
    for path in labelled:  # any labels file: the labeller's, the seed set, one review apply wrote
        table = read_table(path, required=("segment_id", "theme"), what="labels file")
        done |= set(table.loc[table["theme"].astype(str).str.strip() != "", "segment_id"])
    left_out = int(segments["segment_id"].isin(done).sum())
    segments = segments[~segments["segment_id"].isin(done)].reset_index(drop=True)
    how = "file order"
    if model is not None and len(segments):
        rows, _ = most_helpful_first(model, segments["text"].tolist())
        segments, how = segments.iloc[rows].reset_index(drop=True), "most helpful first"
    skipped = non_answers(segments)
    segments = pd.concat([segments[~skipped], segments[skipped]], ignore_index=True)
    if left_out:
        how += f", {left_out} already labelled left out"
    if first is not None:
        segments = segments.head(first)
    return segments, how


def template_bytes(
    segments: pd.DataFrame, codebook: Codebook, *, multi_label: bool = False
) -> bytes:
    """An XLSX workbook: sheet ``segments`` (segment_id, document, section, the survey's own
    columns, text, theme, note) with a drop-down of the themes' labels in ``theme`` (ids are
    accepted too), and sheet ``themes`` listing labels, ids and descriptions. With
    ``multi_label`` the drop-down only warns, so ``a;b`` can be typed."""
    import openpyxl
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Alignment, Font
    from openpyxl.worksheet.datavalidation import DataValidation

    def put(sheet: Any, row: int, col: int, value: str) -> Any:
        cell = sheet.cell(row=row, column=col)
        cell.value = ILLEGAL_CHARACTERS_RE.sub("", str(value))
        cell.data_type = "s"  # text, never a formula
        return cell

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = TEMPLATE_SHEET
    from openpyxl.utils import get_column_letter

    own = [c for c in segments.columns if c not in (*LABEL_COLUMNS, *TEMPLATE_HIDDEN)]
    columns = ["segment_id", "document", "section", *own, "text", "theme", "note"]
    for c, name in enumerate(columns, start=1):
        put(sheet, 1, c, name).font = Font(bold=True)
    wrap = Alignment(wrap_text=True, vertical="top")
    for r, row in enumerate(segments[columns[:-2]].fillna("").itertuples(index=False), start=2):
        for c, value in enumerate(row, start=1):
            put(sheet, r, c, value).alignment = wrap
    sheet.freeze_panes = "A2"
    letter = {name: get_column_letter(c) for c, name in enumerate(columns, start=1)}
    widths = {"segment_id": 22, "document": 18, "section": 24, "text": 80, "theme": 30, "note": 40}
    _autosize(sheet, {letter[n]: widths.get(n, 16) for n in columns})

    themes = book.create_sheet(THEMES_SHEET)
    for c, name in enumerate(["label", "id", "label_en", "description"], start=1):
        put(themes, 1, c, name).font = Font(bold=True)
    for r, theme in enumerate(codebook.themes, start=2):
        for c, value in enumerate(
            [theme.label, theme.id, theme.label_en, theme.description], start=1
        ):
            put(themes, r, c, value).alignment = wrap
    _autosize(themes, {"A": 36, "B": 26, "C": 30, "D": 90})

    last = len(codebook.themes) + 1
    validation = DataValidation(
        type="list",
        formula1=f"={THEMES_SHEET}!$A$2:$A${last}",
        allow_blank=True,
        showErrorMessage=True,
        errorStyle="warning" if multi_label else "stop",
        errorTitle="Okänt tema",
        error="Välj ett tema i listan (beskrivningar på bladet 'themes')."
        + (" Flera teman: skilj dem åt med ';'." if multi_label else ""),
        promptTitle="Tema",
        prompt="Välj tema; beskrivningarna står på bladet 'themes'.",
        showInputMessage=True,
    )
    sheet.add_data_validation(validation)
    validation.add(f"{letter['theme']}2:{letter['theme']}{max(2, len(segments) + 1)}")
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def write_template(
    segments: pd.DataFrame, codebook: Codebook, output: str | Path, *, multi_label: bool = False
) -> Path:
    """Write the XLSX labelling template (see :func:`template_bytes`) atomically."""
    output = Path(output)
    if output.suffix.lower() != ".xlsx":
        raise QualcodeError(
            f"the template is an Excel workbook: name it .xlsx, not {output.name!r}"
        )
    atomic_write_bytes(output, template_bytes(segments, codebook, multi_label=multi_label))
    return output


@dataclass
class ImportResult:
    """What :func:`import_template` did."""

    imported: int
    replaced: int
    blank: int
    backup: Path | None


def import_template(
    path: str | Path, codebook: Codebook, output: str | Path, *, coder: str | None = None
) -> ImportResult:
    """Read a filled-in template (XLSX, or CSV) and merge its labels into ``output``.

    Rows with an empty ``theme`` are left out. Unknown themes are refused in one error that
    lists them with their spreadsheet rows. An existing ``output`` is backed up first; its rows
    for the same (segment_id, coder) are replaced, all others kept.
    """
    path, output = Path(path), Path(output)
    sheet = read_table(path, required=("segment_id", "text", "theme"), what="labelling sheet")
    rows = spreadsheet_rows(sheet)
    parsed = codebook.check_themes(sheet["theme"], what=f"{path.name!r} column 'theme'", rows=rows)
    filled = [i for i, ids in enumerate(parsed) if ids]
    ids = sheet["segment_id"].str.strip()
    missing = [rows[i] for i in filled if not ids.iloc[i]]
    if missing:
        raise QualcodeError(
            f"{path.name!r}: row(s) {_list(missing)} have a theme but no "
            "segment_id; keep the segment_id column as exported."
        )
    seen: dict[str, int] = {}
    for i in filled:
        if ids.iloc[i] in seen:
            raise QualcodeError(
                f"{path.name!r}: segment_id {ids.iloc[i]!r} is labelled twice "
                f"(rows {seen[ids.iloc[i]]} and {rows[i]}); keep one row."
            )
        seen[ids.iloc[i]] = rows[i]
    stamp = now()
    default = coder or default_coder()
    if coder is None and "coder" in sheet.columns:
        coders = [str(sheet["coder"].iloc[i]).strip() or default for i in filled]
    else:
        coders = [default] * len(filled)
    new = pd.DataFrame(
        {
            "segment_id": [ids.iloc[i] for i in filled],
            "document": [
                sheet.get("document", pd.Series([""] * len(sheet))).iloc[i] for i in filled
            ],
            "section": [sheet.get("section", pd.Series([""] * len(sheet))).iloc[i] for i in filled],
            "text": [sheet["text"].iloc[i] for i in filled],
            "theme": [";".join(parsed[i]) for i in filled],
            "coder": coders,
            "labelled_at": [stamp] * len(filled),
            "note": [str(sheet["note"].iloc[i]).strip() if "note" in sheet else "" for i in filled],
        },
        columns=list(LABEL_COLUMNS),
        dtype=str,
    )
    if new.empty:
        raise QualcodeError(
            f"{path.name!r} has no labelled rows (every 'theme' cell is empty); "
            "fill in the theme column first."
        )
    with labels_lock(output):
        return _merge_import(output, new, len(sheet) - len(filled))


def _merge_import(output: Path, new: pd.DataFrame, blank: int) -> ImportResult:
    backup = None
    replaced = 0
    if output.exists() and output.stat().st_size > 0:
        old = read_table(output, required=("segment_id", "text", "theme"), what="labels file")
        for column in LABEL_COLUMNS:
            if column not in old.columns:
                old[column] = ""
        keys = set(zip(new["segment_id"], new["coder"]))
        stale = [k in keys for k in zip(old["segment_id"], old["coder"])]
        replaced = int(sum(stale))
        backup = backup_file(output)
        merged = pd.concat([old[[not s for s in stale]], new], ignore_index=True)
    else:
        merged = new
    write_table(merged.fillna(""), output)
    return ImportResult(len(new), replaced, blank, backup)
