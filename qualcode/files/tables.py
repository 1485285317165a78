"""Reading and writing analyst tables (CSV/TSV/XLSX) and small durable-file helpers.

Every table cell is read as ``str`` (empty cell = ``""``). CSV output is protected against
formula injection: text cells starting with ``= + - @`` get a leading apostrophe, which
:func:`read_table` removes again, so text round-trips exactly.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import glob
import hashlib
import io
import os
import secrets
import shutil
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from qualcode.errors import QualcodeError, crash_point

__all__ = [
    "TEXT_TABLE_SUFFIXES",
    "TABLE_SUFFIXES",
    "append_row_durably",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "backup_file",
    "check_file",
    "csv_bytes",
    "file_sha256",
    "guard_output",
    "holds_labels",
    "lock_beside",
    "read_segments_table",
    "read_table",
    "read_text",
    "refuse_own_input",
    "remove_stale_leftovers",
    "same_file",
    "sheet_name",
    "staged_folder",
    "table_bytes",
    "unneutralise",
    "spreadsheet_rows",
    "write_table",
    "xlsx_bytes",
]

TEXT_TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
TABLE_SUFFIXES = (*TEXT_TABLE_SUFFIXES, ".xlsx")

_DELIMITERS = (",", ";", "\t")
_FORMULA_CHARS = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets may run
_SNIFF_RECORDS = 50
_UTF8_BOM = b"\xef\xbb\xbf"
_ALLOWED_CONTROL = frozenset("\t\n\r\f\v")
# Limits that keep hostile or mistaken files from eating the machine; each error names its limit.
MAX_TEXT_BYTES = 100 * 2**20  # a text or CSV file
MAX_UNZIPPED_BYTES = 400 * 2**20  # all parts of a .docx/.xlsx together, uncompressed
MAX_ZIP_RATIO = 200  # uncompressed / compressed size of one part above 10 MB
MAX_BLANK_ROWS = 10_000  # a run of empty spreadsheet rows this long ends the table
MAX_COLUMNS = 2_000
MAX_SEGMENT_CHARS = 100_000
# What Excel shows in a cell whose formula failed (a note typed as "=ok" or "-bra" in a file
# opened in Excel): the analyst's words are gone, so such a cell is refused, never read.
EXCEL_ERRORS = frozenset(
    {"#VALUE!", "#VÄRDEFEL!", "#NAME?", "#NAMN?", "#REF!", "#N/A", "#SAKNAS!", "#DIV/0!",
     "#NUM!", "#NULL!", "#SPILL!", "#CALC!"}
)  # fmt: skip


def _q(value: object) -> str:
    """Quote a value for a one-line message (newlines escaped)."""
    return repr(str(value))


def _names(values: Iterable[object], limit: int = 20) -> str:
    values = list(values)
    shown = ", ".join(_q(v) for v in values[:limit])
    return shown + (f" … (+{len(values) - limit} more)" if len(values) > limit else "")


# --------------------------------------------------------------------------- reading


def check_file(path: str | os.PathLike[str], *, what: str = "file") -> None:
    """Raise :class:`QualcodeError` unless ``path`` is an existing, non-empty file."""
    path = Path(path)
    if not path.exists():
        raise QualcodeError(f"{what} {str(path)!r} not found; check the path and file name.")
    if not path.is_file():
        raise QualcodeError(
            f"{what} {str(path)!r} is not a file (it is a directory?); give the path of a file."
        )
    if path.stat().st_size == 0:
        raise QualcodeError(
            f"{what} {path.name!r} is empty (0 bytes); check that it was saved correctly."
        )


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise QualcodeError(
                f"{what} {path.name!r} is {size / 2**20:,.0f} MB; qualcode reads text and CSV "
                f"files up to {MAX_TEXT_BYTES // 2**20} MB: split it into smaller files"
            )
        return path.read_bytes()
    except OSError as exc:
        raise QualcodeError(
            f"{what} {path.name!r} cannot be read ({exc.strerror or exc}); "
            "check the file's permissions."
        ) from None


def _looks_binary(text: str) -> bool:
    sample = text[:65536]
    bad = sum(1 for ch in sample if ord(ch) < 32 and ch not in _ALLOWED_CONTROL)
    return bad > max(2, len(sample) // 200)


def _decode(data: bytes, path: Path, what: str) -> str:
    """Decode text bytes: UTF-16 with BOM, UTF-8 (with or without BOM), else cp1252."""
    hint = ""
    if data.startswith(b"PK\x03\x04"):
        hint = " It looks like a zip/Excel/Word file: give it the right extension (.xlsx/.docx)."
    binary = QualcodeError(
        f"{what} {path.name!r} is not a text file (binary content); save it as UTF-8 text "
        f"or CSV.{hint}"
    )
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel "Unicode text" export
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise binary from None
    elif data.startswith(_UTF8_BOM):
        try:
            text = data[len(_UTF8_BOM) :].decode("utf-8")
        except UnicodeDecodeError:
            raise binary from None
    elif b"\x00" in data:
        raise binary
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            _refuse_mixed_encoding(data, exc, path, what)
            try:
                text = data.decode("cp1252")  # Swedish Excel "CSV (semikolonavgränsad)"
            except UnicodeDecodeError:
                raise binary from None
    if "\x00" in text or _looks_binary(text):
        raise binary
    return text.lstrip("\ufeff")


def _refuse_mixed_encoding(data: bytes, exc: UnicodeDecodeError, path: Path, what: str) -> None:
    """A file that is UTF-8 with å/ä/ö except on some lines (one pasted from a cp1252 file):
    decoding it all as cp1252 would turn every other å/ä/ö into mojibake, so refuse and name
    the line."""
    valid_utf8_before = data[: exc.start]
    if not any(b >= 0x80 for b in valid_utf8_before) and not any(
        b >= 0x80 for b in data[exc.end :].decode("utf-8", errors="ignore").encode("utf-8")
    ):
        return  # no other non-ASCII text: plain cp1252
    line = data.count(b"\n", 0, exc.start) + 1
    raise QualcodeError(
        f"{what} {path.name!r} mixes encodings: it is UTF-8 but line {line} is not (saved from "
        "another program as cp1252/ANSI?). Reading it either way would garble å/ä/ö on some "
        "lines: open it in a text editor or Excel and save it again as UTF-8."
    )


def read_text(path: str | os.PathLike[str], *, what: str = "file") -> str:
    """Read a text file (UTF-8 with/without BOM, UTF-16 with BOM, or cp1252).

    Line endings are returned unchanged. Raises :class:`QualcodeError` if the file is missing,
    empty or binary.
    """
    path = Path(path)
    check_file(path, what=what)
    return _decode(_read_bytes(path, what), path, what)


def unneutralise(value: str) -> str:
    """Undo :func:`_neutralise`: drop one apostrophe before ``= + - @``."""
    if value.startswith("'") and value.lstrip("'").startswith(_FORMULA_CHARS):
        return value[1:]
    return value


def _clean_header(name: str) -> str:
    return name.replace("\ufeff", "").strip()


def _match_required(header: Sequence[str], required: Sequence[str]) -> dict[str, str]:
    """Map header names to required names when they differ only in case."""
    exact = set(header)
    folded: dict[str, list[str]] = {}
    for name in header:
        folded.setdefault(name.casefold(), []).append(name)
    renames = {}
    for name in required:
        candidates = folded.get(name.casefold(), [])
        if name not in exact and len(candidates) == 1:
            renames[candidates[0]] = name
    return renames


def _sniff_delimiter(text: str, required: Sequence[str], preferred: str) -> str:
    """Pick the delimiter giving the required columns and the most consistent rows."""
    order = [preferred, *(d for d in _DELIMITERS if d != preferred)]
    sample = text if len(text) <= 1_000_000 else text[:1_000_000]
    best: tuple[Any, ...] | None = None
    best_delim = order[0]
    for rank, delim in enumerate(order):
        records: list[list[str]] = []
        try:
            for record in csv.reader(io.StringIO(sample), delimiter=delim, strict=False):
                if any(cell.strip() for cell in record):
                    records.append(record)
                if len(records) > _SNIFF_RECORDS:
                    break
        except csv.Error:
            continue
        if not records:
            continue
        header = [_clean_header(h) for h in records[0]]
        header_set = set(header) | set(_match_required(header, required).values())
        has_required = all(name in header_set for name in required)
        body = records[1:]
        consistency = (sum(len(r) == len(records[0]) for r in body) / len(body)) if body else 1.0
        width = len(header)
        score = (has_required, width > 1 and consistency >= 0.9, consistency, width, -rank)
        if best is None or score > best:
            best, best_delim = score, delim
    return best_delim


def _read_delimited(text: str, path: Path, what: str, required: Sequence[str]) -> list[list[str]]:
    preferred = "\t" if path.suffix.lower() == ".tsv" else ","
    delim = _sniff_delimiter(text, required, preferred)
    reader = csv.reader(io.StringIO(text), delimiter=delim, strict=False)
    if csv.field_size_limit() < MAX_TEXT_BYTES:
        csv.field_size_limit(MAX_TEXT_BYTES)  # a long answer is not a parse error
    try:
        records = list(reader)
    except csv.Error as exc:
        raise QualcodeError(
            f"{what} {path.name!r} could not be parsed near line {reader.line_num} ({exc}); "
            "check for unbalanced quotes there."
        ) from None
    return records


def _cell_to_str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime):
        return value.date().isoformat() if value.time() == dt.time() else value.isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def check_zip_container(path: Path, what: str) -> None:
    """Refuse a .docx/.xlsx that would expand beyond :data:`MAX_UNZIPPED_BYTES`, holds a part
    compressed suspiciously well (a zip bomb), or declares XML entities (which Word and Excel
    never write; they are how XML bombs and external-entity attacks work)."""
    try:
        with zipfile.ZipFile(path) as archive:
            parts = archive.infolist()
            total = sum(p.file_size for p in parts)
            bomb = [
                p.filename
                for p in parts
                if p.file_size > 10 * 2**20
                and p.file_size > MAX_ZIP_RATIO * max(p.compress_size, 1)
            ]
            if total > MAX_UNZIPPED_BYTES or bomb:
                raise QualcodeError(
                    f"{what} {path.name!r} would unpack to {total / 2**20:,.0f} MB"
                    f"{' (a zip bomb?)' if bomb else ''}; qualcode opens .docx/.xlsx files up to "
                    f"{MAX_UNZIPPED_BYTES // 2**20} MB unpacked: save a smaller file or export CSV"
                )
            for part in parts:
                if part.filename.endswith((".xml", ".rels")):
                    with archive.open(part) as handle:
                        head = handle.read(65536)
                    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
                        raise QualcodeError(
                            f"{what} {path.name!r} declares XML entities in {part.filename}, "
                            "which Word and Excel never write; it is refused as unsafe. Save it "
                            "again from Word or Excel."
                        )
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, zlib.error):
        return  # not a (readable) zip: the reader says so in its own words
    except NotImplementedError:
        raise QualcodeError(
            f"{what} {path.name!r} uses a zip compression Word and Excel do not write; save it "
            "again from Word or Excel"
        ) from None


def _read_xlsx(path: Path, what: str) -> list[list[str]]:
    return list(xlsx_records(path, what))


def xlsx_records(path: Path, what: str) -> Iterator[list[str]]:
    """The rows of an .xlsx workbook's first sheet as lists of ``str``, read as a stream."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    check_zip_container(path, what)
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (
        zipfile.BadZipFile,
        InvalidFileException,
        KeyError,
        OSError,
        ValueError,
        EOFError,
        RuntimeError,
        NotImplementedError,
        zlib.error,
    ) as exc:
        raise QualcodeError(
            f"{what} {path.name!r} is not a valid Excel .xlsx workbook ({type(exc).__name__}); "
            "open it in Excel and save it again as .xlsx without a password, or export CSV."
        ) from None
    try:
        sheet = workbook.worksheets[0]
        sheet.reset_dimensions()  # a forged "A1:XFD1048576" would pad every row to 16,384 cells
        blank = 0
        for row in sheet.iter_rows(min_row=1, values_only=True):
            cells = [_cell_to_str(v) for v in row[:MAX_COLUMNS]]
            if not any(c.strip() for c in cells):
                blank += 1
                if blank > MAX_BLANK_ROWS:
                    break  # the rest of the sheet is empty (or a million empty rows)
                continue
            yield from ([] for _ in range(blank))
            blank = 0
            yield cells
    finally:
        workbook.close()


