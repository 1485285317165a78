"""Files as Swedish analysts open them in Excel: a review file opens in columns with å/ä/ö
intact by default, a cell Excel turned into #VALUE! is refused, sheet names are shortened
between words, and shares are percentages."""

from __future__ import annotations

import io

import openpyxl
import pandas as pd
import pytest

from qualcode.errors import QualcodeError
from qualcode.files.tables import read_table, sheet_name, xlsx_bytes
from qualcode.review import write_review


def test_a_review_file_opens_in_swedish_excel_by_default(tmp_path):
    table = pd.DataFrame({"segment_id": ["a"], "text": ["Undersökningens svar"], "note": [""]})
    write_review(table, tmp_path / "review.csv")
    data = (tmp_path / "review.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"segment_id;text;note" in data
    assert "Undersökningens" in data.decode("utf-8-sig")
    write_review(table, tmp_path / "plain.csv", excel=False)
    assert (tmp_path / "plain.csv").read_bytes().startswith(b"segment_id,text,note")


@pytest.mark.parametrize("error", ["#VALUE!", "#NAME?", "#VÄRDEFEL!"])
def test_a_cell_excel_evaluated_is_refused(tmp_path, error):
    path = tmp_path / "labels.csv"
    path.write_text(f"segment_id;text;theme\na;Bra samverkan;{error}\n", encoding="utf-8-sig")
    with pytest.raises(QualcodeError, match=r"row 2, column 'theme' reads #"):
        read_table(path)


def test_sheet_names_are_shortened_between_words():
    long = "Gemensamma utbildningar och erfarenhetsutbyte"
    first = sheet_name(long)
    assert first == "Gemensamma utbildningar och…" and len(first) <= 31
    second = sheet_name(long, [first])
    assert second.endswith("(2)") and len(second) <= 31 and "erfarenhetsu" not in second


def test_shares_are_percentages_in_excel():
    data = xlsx_bytes({"Sammanfattning": pd.DataFrame({"Tema": ["a"], "Andel": [0.138]})})
    sheet = openpyxl.load_workbook(io.BytesIO(data))["Sammanfattning"]
    assert sheet["B2"].value == pytest.approx(0.138) and "%" in sheet["B2"].number_format
