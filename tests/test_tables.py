"""Reading/writing analyst tables: encodings, delimiters, bad input, CSV injection, durability."""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from qualcode.files import tables
from qualcode.files.tables import (
    append_row_durably,
    atomic_write_bytes,
    atomic_write_text,
    backup_file,
    file_sha256,
    read_table,
    read_text,
    spreadsheet_rows,
    write_table,
)

from .conftest import error_of

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
INJECTION = ["=SUM(A1)", "+46", "-minus", "@x"]


def write(path: Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode(encoding))
    return path


# --------------------------------------------------------------------------- read_table


def test_reads_every_cell_as_str_with_empty_cells(tmp_path):
    path = write(tmp_path / "a.csv", "id,svar,n\n1,Bra samverkan,\n2,,0.5\n")
    frame = read_table(path, required=["svar"])
    assert list(frame.columns) == ["id", "svar", "n"]
    assert frame.to_dict("records") == [
        {"id": "1", "svar": "Bra samverkan", "n": ""},
        {"id": "2", "svar": "", "n": "0.5"},
    ]
    assert all(isinstance(v, str) for v in frame.to_numpy().ravel())
    assert spreadsheet_rows(frame) == [2, 3]


def test_semicolon_delimited_with_commas_in_text(tmp_path):
    path = write(tmp_path / "a.csv", "id;svar\n1;Ja, absolut\n2;Nej, inte alls\n")
    frame = read_table(path, required=["svar"])
    assert frame["svar"].tolist() == ["Ja, absolut", "Nej, inte alls"]


def test_comma_delimited_with_quoted_commas_and_semicolons(tmp_path):
    path = write(tmp_path / "a.csv", 'id,svar\n1,"Ja; absolut, helt"\n2,"rad ett\nrad två"\n')
    frame = read_table(path, required=["svar"])
    assert frame["svar"].tolist() == ["Ja; absolut, helt", "rad ett\nrad två"]


def test_tab_delimited_tsv(tmp_path):
    path = write(tmp_path / "a.tsv", "id\tsvar\n1\tJa, bra; mycket\n")
    assert read_table(path)["svar"].tolist() == ["Ja, bra; mycket"]


def test_single_column_file_with_commas_in_answers(tmp_path):
    path = write(tmp_path / "a.csv", "svar\nJa, absolut\nNej\n")
    assert read_table(path, required=["svar"])["svar"].tolist() == ["Ja, absolut", "Nej"]


def test_utf8_bom_and_padded_header_names(tmp_path):
    path = write(tmp_path / "a.csv", b"\xef\xbb\xbf id ; Svar \n1;\xc3\xa5\xc3\xa4\xc3\xb6\n")
    frame = read_table(path, required=["id", "Svar"])
    assert list(frame.columns) == ["id", "Svar"]
    assert frame["Svar"].tolist() == ["åäö"]


def test_cp1252_excel_export(tmp_path):
    path = write(tmp_path / "a.csv", "id;svar\n1;Större ansvar för vårdcentralen\n", "cp1252")
    assert read_table(path)["svar"].tolist() == ["Större ansvar för vårdcentralen"]


def test_utf16_unicode_text_export(tmp_path):
    path = write(tmp_path / "a.txt", "id\tsvar\n1\tSamverkan åäö\n", "utf-16")
    assert read_table(path)["svar"].tolist() == ["Samverkan åäö"]


def test_required_column_case_is_normalised(tmp_path):
    path = write(tmp_path / "a.csv", "ID,Text\n1,hej\n")
    frame = read_table(path, required=["text"])
    assert list(frame.columns) == ["ID", "text"]
    assert frame.attrs["original_names"] == {"text": "Text"}


def test_blank_rows_keep_spreadsheet_numbering(tmp_path):
    path = write(tmp_path / "a.csv", "\n\nid,svar\n1,a\n,\n3,c\n\n\n")
    frame = read_table(path)
    assert frame["id"].tolist() == ["1", "", "3"]
    assert spreadsheet_rows(frame) == [4, 5, 6]


