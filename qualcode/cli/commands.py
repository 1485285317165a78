"""The ``qualcode`` command: a thin click skin over the library. No logic lives here."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from qualcode.cli.options import (
    codebook_flag,
    excel_option,
    force_option,
    guarded,
    multi_label_answers_option,
    next_step,
    order_option,
    quiet_option,
    target_option,
    training_options,
    use_codebook,
)
from qualcode.codebook import CODEBOOK_HELP
from qualcode.errors import QualcodeError

EXIT_BAD_INPUT = 2


def _echo_table(frame, quiet: bool) -> None:
    if not quiet:
        click.echo(frame.to_string(index=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qualcode")
def cli() -> None:
    """Local, offline qualitative coding of Swedish free text.

    Workflow: segment → label → train → classify → review → report.
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
@click.option("--unit", type=click.Choice(["paragraph", "sentence"]), default="paragraph")
@click.option("--column", default=None, help="Answer column of a .csv/.xlsx survey export.")
@excel_option
@force_option
def segment(paths, output, unit, column, excel, force) -> None:
    """Split documents or survey exports into codable segments with provenance.

    Survey exports are read and segments written a chunk at a time (memory stays flat)."""
    from qualcode.files.chunks import TableWriter
    from qualcode.segmentation import segment_chunks

    guarded(output, paths, force)
    chunks = segment_chunks(paths, unit=unit, column=column)
    with TableWriter(output, excel=excel) as writer:
        for chunk in chunks():
            writer.write(chunk)
    counts = chunks.counts
    notes = []
    if counts.get("empty_answers"):
        notes.append(f"{counts['empty_answers']} empty answer(s) left out")
    if counts.get("non_answers"):
        notes.append(
            f"{counts['non_answers']} answer(s) with nothing to code (such as “vet ej”) "
            "marked in column non_answer: counted, asked last, not coded"
        )
    said = f" ({'; '.join(notes)})" if notes else ""
    click.echo(f"{writer.rows} segments from {len(paths)} file(s) → {output}{said}", err=True)
    next_step(
        f"qualcode label {output}{codebook_flag(near=[output])} -o labels.csv",
        f"qualcode classify MODEL_DIR {output} -o predictions.csv",
    )


@cli.command()
@click.argument("labels", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--codebook", default=None, type=click.Path(path_type=Path), help=CODEBOOK_HELP)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Model dir.")
@training_options
@quiet_option
def train(labels, codebook, output, settings, quiet):
    """Train a theme model on one or more LABELS files (columns text, theme).

    Several files (e.g. the seed set, then labels from a batch) are read in order; where a
    segment is labelled twice, the last answer counts.
    """
    from qualcode.files.tables import refuse_own_input
    from qualcode.training import read_label_files
    from qualcode.training import train as run_train

    refuse_own_input(output, [*labels, *([codebook] if codebook else [])])  # -o is a folder
    book = use_codebook(codebook, labels)
    table = read_label_files(list(labels), book)
    model = run_train(table, book, settings, progress=not quiet)
    model.save(output)
    click.echo(f"{model.describe()} → {output}", err=True)
    next_step(f"qualcode classify {output} SEGMENTS.csv -o predictions.csv")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path))