def _build_frame(
    records: list[list[str]],
    path: Path,
    what: str,
    required: Sequence[str],
    *,
    row_offset: int = 0,
) -> pd.DataFrame:
    """The table of ``records`` (header first); ``row_offset`` rows of the file come between
    the header and the first of these records (a later chunk of a table read in chunks)."""
    first = next((i for i, r in enumerate(records) if any(c.strip() for c in r)), None)
    if first is None:
        raise QualcodeError(
            f"{what} {path.name!r} contains no data (only blank lines); "
            "check that the right file was given."
        )
    header_row = first + 1  # 1-based spreadsheet row of the header
    header = [_clean_header(h) for h in records[first]]
    first_row = header_row + 1 + row_offset  # 1-based row of the first record of the body
    body = records[first + 1 :]
    while body and not any(c.strip() for c in body[-1]):
        body.pop()
    width = len(header)
    rows: list[list[str]] = []
    for offset, record in enumerate(body):
        if len(record) > width:
            if any(c.strip() for c in record[width:]):
                raise QualcodeError(
                    f"{what} {path.name!r}: row {first_row + offset} has {len(record)} "
                    f"cells but the header has {width} columns; quote cells that contain the "
                    "delimiter or fix the header."
                )
            record = record[:width]
        rows.append(record + [""] * (width - len(record)))

    keep = []
    for i, name in enumerate(header):
        if name:
            keep.append(i)
        elif any(row[i].strip() for row in rows):
            raise QualcodeError(
                f"{what} {path.name!r}: column {i + 1} has data but no header name; "
                "give that column a name in the first row."
            )
    header = [header[i] for i in keep]
    rows = [[row[i] for i in keep] for row in rows]
    if not header:
        raise QualcodeError(
            f"{what} {path.name!r} has no column names in its first row; add a header row."
        )

    seen: dict[str, int] = {}
    duplicates = []
    for name in header:
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 2:
            duplicates.append(name)
    if duplicates:
        raise QualcodeError(
            f"{what} {path.name!r} has duplicate column name(s) {_names(duplicates)}; "
            "rename them so every column header is unique."
        )
    renames = _match_required(header, required)
    header = [renames.get(name, name) for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        raise QualcodeError(
            f"{what} {path.name!r} is missing required column(s) {_names(missing)}; "
            f"columns found: {_names(header)}. Add or rename the column(s)."
        )
    if not any(any(c.strip() for c in row) for row in rows):
        raise QualcodeError(
            f"{what} {path.name!r} has a header row but no data rows; add rows below the header."
        )

    for offset, row in enumerate(rows):
        for name, cell in zip(header, row):
            if cell.strip() in EXCEL_ERRORS:
                raise QualcodeError(
                    f"{what} {path.name!r}: row {first_row + offset}, column {name!r} reads "
                    f"{cell.strip()}: Excel evaluated a formula there and the value is lost. "
                    "Type the value itself (a text starting with '=' or '-': put ' first), save "
                    "and try again."
                )
    data = {name: [unneutralise(row[i]) for row in rows] for i, name in enumerate(header)}
    frame = pd.DataFrame(data, columns=header, dtype=str)
    frame.attrs["header_row"] = header_row
    frame.attrs["original_names"] = {new: old for old, new in renames.items()}
    return frame


def read_table(
    path: str | os.PathLike[str], *, required: Sequence[str] = (), what: str = "table"
) -> pd.DataFrame:
    """Read a .csv/.tsv/.txt (delimited) or .xlsx table with every cell as ``str``.

    Text encoding is detected (UTF-8 with/without BOM, UTF-16 with BOM, cp1252) and the
    delimiter sniffed among ``,`` ``;`` and tab, preferring the one that yields the
    ``required`` columns. Header names are stripped; a required column that differs only in
    case is renamed to the required spelling (``frame.attrs["original_names"]`` maps it back).
    Only the first worksheet of an .xlsx is read.
    Blank rows inside the table are kept (as empty strings) so that row ``i`` of the result is
    spreadsheet row ``spreadsheet_rows(frame)[i]`` (normally ``i + 2``).

    ``what`` names the file in error messages (e.g. ``"labels file"``). Any problem with the
    file raises :class:`QualcodeError`.
    """
    path = Path(path)
    check_file(path, what=what)
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        records = _read_xlsx(path, what)
    elif suffix in TEXT_TABLE_SUFFIXES:
        text = _decode(_read_bytes(path, what), path, what)
        records = _read_delimited(text, path, what, required)
    elif suffix in (".xls", ".xlsm", ".ods", ".numbers"):
        raise QualcodeError(
            f"{what} {path.name!r}: {suffix} workbooks are not supported; save it as .xlsx or CSV."
        )
    else:
        raise QualcodeError(
            f"{what} {path.name!r}: unsupported file type {suffix or '(none)'}; "
            f"use one of {', '.join(TABLE_SUFFIXES)}."
        )
    return _build_frame(records, path, what, required)


def spreadsheet_rows(frame: pd.DataFrame) -> list[int]:
    """1-based spreadsheet row numbers of the rows of a frame returned by :func:`read_table`."""
    first = int(frame.attrs.get("header_row", 1)) + 1
    return list(range(first, first + len(frame)))


# --------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (e.g. Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, exc: OSError) -> QualcodeError:
    return QualcodeError(
        f"cannot write {path.name!r} in {str(path.parent)!r} ({exc.strerror or exc}); close "
        "the file if it is open in Excel and check that the folder is writable."
    )


STALE_SECONDS = 600  # a temporary file this old was left by a killed run


def remove_stale_leftovers(path: Path, pattern: str = ".{name}.*.tmp") -> None:
    """Remove what a killed run left beside ``path`` (``pattern`` with ``{name}`` for its name:
    temporary files, staging folders), once old enough that no live writer can own them."""
    cutoff = time.time() - STALE_SECONDS
    try:
        for stale in path.parent.glob(pattern.format(name=glob.escape(path.name))):
            if stale.stat().st_mtime < cutoff:
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike[str], *, crash: str | None = "before-rename"
) -> Iterator[BinaryIO]:
    """A binary handle on a temporary file beside ``path``, renamed to ``path`` when the block
    ends without error (after an fsync) and removed when it fails: a killed writer leaves the
    old file or the new one, never part of it. ``crash`` names the crash point before the
    rename (None for a command's internal files, so the crash matrix hits its outputs)."""
    path = Path(path)
    remove_stale_leftovers(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # 0o666 lets the umask decide the final permissions, as for any new file.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if crash:
            crash_point(crash)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_write(
    path: Path, write: Callable[[BinaryIO], None], crash: str | None = "before-rename"
) -> None:
    with atomic_output(path, crash=crash) as handle:
        write(handle)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, crash: str | None = "before-rename"
) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, replace)."""
    _atomic_write(Path(path), lambda handle: handle.write(data), crash)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; newlines are written as given."""
    atomic_write_bytes(path, text.encode(encoding))


