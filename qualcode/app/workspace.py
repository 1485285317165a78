"""``qualcode app``: a local web app over an analyst's working folder, for the human work:
labelling, settling disagreements, browsing and correcting coded segments, and running
train / classify.

The folder holds the same files the CLI reads and writes, so the two can be mixed::

    segments.csv      what to label and classify (`qualcode segment`)
    codebook.yaml     the themes (or found as every command finds it)
    labels.csv        the answers (the labels contract; written as the terminal labeller does)
    model/            the model `Träna` writes
    predictions.csv   what `Koda` writes

Security: it binds 127.0.0.1; every request needs the per-start token (in the URL the server
prints, then a SameSite=Strict cookie); the Host header must name this server (DNS
rebinding); a POST must carry the page's form token and come from this origin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from qualcode.codebook import Codebook, find_codebook
from qualcode.errors import QualcodeError
from qualcode.files.labels import LABELS_LOCK_TIMEOUT
from qualcode.files.tables import read_table, write_table
from qualcode.labelling import LabellingSession, read_segments

TEXTS = {
    "sv": {
        "title": "qualcode",
        "label": "Koda",
        "review": "Granska",
        "browse": "Bläddra",
        "home": "Start",
        "coder": "Kodare",
        "save": "Spara",
        "skip": "Hoppa över",
        "undo": "Ångra",
        "suggested": "Förslag",
        "done": "Alla segment har ett svar.",
        "train": "Träna modellen",
        "classify": "Koda nya segment",
        "resolve": "Avgör",
        "correct": "Rätta",
        "search": "Sök",
        "flagged": "Flaggad",
        "keyhelp": "Siffertangent väljer tema och sparar, 0 hoppar över, u ångrar.",
        "note": "Anteckning",
        "notehelp": "n skriver en anteckning (sparas med svaret), Esc tillbaka.",
        "save_suggestion": "Enter sparar förslaget.",
        "save_chosen": "Siffertangent väljer eller väljer bort ett tema, Enter sparar.",
        "per_theme": "Per tema",
        "mine": "mina",
        "everyone": "alla kodare",
        "theme": "Tema",
        "themes": "Teman",
        "segments": "Segment",
        "quotes": "Citat",
        "all": "alla",
        "yes": "ja",
        "no": "nej",
        "document": "Dokument",
        "section": "Avsnitt",
        "showing": "visar",
        "confidence": "Säkerhet",
    },
    "en": {
        "title": "qualcode",
        "label": "Label",
        "review": "Review",
        "browse": "Browse",
        "home": "Home",
        "coder": "Coder",
        "save": "Save",
        "skip": "Skip",
        "undo": "Undo",
        "suggested": "Suggested",
        "done": "Every segment has an answer.",
        "train": "Train the model",
        "classify": "Classify new segments",
        "resolve": "Resolve",
        "correct": "Correct",
        "search": "Search",
        "flagged": "Flagged",
        "keyhelp": "A number key picks a theme and saves, 0 skips, u undoes.",
        "note": "Note",
        "notehelp": "n writes a note (saved with the answer), Esc returns.",
        "save_suggestion": "Enter saves the suggestion.",
        "save_chosen": "A number key picks or unpicks a theme, Enter saves.",
        "per_theme": "Per theme",
        "mine": "mine",
        "everyone": "all coders",
        "theme": "Theme",
        "themes": "Themes",
        "segments": "Segments",
        "quotes": "Quotes",
        "all": "all",
        "yes": "yes",
        "no": "no",
        "document": "Document",
        "section": "Section",
        "showing": "showing",
        "confidence": "Confidence",
    },
}


@dataclass
class Job:
    """A train or classify run in the background."""

    name: str
    state: str = "idle"  # idle | running | done | failed
    message: str = ""
    started: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started if self.state == "running" else None
        return {"state": self.state, "message": self.message, "elapsed": elapsed}


@dataclass
class Workspace:
    """The analyst's folder and what the app keeps between requests."""

    folder: Path
    lang: str = "sv"
    multi_label: bool = False
    order: str = "active"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    lock: threading.RLock = field(default_factory=threading.RLock)
    sessions: dict[str, LabellingSession] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    @property
    def segments_path(self) -> Path:
        return self.folder / "segments.csv"

    @property
    def labels_path(self) -> Path:
        return self.folder / "labels.csv"

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    @property
    def predictions_path(self) -> Path:
        return self.folder / "predictions.csv"

    def codebook(self) -> Codebook:
        return find_codebook(None, [self.folder / "codebook.yaml", self.model_dir])

    def form_token(self) -> str:
        """The token every POST carries (derived from the start token, not equal to it)."""
        return hmac.new(self.token.encode(), b"form", hashlib.sha256).hexdigest()

    def session(self, coder: str) -> LabellingSession:
        """The labelling session of ``coder``: kept in memory, holding the labels file's lock
        only while a request reads or writes it."""
        with self.lock:
            if coder not in self.sessions:
                model = None
                if self.model_dir.is_dir():
                    from qualcode.model.storage import load_model

                    model = load_model(self.model_dir)
                session = LabellingSession(
                    read_segments(self.segments_path),
                    self.codebook() if model is None else model.codebook,
                    self.labels_path,
                    coder=coder,
                    model=model,
                    multi_label=self.multi_label,
                    order=self.order,
                    progress=False,
                    lock_wait=LABELS_LOCK_TIMEOUT,
                )
                with session:  # the labels are read under the file's lock ...
                    pass
                session.prepare()  # ... and the slow embedding runs without it
                self.sessions[coder] = session
            return self.sessions[coder]

    def run(self, name: str, work: Any) -> Job:
        """Start ``work`` in a thread unless a job of that name is running; ``work(say)`` may
        ``say`` what it is doing, and returns what it did."""
        with self.lock:
            job = self.jobs.setdefault(name, Job(name))
            if job.state == "running":
                return job
            job.state, job.message, job.started = "running", "", time.monotonic()

        def say(message: str) -> None:
            job.message = message

        def target() -> None:
            try:
                job.message = work(say)
                job.state = "done"
            except QualcodeError as err:
                job.state, job.message = "failed", str(err)
            except Exception as err:  # noqa: BLE001 - shown on the page, not a dead thread
                job.state, job.message = "failed", f"{type(err).__name__}: {err}"
                traceback.print_exc()

        threading.Thread(target=target, daemon=True).start()
        return job

    # ------------------------------------------------------------------ the steps
    def train(self, say: Any = print) -> str:
        from qualcode.training import read_labels, train

        book = self.codebook()
        labels = read_labels(self.labels_path, book)
        say(f"{len(labels)} etiketter, {len(book.ids)} teman")
        model = train(labels, book, progress=False, multi_label=self.multi_label)
        with self.lock:
            model.save(self.model_dir)
            self.sessions.clear()  # suggestions from the new model
        return model.describe()

    def classify(self, say: Any = print) -> str:
        from qualcode.classification import classify, review_summary, write_predictions
        from qualcode.model.storage import load_model

        model = load_model(self.model_dir)
        segments = read_table(self.segments_path, required=("text",))
        say(f"{len(segments)} segment")
        predictions = classify(model, segments, progress=False)
        write_predictions(predictions, self.predictions_path)
        return review_summary(predictions)

    def overview(self, table: pd.DataFrame, book: Codebook) -> list[dict[str, Any]]:
        """Per theme of ``table`` (predictions.csv as read): its label, segments, flagged, and
        three quotes."""
        from qualcode.reporting.coded import theme_counts
        from qualcode.reporting.report import exemplar_quotes

        counts = theme_counts(table, book, by=None).set_index("theme")
        quotes = exemplar_quotes(table, book, n=3)
        return [
            {
                "id": theme.id,
                "label": theme.label,
                "segments": int(counts.at[theme.id, "segments"]),
                "flagged": int(counts.at[theme.id, "flagged"]) if "flagged" in counts else 0,
                "quotes": quotes.loc[quotes["theme"] == theme.id, "text"].tolist(),
            }
            for theme in book.themes
            if theme.id in counts.index
        ]

    def correct(self, segment_id: str, theme: str, coder: str) -> None:
        """A theme corrected while browsing becomes a label, as if answered in the labeller."""
        from qualcode.labelling import LabelStore

        predictions = read_table(self.predictions_path, required=("segment_id", "text"))
        rows = predictions[predictions["segment_id"] == segment_id]
        if rows.empty:
            raise QualcodeError(f"no segment {segment_id!r} in predictions.csv")
        book = self.codebook()
        theme = book.resolve(theme)
        store = LabelStore(self.labels_path, coder, book, wait=LABELS_LOCK_TIMEOUT)
        with self.lock, store:
            store.append(rows.iloc[0].to_dict(), [theme])
        self.sessions.pop(coder, None)

    def resolve(self, segment_id: str, theme: str, note: str, coder: str) -> str:
        """Settle one review row through `review apply` (hash check, backup, audit log)."""
        from qualcode.review import apply_review, build_review

        book = self.codebook()
        predictions = self.predictions_path if self.predictions_path.exists() else None
        with self.lock:
            result = build_review(
                [self.labels_path], book, predictions=predictions, label_errors=False
            )
            table = result.table
            rows = table[table["segment_id"] == segment_id]
            if rows.empty:
                raise QualcodeError(f"segment {segment_id!r} is not among the rows to review")
            one = rows.copy()
            one["resolved_theme"], one["note"] = book.resolve(theme), note
            staging = self.folder / f".review-{secrets.token_hex(4)}.csv"
            write_table(one, staging)
            try:
                done = apply_review(staging, self.labels_path, book, coder=coder)
            finally:
                staging.unlink(missing_ok=True)
            self.sessions.clear()
        return f"{done.changed} ändrade, {done.added} tillagda"

    def review_rows(self) -> pd.DataFrame:
        from qualcode.review import build_review

        predictions = self.predictions_path if self.predictions_path.exists() else None
        result = build_review(
            [self.labels_path], self.codebook(), predictions=predictions, label_errors=False
        )
        return result.table