@click.option("--column", default=None, help="Answer column of a .csv/.xlsx survey export.")
@click.option("--unit", type=click.Choice(["paragraph", "sentence"]), default="paragraph")
@click.option(
    "--codebook",
    default=None,
    type=click.Path(path_type=Path),
    help="Refuse unless the model was trained with this codebook.",
)
@target_option
@click.option(
    "--max-flagged",
    type=float,
    default=None,
    help="Flag at most this share of the batch for low confidence (e.g. 0.3); the expected "
    "accuracy of the rest is printed.",
)
@click.option("--min-margin", type=float, default=None, help="Also flag top-1 − top-2 below this.")
@click.option(
    "--adapt/--no-adapt",
    default=True,
    show_default=True,
    help="Learn from the batch before coding it (self-training on its confident predictions).",
)
@click.option("--multi-label", is_flag=True, help="Require a multi-label model.")
@click.option(
    "--dask",
    default=None,
    metavar="ADDRESS",
    help="Score the chunks on a Dask cluster: a scheduler (tcp://host:8786) or local:N for N "
    "worker processes on this machine.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a killed run from the chunks it had done (same inputs, model and chunk size).",
)
@click.option(
    "--chunk-size",
    type=int,
    default=None,
    help="Segments per chunk (and per Dask task); default 10000.",
)
@excel_option
@force_option
@quiet_option
def classify(
    model_dir,
    inputs,
    output,
    column,
    unit,
    codebook,
    target_accuracy,
    max_flagged,
    min_margin,
    adapt,
    multi_label,
    dask,
    resume,
    chunk_size,
    excel,
    force,
    quiet,
):
    """Classify segments (a segments table or documents) with a trained model.

    Tables (CSV, XLSX, Parquet) are read and the output written chunk by chunk, so memory
    stays flat whatever the input's size."""
    from qualcode.classification import classify_files, review_summary, summarize
    from qualcode.codebook import load_codebook
    from qualcode.model.storage import load_model

    guarded(output, [*inputs, *([codebook] if codebook else [])], force)
    model = load_model(model_dir, load_codebook(codebook) if codebook else None)
    rule = model.rule_for(target_accuracy) if target_accuracy else model.review_rule
    if min_margin is not None:
        rule = dataclasses.replace(rule, min_margin=min_margin)
    predictions = classify_files(
        model_dir,
        model,
        inputs,
        output,
        column=column,
        unit=unit,
        rule=rule,
        multi_label=multi_label,
        adapt=adapt,
        max_flagged=max_flagged,
        excel=excel,
        resume=resume,
        chunk_rows=chunk_size,
        dask=dask,
        progress=not quiet,
    )
    _echo_table(summarize(predictions, model), quiet)
    click.echo(review_summary(predictions), err=True)
    click.echo(f"{len(predictions)} segments classified → {output}", err=True)
    next_step(
        f"qualcode report {output} -o report.html",
        f"qualcode review --predictions {output} --labels LABELS.csv -o review.csv",
    )


