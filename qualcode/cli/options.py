"""Click options shared by the commands of :mod:`qualcode.cli` and its step modules."""

from __future__ import annotations

import click

quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or tables.")
excel_option = click.option(
    "--excel", is_flag=True, help="Write UTF-8 with BOM and ';' for Swedish Excel."
)
force_option = click.option(
    "--force",
    is_flag=True,
    help="Write -o even over a file of coded labels (a timestamped backup is made first).",
)


def guarded(output, inputs=(), force: bool = False, *, updates_labels: bool = False) -> None:
    """Check -o against the command's inputs and the analyst's labels (see
    :func:`qualcode.files.tables.guard_output`); say where a backup went."""
    from qualcode.files.tables import guard_output

    backup = guard_output(output, inputs, force=force, updates_labels=updates_labels)
    if backup is not None:
        click.echo(f"the labels in {output} were backed up to {backup}", err=True)
