"""Click options shared by the commands of :mod:`qualcode.cli` and its step modules."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

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


encoder_option = click.option(
    "--encoder",
    default=None,
    metavar="NAME_OR_PATH",
    help="e5-small (bundled, default), tfidf (baseline), or any sentence-transformers model.",
)
target_option = click.option(
    "--target-accuracy",
    type=float,
    default=None,
    help="Flag segments for review so that the unflagged ones reach this accuracy "
    "(chosen from cross-validation). Default 0.9.",
)


multi_label_answers_option = click.option(
    "--multi-label", is_flag=True, help="Allow several themes per segment."
)
order_option = click.option(
    "--order",
    type=click.Choice(["active", "file"]),
    default="active",
    show_default=True,
    help="active: the segments whose answers help most first (uncertain, diverse); file: "
    "file order.",
)


def training_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--encoder``, ``--multi-label``, ``--finetune``, ``--target-accuracy`` and ``--seed``,
    handed to the command as one ``settings`` (:class:`qualcode.training.TrainingSettings`)."""

    @functools.wraps(command)
    def with_settings(
        *args: Any,
        encoder: str | None,
        multi_label: bool,
        finetune: bool,
        target_accuracy: float | None,
        seed: int,
        **kwargs: Any,
    ) -> Any:
        from qualcode.model.review_rule import DEFAULT_TARGET_ACCURACY
        from qualcode.training import TrainingSettings

        settings = TrainingSettings(
            encoder=encoder,
            multi_label=multi_label,
            finetune=finetune,
            target_accuracy=target_accuracy or DEFAULT_TARGET_ACCURACY,
            seed=seed,
        )
        return command(*args, settings=settings, **kwargs)

    options = [
        encoder_option,
        click.option("--multi-label", is_flag=True, help="Segments may carry several themes."),
        click.option("--finetune", is_flag=True, help="Fine-tune the encoder on the labels first."),
        target_option,
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    for option in reversed(options):
        with_settings = option(with_settings)
    return with_settings


def use_codebook(given: Any, near: Any = ()) -> Any:
    """The codebook given, or found beside ``near`` (see :func:`qualcode.codebook.find_codebook`);
    a codebook that was found, not given, is named on stderr."""
    from qualcode.codebook import find_codebook

    book = find_codebook(given, [p for p in near if p is not None])
    if given is None:
        click.echo(f"codebook: {book.path} ({book.name}, {len(book.ids)} themes)", err=True)
    return book


def codebook_flag(book: Any = None, near: Any = ()) -> str:
    """`` --codebook PATH`` for a next-step hint when the next command, given ``near``, would
    not find ``book`` (or any codebook, without ``book``) by itself; else ""."""
    from qualcode.codebook import find_codebook
    from qualcode.errors import QualcodeError

    try:
        found = find_codebook(None, [p for p in near if p is not None])
    except QualcodeError:
        found = None
    if found is not None and (book is None or found.sha256 == book.sha256):
        return ""
    return f" --codebook {book.path if book is not None else 'CODEBOOK.yaml'}"


def next_step(*commands: str) -> None:
    """Say on stderr which command usually comes next (the README's workflow)."""
    if commands:
        click.echo("next: " + "  or  ".join(f"`{c}`" for c in commands), err=True)
