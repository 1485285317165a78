"""``qualcode label`` and ``qualcode review``: click skins over :mod:`qualcode.labelling` and
:mod:`qualcode.review` (registered in :mod:`qualcode.cli`). No logic lives here."""

from __future__ import annotations

from pathlib import Path

import click

from qualcode.cli.options import (
    codebook_flag,
    force_option,
    guarded,
    multi_label_answers_option,
    next_step,
    order_option,
    use_codebook,
)
from qualcode.codebook import CODEBOOK_HELP

__all__ = ["apply", "label", "review"]

_path = click.Path(path_type=Path)


@click.command()
@click.argument("source", type=_path, metavar="SEGMENTS")
@click.option("--codebook", default=None, type=_path, help=CODEBOOK_HELP)
@click.option(
    "-o",
    "--output",
    required=True,
    type=_path,
    help="labels.csv (labelling, --import) or to_label.xlsx (--template).",
)
@click.option("--coder", default=None, help="Name stored with each answer (default: login name).")
@multi_label_answers_option
@order_option
@click.option(
    "--retrain-every",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Retrain the suggestion model after this many answers.",
)
@click.option(
    "--encoder",
    default=None,
    metavar="NAME_OR_PATH",
    help="Sentence encoder for suggestions (default: bundled e5-small).",
)
@click.option(
    "--template",
    "mode",
    flag_value="template",
    help="Write an XLSX to label in Excel (theme drop-down) instead.",
)
@click.option(
    "--import",
    "mode",
    flag_value="import",
    help="SEGMENTS is a filled-in XLSX template: merge its labels into -o.",
)
@click.option(
    "--model",
    "model_dir",
    default=None,
    type=_path,
    help="A trained model (labelling a new batch): its suggestions, and the segments whose "
    "answers help it most asked first. Its codebook is used unless --codebook is given.",
)
@click.option(
    "--first",
    type=click.IntRange(min=1),
    default=None,
    help="With --template: only the first N segments in asking order.",
)
@click.option(
    "--labels",
    "labelled",
    multiple=True,
    type=_path,
    help="With --template: leave out segments already labelled in this labels file (repeatable).",
)
@force_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def label(
    source,
    codebook,
    output,
    coder,
    multi_label,
    order,
    retrain_every,
    encoder,
    model_dir,
    first,
    mode,
    labelled,
    force,
    quiet,
):
    """Label SEGMENTS (from `qualcode segment`) with themes, interactively in the terminal.

    Keys: Enter accepts the suggestion, 1-9 pick themes, s skip, u undo, ? help, q quit. Every
    answer is saved at once; run the same command again to resume.

    \b
    Spreadsheet alternative:
      qualcode label --template SEGMENTS.csv --codebook C.yaml -o to_label.xlsx
      qualcode label --import to_label.xlsx --codebook C.yaml -o labels.csv
    """
    from qualcode.cli.labeller import Labeller
    from qualcode.codebook import load_codebook
    from qualcode.labelling import (
        import_template,
        read_segments,
        template_segments,
        write_template,
    )
    from qualcode.model.storage import load_model

    model = None
    if model_dir is not None:
        model = load_model(model_dir, load_codebook(codebook) if codebook else None)
        book = model.codebook
    else:
        book = use_codebook(codebook, [source, output])
    if first is not None and mode != "template":
        raise click.UsageError("--first goes with --template")
    if mode == "template":
        guarded(output, [source, *([codebook] if codebook else [])], force)
    else:  # the labeller appends to -o, and --import merges into it after a backup
        guarded(output, [source], updates_labels=True)
    if mode == "template":
        segments, how = template_segments(
            read_segments(source),
            model=model if order == "active" else None,
            first=first,
            labelled=labelled,
        )
        write_template(segments, book, output, multi_label=multi_label)
        click.echo(
            f"{len(segments)} segments to label ({how}) → {output} (choose themes in column "
            "'theme'; descriptions on sheet 'themes')",
            err=True,
        )
        next_step(f"qualcode label --import {output}{codebook_flag(book, [output])} -o labels.csv")
        return
    if mode == "import":
        done = import_template(source, book, output, coder=coder)
        backup = f"; previous labels backed up to {done.backup}" if done.backup else ""
        click.echo(
            f"{done.imported} labels imported ({done.replaced} replaced, {done.blank} "
            f"rows without a theme left out) → {output}{backup}",
            err=True,
        )
        next_step(f"qualcode train {output}{codebook_flag(book, [output])} -o MODEL_DIR")
        return
    result = Labeller(
        read_segments(source),
        book,
        output,
        coder=coder,
        multi_label=multi_label,
        order=order,
        retrain_every=retrain_every,
        encoder=encoder,
        model=model,
        progress=not quiet,
    ).run()
    per_theme = ", ".join(f"{t} {n}" for t, n in result.per_theme.items() if n)
    click.echo(
        f"{result.answered} answered, {result.skipped} skipped, {result.undone} undone "
        f"this session; {result.labelled}/{result.total} segments labelled"
        f"{' (' + per_theme + ')' if per_theme else ''} → {output}",
        err=True,
    )
    next_step(f"qualcode train {output}{codebook_flag(book, [output])} -o MODEL_DIR")


