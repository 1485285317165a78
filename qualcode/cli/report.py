"""``qualcode report`` and ``qualcode export``: click skins over
:mod:`qualcode.reporting.report` and :mod:`qualcode.reporting.export` (registered in
:mod:`qualcode.cli`). No logic lives here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from qualcode.cli.options import force_option, guarded, next_step, use_codebook
from qualcode.codebook import CODEBOOK_HELP

if TYPE_CHECKING:
    import pandas as pd

    from qualcode.codebook import Codebook
    from qualcode.files.pseudonymise import Pseudonymiser

__all__ = ["export", "report"]

_path = click.Path(path_type=Path)
_SUMMARY_COLUMNS = ["theme", "label", "segments", "share", "flagged", "unflagged"]


def _privacy_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--names",
        type=_path,
        default=None,
        help="File of person names to replace, one per line (implies --pseudonymise).",
    )(command)
    return click.option(
        "--pseudonymise",
        "--pseudonymize",
        is_flag=True,
        help="Replace personnummer, e-mail addresses, phone numbers and --names with "
        "placeholders such as [NAMN 1].",
    )(command)


def _table_options(output_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """PREDICTIONS_OR_LABELS, --codebook and -o, shared by report and the exports."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        command = force_option(command)
        command = click.option("-o", "--output", required=True, type=_path, help=output_help)(
            command
        )
        command = click.option("--codebook", default=None, type=_path, help=CODEBOOK_HELP)(command)
        return click.argument("source", type=_path, metavar="PREDICTIONS_OR_LABELS")(command)

    return decorate


def _pseudonymiser(pseudonymise: bool, names: Path | None) -> Pseudonymiser | None:
    from qualcode.files.pseudonymise import Pseudonymiser

    if not pseudonymise and names is None:
        return None
    return Pseudonymiser.from_names_file(names)


def _read(
    source: Path, codebook: Path | None, output: Path, force: bool, others: Any = ()
) -> tuple[pd.DataFrame, Codebook]:
    from qualcode.files.tables import read_table

    guarded(output, [source, *([codebook] if codebook else []), *others], force)
    book = use_codebook(codebook, [source])
    table = read_table(source, required=("text", "theme"), what="predictions or labels file")
    return table, book


def _say(messages: list[str]) -> None:
    for message in messages:
        if message:
            click.echo(message, err=True)


@click.command("report")
@_table_options(
    "report.html (one self-contained file) or a directory for the report with its "
    "charts, counts and exports."
)
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
    help="Typical quotes per theme.",
)
@click.option(
    "--include-flagged",
    is_flag=True,
    help="Quotes may come from segments flagged for review too.",
)
@click.option(
    "--sources",
    type=_path,
    multiple=True,
    help="The segmented documents (files or folders), for codes.qdpx in a report directory.",
)
@click.option(
    "--discover",
    "discovery",
    type=_path,
    default=None,
    metavar="DIR",
    help="A `qualcode discover` folder: its suggested themes become a section “Nya teman?”.",
)
@_privacy_options
@click.option("--quiet", "-q", is_flag=True, help="Do not print the counts table.")
def report(
    source,
    codebook,
    output,
    force,
    by,
    exemplars,
    include_flagged,
    sources,
    discovery,
    pseudonymise,
    names,
    quiet,
) -> None:
    """Theme counts, charts, typical quotes and flagged segments from PREDICTIONS_OR_LABELS.

    Reads a predictions file from `qualcode classify` or a labels file (text, theme). With
    `-o report.html` it writes one HTML file that opens offline; with a directory it also
    writes report.md, theme_counts.csv, the charts as PNG, coded_segments.xlsx and codes.qdpx.
    """
    from qualcode.reporting.report import report as run_report

    table, book = _read(source, codebook, output, force, [*sources, *([names] if names else [])])
    result = run_report(
        table,
        book,
        output,
        by=by,
        exemplars=exemplars,
        include_flagged=include_flagged,
        source_name=source.name,
        pseudonymiser=_pseudonymiser(pseudonymise, names),
        sources=sources,
        near=(source.parent, Path.cwd()),
        discovery=discovery,
    )
    if not quiet:
        columns = [c for c in _SUMMARY_COLUMNS if c in result.counts.columns]
        table = result.counts[columns].copy()
        table["share"] = [f"{share:.0%}" for share in table["share"]]
        click.echo(table.to_string(index=False))
    _say(result.messages)
    written = ", ".join(path.name for path in result.paths.values())
    what = f" ({written})" if output.is_dir() else ""
    click.echo(f"report on {result.segments} segments → {output}{what}", err=True)
    page = output / "report.html" if output.is_dir() else output
    next_step(f"open {page} in a browser")