def test_trailing_empty_excel_columns_are_dropped(tmp_path):
    path = write(tmp_path / "a.csv", "id;svar;;\n1;a;;\n2;b;;\n")
    assert list(read_table(path).columns) == ["id", "svar"]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("empty.csv", b"", "is empty"),
        ("header.csv", b"id,svar\n", "no data rows"),
        ("header_blank_rows.csv", b"id,svar\n,\n\n", "no data rows"),
        ("blank.csv", b"\n\n  \n", "contains no data"),
        ("missing.csv", b"id,answer\n1,x\n", "missing required column(s) 'svar'"),
        ("dup.csv", b"id,svar,svar\n1,a,b\n", "duplicate column name(s) 'svar'"),
        ("image.csv", PNG, "binary"),
        ("nul.csv", b"id,svar\n1,a\x00b\n", "binary"),
        ("ragged.csv", b"id,svar\n1,a,extra\n", "row 2 has 3 cells"),
        ("noname.csv", b"id,\n1,data\n", "column 2 has data but no header name"),
        ("old.xls", b"whatever", ".xls workbooks are not supported"),
        ("notes.json", b"{}", "unsupported file type .json"),
    ],
)
def test_bad_input_raises_one_line_error(tmp_path, name, content, expected):
    path = write(tmp_path / name, content)
    message = error_of(read_table, path, required=["svar"], what="survey")
    assert expected in message
    assert name in message


def test_missing_column_message_lists_columns_found(tmp_path):
    path = write(tmp_path / "a.csv", "id,answer\n1,x\n")
    message = error_of(read_table, path, required=["text", "theme"], what="labels file")
    assert "'text', 'theme'" in message and "columns found: 'id', 'answer'" in message
    assert message.startswith("labels file")


def test_missing_file_and_directory(tmp_path):
    assert "not found" in error_of(read_table, tmp_path / "nope.csv")
    assert "not a file" in error_of(read_table, tmp_path)


def test_zip_that_is_not_a_workbook(tmp_path):
    path = tmp_path / "fake.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")
    assert "not a valid Excel .xlsx" in error_of(read_table, path)
    renamed = write(tmp_path / "book.csv", path.read_bytes())
    assert "binary" in error_of(read_table, renamed)


def test_png_named_xlsx(tmp_path):
    assert "not a valid Excel" in error_of(read_table, write(tmp_path / "a.xlsx", PNG))


def test_read_xlsx_first_sheet_values_as_text(tmp_path):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["id", "svar", "betyg"])
    sheet.append([1, "Bra", 4.5])
    sheet.append([2, None, 3.0])
    workbook.create_sheet("annat").append(["x"])
    workbook.save(tmp_path / "a.xlsx")
    frame = read_table(tmp_path / "a.xlsx", required=["svar"])
    assert frame.to_dict("records") == [
        {"id": "1", "svar": "Bra", "betyg": "4.5"},
        {"id": "2", "svar": "", "betyg": "3"},
    ]


def test_read_text_encodings_and_errors(tmp_path):
    assert read_text(write(tmp_path / "a.txt", "hå\r\n", "cp1252")) == "hå\r\n"
    assert read_text(write(tmp_path / "b.txt", b"\xef\xbb\xbfhej")) == "hej"
    assert "binary" in error_of(read_text, write(tmp_path / "c.txt", PNG), what="document")


# --------------------------------------------------------------------------- write_table


@pytest.mark.parametrize("excel", [False, True])
def test_csv_injection_round_trip(tmp_path, excel):
    frame = pd.DataFrame({"text": [*INJECTION, "vanlig text", "'=redan"], "n": range(6)})
    path = tmp_path / "out" / "segments.csv"
    write_table(frame, path, excel=excel)
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") == excel
    text = raw.decode("utf-8-sig")
    delimiter = ";" if excel else ","
    assert text.splitlines()[0] == f"text{delimiter}n"
    for value in INJECTION:
        assert f"\n'{value}{delimiter}" in text
    back = read_table(path, required=["text"])
    assert back["text"].tolist() == frame["text"].tolist()
    assert back["n"].tolist() == [str(i) for i in range(6)]


def test_excel_csv_uses_decimal_comma_and_plain_numbers_are_not_escaped(tmp_path):
    frame = pd.DataFrame({"p": [0.25, -0.5], "t": ["a", "b"]})
    write_table(frame, tmp_path / "x.csv", excel=True)
    write_table(frame, tmp_path / "y.csv")
    assert "0,25;a\n-0,5;b\n" in (tmp_path / "x.csv").read_text(encoding="utf-8-sig")
    assert "0.25,a\n-0.5,b\n" in (tmp_path / "y.csv").read_text(encoding="utf-8")


