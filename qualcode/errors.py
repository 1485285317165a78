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


def crash_once(name: str) -> None:
    """Like :func:`crash_point`, but only the first time: the first process to get here creates
    the marker file ``$QUALCODE_CRASH_MARKER`` and dies; later ones (a retry) go on."""
    import os

    if os.environ.get("QUALCODE_CRASH_AT") != name:
        return
    marker = os.environ.get("QUALCODE_CRASH_MARKER")
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    crash_point(name)
