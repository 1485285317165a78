"""The one error type qualcode raises for bad input; the CLI prints its message on one line."""


class QualcodeError(Exception):
    """Bad input or state the analyst can fix. ``str(err)`` is a complete one-line message."""