def test_xlsx_round_trip_keeps_formula_like_text_as_text(tmp_path):
    frame = pd.DataFrame({"text": [*INJECTION, "'=redan"], "p": [0.1, 0.2, 0.3, None, 1]})
    path = tmp_path / "out.xlsx"
    write_table(frame, path)
    sheet = openpyxl.load_workbook(path).worksheets[0]
    assert [c.value for c in sheet["A"]] == ["text", *INJECTION, "''=redan"]
    assert {c.data_type for c in sheet["A"]} == {"s"}
    back = read_table(path)
    assert back["text"].tolist() == frame["text"].tolist()
    assert back["p"].tolist() == ["0.1", "0.2", "0.3", "", "1"]


def test_write_table_replaces_atomically_without_leftovers(tmp_path):
    path = tmp_path / "a.csv"
    write_table(pd.DataFrame({"a": ["1"]}), path)
    write_table(pd.DataFrame({"a": ["2"]}), path)
    assert read_table(path)["a"].tolist() == ["2"]
    assert [p.name for p in tmp_path.iterdir()] == ["a.csv"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = write(tmp_path / "a.txt", "old")

    def explode(handle: io.BufferedWriter) -> None:
        handle.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        tables._atomic_write(path, explode)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_unwritable_destination_is_a_qualcode_error(tmp_path):
    blocker = write(tmp_path / "not_a_dir", "x")
    frame = pd.DataFrame({"a": ["1"]})
    assert "cannot write 'a.csv'" in error_of(write_table, frame, blocker / "a.csv")
    assert "cannot write" in error_of(append_row_durably, blocker / "l.csv", ["a"], {"a": "1"})


def test_atomic_write_text_and_bytes(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "å\n")
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == "å\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


# --------------------------------------------------------------------------- misc files


def test_file_sha256(tmp_path):
    path = write(tmp_path / "a.bin", b"abc" * 1000)
    assert file_sha256(path) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert "not found" in error_of(file_sha256, tmp_path / "nope")


def test_backup_file_never_overwrites(tmp_path):
    path = write(tmp_path / "labels.csv", "v1")
    first = backup_file(path)
    path.write_text("v2")
    second = backup_file(path)
    assert first != second
    assert first.read_text() == "v1" and second.read_text() == "v2"
    assert first.name.startswith("labels.csv.") and first.name.endswith(".bak")
    assert first.parent == tmp_path
    assert "not found" in error_of(backup_file, tmp_path / "nope.csv")


def test_append_row_durably(tmp_path):
    path = tmp_path / "labels" / "labels.csv"
    columns = ["segment_id", "theme", "note"]
    append_row_durably(path, columns, {"segment_id": "a-1", "theme": "x", "note": "=bad"})
    append_row_durably(path, columns, {"segment_id": "a-2", "theme": "y, z"})
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert rows == [columns, ["a-1", "x", "'=bad"], ["a-2", "y, z", ""]]
    assert read_table(path)["note"].tolist() == ["=bad", ""]


def test_append_row_recovers_from_interrupted_line_and_checks_header(tmp_path):
    path = tmp_path / "labels.csv"
    columns = ["segment_id", "theme"]
    append_row_durably(path, columns, {"segment_id": "a-1", "theme": "x"})
    with path.open("a", encoding="utf-8") as handle:
        handle.write("a-2,hal")  # killed mid-row
    append_row_durably(path, columns, {"segment_id": "a-3", "theme": "z"})
    assert path.read_text(encoding="utf-8").endswith("a-2,hal\na-3,z\n")
    message = error_of(append_row_durably, path, ["segment_id", "other"], {"other": "1"})
    assert "'segment_id', 'theme'" in message
    with pytest.raises(ValueError):
        append_row_durably(path, columns, {"unknown": "1"})


def test_append_row_writes_header_into_empty_file(tmp_path):
    path = write(tmp_path / "a.csv", b"")
    append_row_durably(path, ["a"], {"a": "1"})
    assert path.read_text() == "a\n1\n"