def _neutralise(value: object) -> object:
    # Text already starting with "'=" gets one more apostrophe, so that reading strips
    # exactly one and every text round-trips.
    if isinstance(value, str) and value.lstrip("'").startswith(_FORMULA_CHARS):
        return "'" + value
    return value


def _csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.columns = [_neutralise(str(c)) for c in out.columns]
    for i in range(out.shape[1]):
        column = out.iloc[:, i]
        if not pd.api.types.is_numeric_dtype(column.dtype):
            out.isetitem(i, column.map(_neutralise))
    return out


_SHEET_NAME_BAD = str.maketrans(dict.fromkeys("[]:*?/\\", "-"))


def sheet_name(name: str, taken: Iterable[str] = ()) -> str:
    """A valid, unique Excel sheet name for ``name`` (at most 31 characters, no ``[]:*?/\\``)."""
    base = " ".join(str(name).translate(_SHEET_NAME_BAD).split()).strip("'") or "Blad"
    taken_lower = {t.lower() for t in taken}
    candidate, n = _shorten(base, 31), 1
    while candidate.lower() in taken_lower:
        n += 1
        suffix = f" ({n})"
        candidate = _shorten(base, 31 - len(suffix)) + suffix
    return candidate


def _shorten(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters, cut between words with "…" when it must be."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;–-") + "…"


