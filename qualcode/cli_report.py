"""``qualcode report``: a click skin over :func:`qualcode.report.report` (registered in
:mod:`qualcode.cli`). No logic lives here."""

from __future__ import annotations

from pathlib import Path

import click

from qualcode.codebook import CODEBOOK_HELP

__all__ = ["report"]

_path = click.Path(path_type=Path)
_SUMMARY_COLUMNS = ["theme", "label", "segments", "share", "flagged", "unflagged"]


@click.command("report")
@click.argument("source", type=_path, metavar="PREDICTIONS_OR_LABELS")
@click.option("--codebook", default=None, type=_path, help=CODEBOOK_HELP)
@click.option("-o", "--output", required=True, type=_path, help="Report directory (created).")
@click.option(
    "--by",
    default=None,
    metavar="COLUMN",
    help="Count per document (default), section or any metadata column.",
)
@click.option(
    "--exemplars",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Quotes per theme in report.md.",
)
@click.option(
    "--include-flagged",
    is_flag=True,
    help="Quotes may come from segments flagged for review too.",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not print the counts table.")
def report(source, codebook, output, by, exemplars, include_flagged, quiet) -> None:
    """Counts, charts, quotes and QDA exports from PREDICTIONS_OR_LABELS.

    Reads a predictions file from `qualcode classify` or a labels file (text, theme) and writes
    theme_counts.csv, themes.png (and themes_by_<by>.png), report.md, codes.qdpx (REFI-QDA, for
    NVivo, ATLAS.ti, MAXQDA, QualCoder) and coded_segments.xlsx into the output directory.
    """
    from qualcode.codebook import find_codebook
    from qualcode.report import report as run_report
    from qualcode.tables import read_table

    book = find_codebook(codebook)
    table = read_table(source, required=("text", "theme"), what="predictions or labels file")
    result = run_report(
        table,
        book,
        output,
        by=by,
        exemplars=exemplars,
        include_flagged=include_flagged,
        source_name=source.name,
    )
    if not quiet:
        columns = [c for c in _SUMMARY_COLUMNS if c in result.counts.columns]
        click.echo(result.counts[columns].to_string(index=False))
    for message in result.messages:
        click.echo(message, err=True)
    names = ", ".join(path.name for path in result.paths.values())
    click.echo(f"report on {result.segments} segments → {output}: {names}", err=True)