@click.group(invoke_without_command=True)
@click.option(
    "--labels",
    "labels",
    multiple=True,
    type=_path,
    help="A labels file; repeat for several coders.",
)
@click.option("--predictions", default=None, type=_path, help="predictions.csv from classify.")
@click.option("--codebook", default=None, type=_path, help=CODEBOOK_HELP)
@click.option("-o", "--output", default=None, type=_path, help="review.csv to write.")
@click.option(
    "--label-errors/--no-label-errors",
    default=True,
    show_default=True,
    help="Look for likely label errors by cross-validation (with --predictions or a single coder).",
)
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option(
    "--encoder",
    default=None,
    metavar="NAME_OR_PATH",
    help="Encoder for the label-error check (default: bundled e5-small).",
)
@click.option(
    "--excel/--plain-csv",
    default=True,
    show_default=True,
    help="A review file is for people: by default UTF-8 with BOM, ';' and decimal comma, as "
    "Swedish Excel opens it (or name it .xlsx); --plain-csv writes comma-separated UTF-8.",
)
@force_option
@click.option("--quiet", "-q", is_flag=True, help="Print no agreement table.")
@click.pass_context
def review(
    ctx, labels, predictions, codebook, output, label_errors, folds, encoder, excel, force, quiet
):
    """Export the rows to review to a CSV: model vs coder, likely label errors, flagged
    segments (with --predictions) and coder vs coder (with several coders).

    \b
      qualcode review --predictions predictions.csv --labels labels.csv \\
                      --codebook C.yaml -o review.csv
      qualcode review --labels anna.csv --labels bo.csv --codebook C.yaml -o review.csv
      qualcode review apply review.csv --labels labels.csv --codebook C.yaml

    Fill in `resolved_theme` (and `note`) in review.csv, then run `review apply`.
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [name for name, value in (("--labels", labels), ("-o/--output", output)) if not value]
    if missing:
        raise click.UsageError(f"missing option(s) {', '.join(missing)}", ctx)
    from qualcode.review import build_review, write_review

    inputs = [*labels, *([predictions] if predictions else []), *([codebook] if codebook else [])]
    guarded(output, inputs, force)
    book = use_codebook(codebook, [*labels, predictions])
    result = build_review(
        list(labels),
        book,
        predictions=predictions,
        label_errors=label_errors,
        folds=folds,
        encoder=encoder,
    )
    write_review(result.table, output, excel=excel)
    if result.agreement is not None and not quiet:
        click.echo(f"Agreement between {len(result.coders)} coders ({', '.join(result.coders)}):")
        click.echo(result.agreement.to_string(index=False))
    for line in result.messages:
        click.echo(line, err=True)
    counts = result.table["disagreement"].value_counts()
    summary = ", ".join(f"{k} {v}" for k, v in counts.items()) or "no disagreements"
    click.echo(f"{len(result.table)} rows to review ({summary}) → {output}", err=True)
    if len(result.table):
        flag = codebook_flag(book, [labels[0], output])
        next_step(f"qualcode review apply {output} --labels {labels[0]}{flag}")


@review.command("apply")
@click.argument("review_file", type=_path, metavar="REVIEW")
@click.option("--labels", required=True, type=_path, help="The labels file to update.")
@click.option("--codebook", default=None, type=_path, help=CODEBOOK_HELP)
@click.option("--coder", default=None, help="Who resolved the rows (default: login name).")
def apply(review_file, labels, codebook, coder):
    """Write the resolved themes of REVIEW back to a labels file (backup + audit log)."""
    from qualcode.review import apply_review

    guarded(labels, [review_file], updates_labels=True)
    book = use_codebook(codebook, [labels, review_file])
    result = apply_review(review_file, labels, book, coder=coder)
    if not result.changed and not result.added:
        click.echo(
            f"nothing to write: {result.unchanged} resolved row(s) already match {labels}", err=True
        )
        return
    click.echo(
        f"{result.changed} label(s) changed, {result.added} added, {result.unchanged} "
        f"already as resolved → {labels}; backup {result.backup}; audit log "
        f"{result.audit}",
        err=True,
    )
    next_step(f"qualcode train {labels}{codebook_flag(book, [labels])} -o MODEL_DIR")
