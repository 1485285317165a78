"""The one error type qualcode raises for bad input; the CLI prints its message on one line."""


class QualcodeError(Exception):
    """Bad input or state the analyst can fix. ``str(err)`` is a complete one-line message."""


def crash_point(name: str) -> None:
    """Fault injection for the crash matrix (tests/test_files_safe.py): the process kills
    itself with SIGKILL at the point ``name`` when ``$QUALCODE_CRASH_AT`` names it."""
    import os

    if os.environ.get("QUALCODE_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
