"""Tables read and written in chunks, so that memory stays flat whatever a table's size, and the
run folder where a long run keeps the chunks it has done (what ``--resume`` continues from).

A text table (CSV/TSV) up to :data:`STREAM_BYTES` is read whole by
:func:`~qualcode.files.tables.read_table` and cut into chunks; a larger one is parsed as a
stream (UTF-8, UTF-16 with BOM or cp1252). An .xlsx workbook is read row by row, a Parquet file
(``pyarrow``) one record batch at a time. Every cell is ``str``, as in ``read_table``.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qualcode.errors import QualcodeError
from qualcode.files.tables import (
    _UTF8_BOM,
    MAX_TEXT_BYTES,
    TEXT_TABLE_SUFFIXES,
    _build_frame,
    _match_required,
    _names,
    _sniff_delimiter,
    atomic_output,
    atomic_write_bytes,
    check_file,
    csv_bytes,
    read_table,
    write_table,
    xlsx_records,
)

__all__ = [
    "CHUNK_ROWS",
    "PARQUET_SUFFIXES",
    "RunFolder",
    "TableWriter",
    "aligned",
    "iter_table",
]

CHUNK_ROWS = 10_000  # rows per chunk (and per Dask partition)
STREAM_BYTES = 8 * 2**20  # text tables larger than this are parsed as a stream
PARQUET_SUFFIXES = (".parquet", ".pq")
_SAMPLE_BYTES = 1 << 20


def iter_table(
    path: str | os.PathLike[str],
    *,
    required: Sequence[str] = (),
    what: str = "table",
    rows: int = CHUNK_ROWS,
    read: Callable[..., pd.DataFrame] = read_table,
) -> Iterator[pd.DataFrame]:
    """The table at ``path`` in chunks of ``rows`` rows (the last one shorter), every cell a
    ``str``; the same rows, columns and errors as :func:`read_table` (``read``, which reads a
    small text table whole). Chunk ``i`` holds rows
    ``i * rows`` to ``(i + 1) * rows`` of the table, so a chunk is found again by its number."""
    path = Path(path)
    check_file(path, what=what)
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        yield from _parquet_chunks(path, what, required, rows)
    elif suffix == ".xlsx":
        yield from _record_chunks(xlsx_records(path, what), path, what, required, rows)
    elif suffix in TEXT_TABLE_SUFFIXES and path.stat().st_size > STREAM_BYTES:
        yield from _record_chunks(_csv_records(path, what, required), path, what, required, rows)
    else:
        table = read(path, required=required, what=what)
        for start in range(0, len(table), rows):
            chunk = table.iloc[start : start + rows].reset_index(drop=True)
            chunk.attrs = {**table.attrs, "header_row": table.attrs["header_row"] + start}
            yield chunk


def _record_chunks(
    records: Iterable[list[str]], path: Path, what: str, required: Sequence[str], rows: int
) -> Iterator[pd.DataFrame]:
    """Frames of ``rows`` records under the first non-blank record (the header). Blank records
    inside the table are kept, trailing ones dropped, as :func:`read_table` does."""
    header: list[str] | None = None
    header_offset = 0
    block: list[list[str]] = []
    blanks: list[list[str]] = []
    done = 0  # body records before this block
    emitted = False
    for record in records:
        blank = not any(c.strip() for c in record)
        if header is None:
            if not blank:
                header = record
            else:
                header_offset += 1
            continue
        if blank:
            blanks.append(record)
            continue
        block.extend(blanks)
        blanks = []
        block.append(record)
        while len(block) >= rows:
            head, block = block[:rows], block[rows:]
            yield _frame(header, head, path, what, required, header_offset, done)
            done += rows
            emitted = True
    if header is None:
        _build_frame([], path, what, required)  # raises: no data
    if block or not emitted:
        yield _frame(header or [], block, path, what, required, header_offset, done)


def _frame(
    header: list[str],
    body: list[list[str]],
    path: Path,
    what: str,
    required: Sequence[str],
    blank_above: int,
    done: int,
) -> pd.DataFrame:
    frame = _build_frame([header, *body], path, what, required, row_offset=done)
    frame.attrs["header_row"] = blank_above + 1 + done  # spreadsheet_rows counts from here
    return frame


def _csv_records(path: Path, what: str, required: Sequence[str]) -> Iterator[list[str]]:
    """The records of a large delimited text file, decoded and parsed as a stream."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        reason = exc.strerror or exc
        raise QualcodeError(f"{what} {path.name!r} cannot be read ({reason})") from None
    with handle:
        sample = handle.read(_SAMPLE_BYTES)
        if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
            encoding = "utf-16"
        elif sample.startswith(_UTF8_BOM):
            encoding = "utf-8-sig"
        else:
            try:
                codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
                encoding = "utf-8"
            except UnicodeDecodeError:
                encoding = "cp1252"  # Swedish Excel "CSV (semikolonavgränsad)"
        handle.seek(0)
        text = io.TextIOWrapper(handle, encoding=encoding, newline="")
        head = text.read(_SAMPLE_BYTES)
        text.detach()  # the handle is read again from the start
        preferred = "\t" if path.suffix.lower() == ".tsv" else ","
        delimiter = _sniff_delimiter(head.lstrip("\ufeff"), required, preferred)
        if csv.field_size_limit() < MAX_TEXT_BYTES:
            csv.field_size_limit(MAX_TEXT_BYTES)
        handle.seek(0)
        text = io.TextIOWrapper(handle, encoding=encoding, newline="")
        reader = csv.reader(text, delimiter=delimiter, strict=False)
        try:
            first = True
            for record in reader:
                if first and record:
                    record[0] = record[0].lstrip("\ufeff")
                first = False
                yield record
        except UnicodeDecodeError:
            raise QualcodeError(
                f"{what} {path.name!r} is not {encoding} throughout (near line "
                f"{reader.line_num}); save it again as UTF-8."
            ) from None
        except csv.Error as exc:
            raise QualcodeError(
                f"{what} {path.name!r} could not be parsed near line {reader.line_num} ({exc}); "
                "check for unbalanced quotes there."
            ) from None