@click.group()
def export() -> None:
    """Export coded segments: an Excel workbook or a REFI-QDA project (NVivo, ATLAS.ti,
    MAXQDA, QualCoder)."""


@export.command("xlsx")
@_table_options("The .xlsx file to write.")
@_privacy_options
def export_xlsx(source, codebook, output, force, pseudonymise, names) -> None:
    """A summary sheet, all segments with a 0/1 column per theme, and one sheet per theme."""
    from qualcode.reporting.export import write_workbook

    table, book = _read(source, codebook, output, force, [names] if names else [])
    result = write_workbook(table, book, output, pseudonymiser=_pseudonymiser(pseudonymise, names))
    _say([*result.messages, result.pseudonymised])
    click.echo(f"{result.segments} segments → {output}", err=True)


@export.command("qdpx")
@_table_options("The .qdpx file to write.")
@click.option(
    "--sources",
    type=_path,
    multiple=True,
    help="The segmented documents (files or folders): each segment is coded at its place in "
    "its document's text. Default: documents of that name beside PREDICTIONS_OR_LABELS or in "
    "the current folder; segments of a document not found are laid out one per paragraph.",
)
@click.option("--accepted-only", is_flag=True, help="Leave out segments flagged for review.")
@click.option(
    "--into",
    "project",
    default=None,
    type=_path,
    metavar="PROJECT.qdpx",
    help="Write the codings into a copy of this project (from `qualcode import qdpx`): the "
    "analyst's codes and codings stay as they are, ours are added by user 'qualcode'.",
)
@_privacy_options
def export_qdpx(
    source, codebook, output, force, sources, accepted_only, project, pseudonymise, names
) -> None:
    """A REFI-QDA project: the codebook as codes, documents as sources, segments coded."""
    from qualcode.reporting.export import write_qdpx

    if project is not None:
        from qualcode.reporting.refi import write_into

        if pseudonymise or names:
            raise click.UsageError("--into keeps the project's own text: leave out --pseudonymise")
        table, book = _read(source, codebook, output, force, [project, *sources])
        coded, notes = write_into(project, table, book, output, accepted_only=accepted_only)
        _say(notes)
        click.echo(f"{coded} segments coded into a copy of {project.name} → {output}", err=True)
        return
    table, book = _read(source, codebook, output, force, [*sources, *([names] if names else [])])
    result = write_qdpx(
        table,
        book,
        output,
        sources=sources,
        near=(source.parent, Path.cwd()),
        accepted_only=accepted_only,
        pseudonymiser=_pseudonymiser(pseudonymise, names),
        description=f"Exported by qualcode from {source.name}.",
    )
    _say([*result.messages, result.pseudonymised])
    click.echo(f"{result.segments} coded segments → {output}", err=True)


@click.group("import")
def import_() -> None:
    """Bring in coding done elsewhere: a REFI-QDA project from NVivo, ATLAS.ti, MAXQDA or
    QualCoder."""


@import_.command("qdpx")
@click.argument("project", type=_path, metavar="PROJECT.qdpx")
@click.option(
    "-o",
    "--output",
    required=True,
    type=_path,
    help="A new folder: codebook.yaml, documents/, labels.csv and segments.csv.",
)
def import_qdpx(project: Path, output: Path) -> None:
    """Read PROJECT.qdpx: its codes, text sources and coded selections become a codebook,
    documents and labels to train on, and its uncoded text a batch to classify."""
    from qualcode.reporting.refi import import_qdpx as run_import

    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise click.UsageError(f"-o {output} exists and is not empty: choose a new folder")
    result = run_import(project, output)
    _say(result.notes)
    coders = ", ".join(result.coders) or "nobody"
    click.echo(
        f"{result.codes} codes, {result.documents} documents, {result.labelled} coded "
        f"selections (by {coders}), {result.segments} uncoded segments → {output}",
        err=True,
    )
    next_step(
        f"qualcode train {output / 'labels.csv'} -o {output / 'model'}",
        f"qualcode classify {output / 'model'} {output / 'segments.csv'} -o predictions.csv",
    )