def _column_width(name: str, values: pd.Series) -> float:
    lengths = [len(str(name))] + [len(str(v)) for v in values.head(200)]
    return float(min(max(8, max(lengths) + 2), 80))


PERCENT_COLUMNS = frozenset({"Andel", "share"})  # shares (0–1) shown as percentages in Excel


def xlsx_bytes(sheets: Mapping[str, pd.DataFrame], *, layout: bool = True) -> bytes:
    """An .xlsx workbook with one sheet per item of ``sheets`` (name → table, in order).

    Text cells are typed as text, never formulas. With ``layout``: the header row is frozen,
    filters are on, and column widths fit the content (at most 80 characters).
    """
    import openpyxl
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.utils import get_column_letter

    workbook = openpyxl.Workbook(write_only=True)
    for name, df in sheets.items():
        sheet = workbook.create_sheet(name)

        def cell(value: object, sheet: Any = sheet) -> object:
            if isinstance(value, str):
                if value.startswith("'"):
                    value = str(_neutralise(value))  # read_table strips one "'" before "= + - @"
                c = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("", value))
                c.data_type = "s"  # never a formula, even if the text starts with "="
                return c
            if value is None or (not isinstance(value, (list, tuple)) and pd.isna(value)):
                return None
            if hasattr(value, "item"):  # numpy scalar -> Python scalar
                value = value.item()
            return value

        if layout and len(df.columns):
            sheet.freeze_panes = "A2"
            last = get_column_letter(len(df.columns))
            sheet.auto_filter.ref = f"A1:{last}{len(df) + 1}"
            for i, column in enumerate(df.columns, start=1):
                width = _column_width(column, df.iloc[:, i - 1])
                sheet.column_dimensions[get_column_letter(i)].width = width
        sheet.append([cell(str(c)) for c in df.columns])
        shares = [str(c) in PERCENT_COLUMNS for c in df.columns]
        for row in df.itertuples(index=False, name=None):
            cells = [cell(v) for v in row]
            for i, is_share in enumerate(shares):
                if is_share and isinstance(cells[i], (int, float)):
                    share = WriteOnlyCell(sheet, value=cells[i])
                    share.number_format = "0.0%"  # Excel shows 13,8 % in Swedish
                    cells[i] = share
            sheet.append(cells)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def table_bytes(df: pd.DataFrame, *, excel: bool = False, xlsx: bool = False) -> bytes:
    """The bytes :func:`write_table` writes for ``df``."""
    if xlsx:
        return xlsx_bytes({"Blad1": df})
    return csv_bytes(df, excel=excel)