def _parquet_chunks(
    path: Path, what: str, required: Sequence[str], rows: int
) -> Iterator[pd.DataFrame]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        raise QualcodeError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; one line for the analyst
        raise QualcodeError(
            f"{what} {path.name!r} is not a readable Parquet file ({type(exc).__name__})"
        ) from None
    header = [str(name).strip() for name in source.schema_arrow.names]
    renames = _match_required(header, required)
    missing = [name for name in required if name not in {renames.get(h, h) for h in header}]
    if missing:
        raise QualcodeError(
            f"{what} {path.name!r} is missing required column(s) {_names(missing)}; "
            f"columns found: {_names(header)}. Add or rename the column(s)."
        )
    any_rows = False
    for batch in source.iter_batches(batch_size=rows):
        frame = batch.to_pandas()
        frame.columns = [renames.get(h, h) for h in header]
        for name in frame.columns:
            values = frame[name]
            frame[name] = [_parquet_cell(v) for v in values]
        frame = frame.astype(str)
        any_rows = any_rows or len(frame) > 0
        yield frame
    if not any_rows:
        raise QualcodeError(f"{what} {path.name!r} has no rows")


def _parquet_cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def aligned(
    sources: Sequence[Callable[[], Iterator[pd.DataFrame]]], fill: Any = ""
) -> Callable[[], Iterator[pd.DataFrame]]:
    """The chunks of several tables one after the other, each with the columns of all of them
    in order of appearance (``fill`` where a table has none), as ``pd.concat`` would give."""
    columns: list[str] = []
    for source in sources:
        first = next(source())
        columns += [c for c in first.columns if c not in columns]

    def chunks() -> Iterator[pd.DataFrame]:
        for source in sources:
            for chunk in source():
                if list(chunk.columns) != columns:
                    chunk = chunk.reindex(columns=columns, fill_value=fill)
                yield chunk

    return chunks


class TableWriter:
    """Write a table chunk by chunk to a temporary file renamed to ``path`` by :meth:`close`
    (CSV as :func:`~qualcode.files.tables.write_table` writes it). An .xlsx is built in memory
    and written at the end (a workbook is one zip)."""

    def __init__(self, path: str | os.PathLike[str], *, excel: bool = False):
        self.path, self.excel = Path(path), excel
        self.xlsx = self.path.suffix.lower() == ".xlsx"
        self._frames: list[pd.DataFrame] = []
        self._output: Any = None
        self._handle: Any = None
        self.rows = 0

    def __enter__(self) -> TableWriter:
        if not self.xlsx:
            self._output = atomic_output(self.path)
            self._handle = self._output.__enter__()
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.xlsx:
            self._frames.append(frame)
        else:
            self._handle.write(csv_bytes(frame, excel=self.excel, header=self.rows == 0))
        self.rows += len(frame)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self.xlsx:
            if kind is None:
                write_table(pd.concat(self._frames, ignore_index=True), self.path)
            return
        self._output.__exit__(kind, error, trace)


class RunFolder:
    """A hidden folder beside an output (``.<name>.run``) holding one ``.npz`` per chunk done,
    and what they were computed from (``key``). A run that ends removes it; a killed one leaves
    it for ``--resume``; a run with another key (other input, model or chunk size) starts
    afresh."""

    def __init__(self, output: str | os.PathLike[str], key: dict[str, Any], *, resume: bool):
        output = Path(output)
        self.path = output.with_name(f".{output.name}.run")
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        stamp = self.path / "key.txt"
        if self.path.exists():
            kept = resume and stamp.is_file() and stamp.read_text().strip() == self.key
            if not kept:
                shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            atomic_write_bytes(stamp, (self.key + "\n").encode(), crash=None)

    def _file(self, index: int) -> Path:
        return self.path / f"chunk-{index:06d}.npz"

    def done(self, index: int) -> bool:
        return self._file(index).is_file()

    def save(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **{k: v for k, v in arrays.items() if v is not None})
        atomic_write_bytes(self._file(index), buffer.getvalue(), crash=None)

    def load(self, index: int) -> dict[str, np.ndarray]:
        try:
            with np.load(self._file(index), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise QualcodeError(
                f"the run folder {self.path} holds a damaged chunk {index} ({exc}): run again "
                "without --resume"
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def file_fingerprint(paths: Iterable[str | os.PathLike[str]]) -> list[list[Any]]:
    """What identifies input files for a resumed run: absolute path, size and modification
    time."""
    out = []
    for path in map(Path, paths):
        stat = path.stat()
        out.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return out
