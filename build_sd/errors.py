"""The one error type a user sees: a one-line message and exit code 2 (never a traceback)."""


class UserError(Exception):
    """Bad input from the user (path, checkpoint, option). The CLI prints `error: <msg>`, exits 2."""

    exit_code = 2


class BuildError(Exception):
    """A tool failed (iree-compile, cmake), not the user's input: exit code 1 with its message."""

    exit_code = 1