def csv_bytes(df: pd.DataFrame, *, excel: bool = False, header: bool = True) -> bytes:
    """``df`` as :func:`write_table` writes a CSV; without ``header``, the rows alone (the next
    chunk of a table written as it is produced)."""
    text = _csv_frame(df).to_csv(
        index=False,
        header=header,
        sep=";" if excel else ",",
        decimal="," if excel else ".",
        lineterminator="\n",
    )
    return text.encode("utf-8-sig" if excel and header else "utf-8")


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], *, excel: bool = False) -> None:
    """Write ``df`` (without index) atomically as CSV, or as .xlsx if ``path`` ends in .xlsx.

    CSV is UTF-8 with ``,``; ``excel=True`` writes UTF-8 with BOM, ``;`` and decimal comma
    for Swedish Excel. Text cells starting with ``= + - @``, a tab or a carriage return are
    prefixed with ``'`` so that spreadsheet programs do not run them as formulas
    (:func:`read_table` undoes this). In .xlsx files all text cells are typed as text instead,
    so no prefix is needed. Parent directories are created.
    """
    path = Path(path)
    atomic_write_bytes(path, table_bytes(df, excel=excel, xlsx=path.suffix.lower() == ".xlsx"))


# --------------------------------------------------------------------------- misc files


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    path = Path(path)
    if not path.is_file():
        raise QualcodeError(f"file {str(path)!r} not found; check the path.")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_segments_table(
    path: str | os.PathLike[str], required: Sequence[str], what: str = "segments file"
) -> pd.DataFrame:
    """:func:`read_table` for a table of segments; a survey export without a ``text`` column
    gets an error that points to ``qualcode segment --column`` and names its text-like
    columns."""
    path = Path(path)
    try:
        return read_table(path, required=required, what=what)
    except QualcodeError:
        table = read_table(path, what=what)  # only to say what the file is instead
        if "text" in {str(c).lower() for c in table.columns}:
            raise
        cells = {str(c): table[c].astype(str).str.strip() for c in table.columns}
        wordy = [
            c for c, v in cells.items() if (v != "").any() and v[v != ""].str.len().mean() >= 15
        ]
        raise QualcodeError(
            f"{what} {path.name!r} has no 'text' column (columns found: "
            f"{_names(list(map(str, table.columns)))}). A survey export is segmented first: "
            f"qualcode segment {path.name} --column "
            f"{repr(wordy[0]) if wordy else 'COLUMN'} -o segments.csv"
            + (f" (text-like columns: {_names(wordy)})" if wordy else "")
        ) from None


