"""Labels files: how a segment is known across files, which answer counts, and the labels
file's transactions (the lock every writer takes, the audit log of review decisions, and the
write-ahead that makes ``review apply`` all-or-nothing).

Audit log contract: ``<labels stem>.audit.csv`` beside the labels, one row per change
(:data:`AUDIT_COLUMNS`), appended durably.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from qualcode.errors import QualcodeError, crash_point
from qualcode.files.tables import (
    append_row_durably,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
    lock_beside,
    read_table,
)


def segment_keys(table: pd.DataFrame) -> list[str]:
    """How a segment is known across files: its ``segment_id``, or, in a file without ids, a
    hash of its document, section and text (the columns it has)."""

    def column(name: str) -> list[str]:
        if name not in table.columns:
            return [""] * len(table)
        return table[name].fillna("").astype(str).tolist()

    keys = []
    for sid, document, section, text in zip(
        column("segment_id"), column("document"), column("section"), column("text")
    ):
        if sid.strip():
            keys.append(sid.strip())
        else:
            digest = hashlib.sha1(f"{document}\n{section}\n{text.strip()}".encode()).hexdigest()
            keys.append(f"text:{digest[:16]}")
    return keys


def last_answers(table: pd.DataFrame, key: str, coder: str | None = None) -> pd.DataFrame:
    """The answers that count: where a coder answered a segment more than once, the last row
    (files in the order given, rows in file order: the labeller appends, undo rewrites). Rows
    of different coders all count. ``key`` and ``coder`` name the columns."""
    return table.drop_duplicates([key, coder] if coder else [key], keep="last")


AUDIT_COLUMNS = (
    "resolved_at",
    "resolved_by",
    "segment_id",
    "coder",
    "old_theme",
    "new_theme",
    "note",
    "review_file",
)


def audit_path(labels: str | Path) -> Path:
    """``labels.csv`` → ``labels.audit.csv``."""
    labels = Path(labels)
    return labels.with_name(f"{labels.stem}.audit.csv")


LABELS_LOCK_TIMEOUT = 10.0  # seconds a command waits for a labels file in use


@contextlib.contextmanager
def labels_lock(
    path: str | os.PathLike[str], *, timeout: float = LABELS_LOCK_TIMEOUT
) -> Iterator[None]:
    """Hold the lock that every writer of a labels file takes (the labeller, ``label --import``,
    ``review apply``); a killed ``review apply`` is completed first. Another holder for
    ``timeout`` seconds is an error."""
    from filelock import Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_beside(path)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise QualcodeError(
            f"{path.name!r} is in use (a labelling session, `label --import` or `review apply`); "
            "finish that first. Nothing was written."
        ) from None
    try:
        finish_pending_apply(path)
        yield
    finally:
        lock.release()


def write_with_audit(labels: Path, data: bytes, entries: list[dict[str, str]]) -> None:
    """Replace the labels file with ``data`` and log ``entries``, consistently: the entries and
    the labels' hash-to-be go to a pending file first, so a kill at any point leaves labels and
    audit log in step (see :func:`finish_pending_apply`). Call under :func:`labels_lock`."""
    pending = _pending_path(labels)
    state = {"after": hashlib.sha256(data).hexdigest(), "entries": entries}
    atomic_write_text(pending, json.dumps(state, ensure_ascii=False))
    crash_point("apply-pending")
    atomic_write_bytes(labels, data)
    crash_point("apply-replaced")
    finish_pending_apply(labels)


def _pending_path(labels: Path) -> Path:
    return labels.with_name(f".{labels.name}.apply-pending.json")


def finish_pending_apply(labels: str | Path) -> None:
    """Complete an apply that was killed: its audit lines are written ahead to a pending file
    with the labels' hash after the change; if the labels have that hash the change landed and
    the lines join the audit log, otherwise it did not and they are dropped. Call under the
    labels' lock."""
    labels = Path(labels)
    pending = _pending_path(labels)
    if not pending.exists():
        return
    try:
        state = json.loads(pending.read_text(encoding="utf-8"))
        landed = labels.exists() and file_sha256(labels) == state["after"]
        entries = state["entries"] if landed else []
    except (OSError, ValueError, KeyError, TypeError):
        entries = []
    log = audit_path(labels)
    done = _audit_keys(log)
    for entry in entries:
        if _audit_key(entry) not in done:
            append_row_durably(log, AUDIT_COLUMNS, entry)
    pending.unlink(missing_ok=True)


def _audit_key(entry: dict[str, str]) -> tuple[str, ...]:
    return tuple(str(entry.get(c, "")) for c in ("resolved_at", "segment_id", "coder", "new_theme"))


def _audit_keys(log: Path) -> set[tuple[str, ...]]:
    if not log.exists():
        return set()
    table = read_table(log)
    return {_audit_key(row) for row in table.to_dict("records")}
