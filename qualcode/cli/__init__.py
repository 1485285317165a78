"""The ``qualcode`` command: the only package that imports click. :mod:`.commands` holds the
group and the core commands; :mod:`.label_review` and :mod:`.report` the rest; :mod:`.options`
the options they share."""

from qualcode.cli.commands import cli, main

__all__ = ["cli", "main"]