@cli.command()
@click.argument("labels", type=click.Path(path_type=Path))
@click.option("--codebook", default=None, type=click.Path(path_type=Path), help=CODEBOOK_HELP)
@click.option("--folds", type=int, default=5, show_default=True)
@training_options
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@quiet_option
def evaluate(labels, codebook, folds, settings, as_json, quiet):
    """Cross-validate training on LABELS: macro-F1, per-theme scores, confusion, coverage."""
    from qualcode.evaluation import evaluate as run_evaluate
    from qualcode.training import read_labels

    book = use_codebook(codebook, [labels])
    result = run_evaluate(
        read_labels(labels, book),
        book,
        settings,
        folds=folds,
        progress=not (quiet or as_json),
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    s = result.summary()
    click.echo(
        f"{s['segments']} segments, {s['folds']}-fold CV: macro-F1 {s['macro_f1']:.3f}, "
        f"accuracy {s['accuracy']:.3f}"
    )
    click.echo(
        f"review flags (target {s['review']['target_accuracy']}): coverage "
        f"{s['review']['coverage']:.0%}, accuracy of unflagged {s['review']['unflagged_accuracy']}"
    )
    click.echo("\nPer theme:\n" + result.per_theme().to_string(index=False))
    click.echo("\nConfusion (rows: coder, columns: model):\n" + result.confusion().to_string())
    click.echo("\nAccuracy vs coverage:\n" + result.risk_coverage().to_string(index=False))


@cli.command()
@click.argument("source", type=click.Path(path_type=Path), metavar="INPUT")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for discover.html, clusters.csv and codebook_suggestions.yaml.",
)
@click.option("--codebook", default=None, type=click.Path(path_type=Path), help=CODEBOOK_HELP)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=click.Path(path_type=Path),
    help="The model that made the predictions: its labelled segments describe the known themes "
    "(default: the one beside INPUT or in models/ that made them; else the codebook's "
    "descriptions and examples).",
)
@click.option(
    "--all",
    "all_segments",
    is_flag=True,
    help="Cluster every segment, not only those the codebook covers badly.",
)
@click.option(
    "--share",
    type=float,
    default=1 / 3,
    show_default="1/3",
    help="Share of the segments considered, those the codebook covers worst.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@quiet_option
def discover(source, output, codebook, model_dir, all_segments, share, seed, quiet) -> None:
    """Find themes the codebook lacks in INPUT (predictions, segments or labels).

    Clusters the segments the codebook covers badly (far from the labelled segments, in
    regions they do not reach, coded `other` or flagged), names each cluster with Swedish
    keywords and says whether it is new or close to an existing theme.
    """
    from qualcode.discovery import discover as run_discover
    from qualcode.files.tables import read_table, refuse_own_input
    from qualcode.model.storage import load_model, model_folders
    from qualcode.reporting.discovery import write_discovery

    refuse_own_input(output, [p for p in (source, codebook, model_dir) if p is not None])
    model = load_model(model_dir) if model_dir is not None else None
    if codebook is None and model is not None:
        book = model.codebook
    else:
        book = use_codebook(codebook, [source])
    table = read_table(source, required=("text",), what="predictions, segments or labels file")
    result = run_discover(
        table,
        book,
        model=model,
        all_segments=all_segments,
        share=share,
        seed=seed,
        candidates=model_folders([source]) if model is None else None,
        progress=not quiet,
    )
    paths = write_discovery(result, output, source_name=source.name)
    for message in result.messages:
        click.echo(message, err=True)
    if not quiet:
        for cluster in result.clusters:
            click.echo(
                f"{cluster.name} ({len(cluster.members)} segments, {cluster.verdict}"
                f"{' of ' + cluster.nearest_theme if cluster.verdict != 'new' else ''}): "
                f"{', '.join(cluster.keywords)}"
            )
    click.echo(f"{result.summary()} → {output}", err=True)
    next_step(
        f"open {paths['page']} in a browser",
        f"qualcode codebook merge {paths['suggestions']} --codebook CODEBOOK.yaml",
    )


@cli.group("codebook")
def codebook_group() -> None:
    """Work on the codebook file."""


@codebook_group.command("merge")
@click.argument("suggestions", type=click.Path(path_type=Path))
@click.option(
    "--codebook",
    required=True,
    type=click.Path(path_type=Path),
    help="The codebook YAML to add the themes to (backed up first).",
)
def codebook_merge(suggestions, codebook) -> None:
    """Add the themes of SUGGESTIONS (e.g. codebook_suggestions.yaml from `qualcode discover`)
    to the codebook, after a timestamped backup; refuses ids already in it."""
    from qualcode.codebook import merge_themes

    added, backup = merge_themes(codebook, suggestions)
    if not added:
        click.echo(f"no themes in {suggestions}: {codebook} is unchanged", err=True)
        return
    click.echo(
        f"{len(added)} theme(s) added to {codebook} ({', '.join(added)}); backup: {backup}",
        err=True,
    )
    next_step(f"qualcode train LABELS.csv --codebook {codebook} -o MODEL_DIR")


@cli.command()
@click.option("-o", "--output", default="out", show_default=True, type=click.Path(path_type=Path))
@click.option(
    "--model-dir", default="models/samverkan", show_default=True, type=click.Path(path_type=Path)
)
@quiet_option
def demo(output, model_dir, quiet) -> None:
    """Train on the bundled seed set and classify the Skåne round-table notes."""
    from qualcode.demo import run_demo

    result = run_demo(output, model_dir, progress=not quiet)
    _echo_table(result.summary, quiet)
    for line in result.messages:
        click.echo(line, err=True)


@cli.command()
@click.argument("folder", default=".", type=click.Path(path_type=Path, file_okay=False))
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Needed to listen on another address than 127.0.0.1 (the token still protects it).",
)
@click.option("--no-browser", is_flag=True, help="Only print the URL (for servers and tests).")
@click.option("--lang", type=click.Choice(["sv", "en"]), default="sv", show_default=True)
@multi_label_answers_option
@order_option
def app(folder, port, host, allow_remote, no_browser, lang, multi_label, order):
    """A local web app over FOLDER (segments.csv, codebook.yaml, labels.csv, model/,
    predictions.csv): label, review, browse and correct, train and classify."""
    from qualcode.app import Workspace, serve

    if host not in ("127.0.0.1", "localhost") and not allow_remote:
        raise click.UsageError(
            f"--host {host} lets other machines reach the app: add --allow-remote to mean it"
        )
    if not folder.is_dir():
        raise QualcodeError(f"{folder} is not a folder")
    workspace = Workspace(folder.resolve(), lang=lang, multi_label=multi_label, order=order)
    serve(
        workspace,
        host=host,
        port=port,
        open_browser=not no_browser,
        say=lambda line: click.echo(line, err=True),
    )


def _register_steps() -> None:
    # label, review, report and export live in their own CLI modules to keep this file short.
    from qualcode.cli.label_review import label, review
    from qualcode.cli.report import export, import_, report

    for command in (label, review, report, export, import_):
        cli.add_command(command)


_register_steps()


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and exit code 2, never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="qualcode", standalone_mode=False)
    except QualcodeError as err:
        click.echo(f"qualcode: error: {err}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.exceptions.Abort:
        click.echo("qualcode: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("qualcode: interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if os.environ.get("QUALCODE_DEBUG"):
            raise
        click.echo(
            f"qualcode: internal error: {type(err).__name__}: {err} "
            "(set QUALCODE_DEBUG=1 for details and please report it)",
            err=True,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