def check_text_lengths(
    texts: Iterable[object], what: str, where: Sequence[str] | None = None
) -> None:
    """Refuse a segment longer than :data:`MAX_SEGMENT_CHARS` (a whole book in one cell);
    ``where`` names each segment's place (default: its number)."""
    for i, text in enumerate(texts):
        if len(str(text)) > MAX_SEGMENT_CHARS:
            place = where[i] if where is not None else f"segment {i + 1}"
            raise QualcodeError(
                f"{what}: {place} is {len(str(text)):,} characters; qualcode codes "
                f"segments up to {MAX_SEGMENT_CHARS:,}: split it (e.g. qualcode segment "
                "--unit sentence)"
            )


@contextlib.contextmanager
def staged_folder(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a folder's files all or nothing: the body writes into a hidden staging folder
    beside ``folder``; when it succeeds every file is moved in (replacing one of the same name),
    when it fails nothing is. Staging folders a killed run left are removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_leftovers(folder, ".{name}-????????")  # mkdtemp's 8 characters
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        yield staging
        folder.mkdir(exist_ok=True)
        for staged in staging.iterdir():
            os.replace(staged, folder / staged.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def lock_beside(path: str | os.PathLike[str]) -> Any:
    """The inter-process lock of ``path``: a hidden ``.<name>.lock`` file beside it, released by
    the OS if the holder is killed."""
    from filelock import FileLock

    path = Path(path)
    return FileLock(str(path.with_name(f".{path.name}.lock")))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (after links, and case on case-insensitive file
    systems)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


LABELLER_COLUMNS = ("coder", "labelled_at")


def holds_labels(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a table an analyst coded: the labeller's columns, or ``theme``
    answers in a file that is not model output (no ``confidence``)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in TABLE_SUFFIXES:
        return False
    try:
        table = read_table(path)
    except QualcodeError:
        return path.stat().st_size > 0  # unreadable here is no licence to overwrite it
    columns = set(map(str, table.columns))
    for decided in ("resolved_theme", "note"):  # a review file being filled in
        if decided in columns and table[decided].astype(str).str.strip().ne("").any():
            return True
    if columns & {"confidence", "model_confidence"}:
        return False
    if columns & set(LABELLER_COLUMNS):
        return True
    return "theme" in columns and bool(table["theme"].astype(str).str.strip().ne("").any())


def refuse_own_input(
    output: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]]
) -> None:
    """Refuse an ``output`` that is one of the command's ``inputs`` (see :func:`same_file`)."""
    for source in inputs:
        if Path(source).exists() and same_file(output, source):
            raise QualcodeError(
                f"-o {str(output)!r} is also an input of this command: qualcode never writes "
                "over its own input. Choose another output file; nothing was written."
            )


def guard_output(
    output: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    force: bool = False,
    updates_labels: bool = False,
) -> Path | None:
    """Refuse to write ``output`` over one of the command's ``inputs``, or over a file that
    holds an analyst's labels unless ``force`` (then back it up first and return the backup).
    A command whose job is to update a labels file (``updates_labels``) keeps its own backups."""
    output = Path(output)
    refuse_own_input(output, inputs)
    if not updates_labels and holds_labels(output):
        if not force:
            raise QualcodeError(
                f"-o {str(output)!r} holds coded labels ('theme' answers or the labeller's "
                "columns): qualcode will not write over them. Choose another output file, or "
                "add --force to replace it after a timestamped backup; nothing was written."
            )
        return backup_file(output)
    return None


def backup_file(path: str | os.PathLike[str]) -> Path:
    """Copy ``path`` to ``<name>.<YYYYmmdd-HHMMSS>.bak`` beside it and return the copy's path.

    An existing backup is never overwritten: a ``-2``, ``-3`` … suffix is added instead.
    """
    path = Path(path)
    if not path.is_file():
        raise QualcodeError(f"cannot back up {str(path)!r}: file not found.")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    shutil.copy2(path, tmp)
    try:
        for n in range(1, 10_000):
            suffix = "" if n == 1 else f"-{n}"
            target = path.with_name(f"{path.name}.{stamp}{suffix}.bak")
            try:
                os.link(tmp, target)  # fails if target exists: no overwrite, no race
            except FileExistsError:
                continue
            except OSError:  # hard links unsupported on this file system
                if target.exists():
                    continue
                os.replace(tmp, target)
            return target
        raise QualcodeError(
            f"cannot back up {path.name!r}: too many backups named "
            f"{path.name}.{stamp}*.bak; remove some."
        )
    finally:
        tmp.unlink(missing_ok=True)


def append_row_durably(
    path: str | os.PathLike[str], columns: Sequence[str], row: Mapping[str, object]
) -> None:
    """Append one CSV row to ``path`` and fsync, writing the header first if the file is new.

    Meant for incremental saving (e.g. one labelled answer at a time): if the process is
    killed, at most the row being written is lost. The existing header must equal
    ``columns``. Missing keys are written as empty cells; ``None`` is written as empty.
    """
    path = Path(path)
    columns = list(columns)
    unknown = [key for key in row if key not in columns]
    if unknown:
        raise ValueError(f"row has keys not in columns: {unknown}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc) from None
    new = not path.exists() or path.stat().st_size == 0
    prefix = ""
    if not new:
        with path.open("rb") as handle:
            head = handle.read(65536)
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                prefix = "\n"  # the previous write was interrupted mid-line
        try:
            first = next(csv.reader(io.StringIO(head.decode("utf-8-sig", errors="replace"))), [])
        except csv.Error:
            first = []
        if [_clean_header(unneutralise(c)) for c in first] != columns:
            raise QualcodeError(
                f"{path.name!r} has columns {_names(first)} but {_names(columns)} were "
                "expected; move the old file aside or choose another output file."
            )
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if new:
        writer.writerow([_neutralise(c) for c in columns])
    writer.writerow([_neutralise("" if row.get(c) is None else str(row.get(c))) for c in columns])
    try:
        with path.open("a", encoding="utf-8", newline="") as handle:
            handle.write(prefix + buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _write_error(path, exc) from None
