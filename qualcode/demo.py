"""The main job, end to end on the bundled corpora: train on the hand-labelled seed set, then
segment and classify the Skåne 2019 round-table notes (the unlabelled part of seed 001)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qualcode.errors import QualcodeError

CORPORA = Path(__file__).resolve().parent.parent / "corpora"
SKANE_REPORT = "001_7f727ce3aee8fb1a.txt"
NOTES_HEADING = "Dokumentation diskussionsgrupperna"


@dataclass
class DemoResult:
    predictions: pd.DataFrame
    summary: pd.DataFrame
    messages: list[str] = field(default_factory=list)


def corpora_dir() -> Path:
    for candidate in (CORPORA, Path.cwd() / "corpora"):
        if (candidate / "codebook.yaml").exists():
            return candidate
    raise QualcodeError("the demo needs the corpora/ folder of the qualcode repository")


def skane_notes(corpora: Path) -> pd.DataFrame:
    """Segments of the round-table notes: everything after the notes heading in seed 001."""
    from qualcode.segmentation import segment

    report = corpora / "seeds" / SKANE_REPORT
    lines = report.read_text(encoding="utf-8").splitlines()
    start = next(i + 1 for i, line in enumerate(lines) if line.strip() == NOTES_HEADING)
    segments = segment([report])
    return segments[segments["line_start"].astype(int) > start].reset_index(drop=True)


def run_demo(output: str | Path, model_dir: str | Path, *, progress: bool = True) -> DemoResult:
    """Train → classify → write ``segments.csv``, ``predictions.csv`` and the HTML report
    ``report.html`` (themes per discussion group) under ``output``."""
    from qualcode.classification import classify, review_summary, summarize, write_predictions
    from qualcode.codebook import load_codebook
    from qualcode.files.tables import read_table, write_table
    from qualcode.reporting.report import report
    from qualcode.training import read_labels, train

    corpora = corpora_dir()
    output = Path(output)
    codebook = load_codebook(corpora / "codebook.yaml")
    labels = read_labels(corpora / "labels" / "seed_set.csv", codebook)
    model = train(labels, codebook, progress=progress)
    model.save(model_dir)
    notes = skane_notes(corpora)
    write_table(notes, output / "segments.csv")
    predictions = classify(model, notes, progress=progress)
    write_predictions(predictions, output / "predictions.csv")
    report(
        read_table(output / "predictions.csv"),
        codebook,
        output / "report.html",
        by="section",
        source_name="predictions.csv",
    )
    messages = [
        f"{model.describe()} → {model_dir}",
        review_summary(predictions),
        f"{len(predictions)} round-table segments classified → {output / 'predictions.csv'}",
        f"report with themes per discussion group → {output / 'report.html'}",
    ]
    return DemoResult(predictions, summarize(predictions, model), messages)
