""" "The last answer counts", one rule everywhere: a coder who answers a segment twice is read as
their second answer by training, the report, review and agreement."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from qualcode.codebook import load_codebook
from qualcode.files.tables import write_table
from qualcode.reporting.coded import theme_counts
from qualcode.review import build_review
from qualcode.training import read_label_files

ROOT = Path(__file__).resolve().parent.parent
CODEBOOK = ROOT / "corpora" / "codebook.yaml"
COLUMNS = ["segment_id", "document", "section", "text", "theme", "coder", "labelled_at"]


def rows(coder: str, answers: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [sid, "enkat.csv", "", text, theme, coder, f"2026-12-0{i + 1}T10:00:00"]
            for i, (sid, text, theme) in enumerate(answers)
        ],
        columns=COLUMNS,
    )


@pytest.fixture
def codebook():
    return load_codebook(CODEBOOK)


@pytest.fixture
def anna(tmp_path) -> Path:
    """Anna codes s1 as steering, then changes her mind to follow_up."""
    path = tmp_path / "anna.csv"
    table = rows(
        "anna",
        [
            ("s1", "Vi behöver följa upp resultaten", "steering"),
            ("s2", "Gemensamma utbildningar för personalen", "shared_training"),
            ("s1", "Vi behöver följa upp resultaten", "follow_up"),
        ],
    )
    write_table(table, path)
    return path


def test_training_reads_the_last_answer(anna, codebook):
    labels = read_label_files([anna], codebook)
    assert labels.set_index("segment_id")["theme"].to_dict() == {
        "s1": "follow_up",
        "s2": "shared_training",
    }


def test_training_reads_the_last_file_last(anna, tmp_path, codebook):
    later = tmp_path / "later.csv"
    write_table(rows("anna", [("s2", "Gemensamma utbildningar för personalen", "other")]), later)
    labels = read_label_files([anna, later], codebook)
    assert labels.set_index("segment_id")["theme"].to_dict()["s2"] == "other"
    labels = read_label_files([later, anna], codebook)
    assert labels.set_index("segment_id")["theme"].to_dict()["s2"] == "shared_training"


def test_report_counts_the_last_answer(anna, codebook):
    table = pd.read_csv(anna, dtype=str)
    counts = theme_counts(table, codebook, by=None).set_index("theme")["segments"]
    assert counts["follow_up"] == 1 and counts["steering"] == 0 and counts["total"] == 2


def test_review_and_agreement_read_the_last_answer(anna, tmp_path, codebook):
    bo = tmp_path / "bo.csv"
    write_table(
        rows(
            "bo",
            [
                ("s1", "Vi behöver följa upp resultaten", "follow_up"),
                ("s2", "Gemensamma utbildningar för personalen", "shared_training"),
            ],
        ),
        bo,
    )
    result = build_review([anna, bo], codebook, label_errors=False)
    # Anna's last answer agrees with Bo on both segments: nothing to settle, full agreement.
    assert result.table.empty
    overall = result.agreement.set_index("theme").loc["overall"]
    assert overall["segments"] == 2 and overall["value"] == pytest.approx(1.0)


def test_agreement_compares_the_dominant_theme():
    from qualcode.agreement import agreement_table

    coded = pd.DataFrame(
        {
            "anna": ["steering;follow_up", "other", "shared_training;steering"],
            "bo": ["steering;teams_care_models", "other", "shared_training"],
        }
    )
    table = agreement_table(coded, ["steering", "follow_up"]).set_index("theme")
    assert table.loc["overall", "value"] == pytest.approx(1.0)  # dominant themes all agree
    assert table.loc["follow_up", "value"] < 1.0  # the second theme is compared per theme
