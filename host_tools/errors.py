"""The one error type of the fota library; the CLI turns it into an exit code."""

from __future__ import annotations

# The exit codes of the `fota` command (README "Exit codes"; one place maps errors to them: host_tools/cli)
EXIT_ERROR = 1  # the library refused: a bad board definition, a key that does not load, a conflict
EXIT_USAGE = 2  # bad arguments (argparse) or an option the command cannot honour
EXIT_VERIFY_FAILED = 3  # a package or image that does not verify
EXIT_NOT_FOUND = 4  # no such file, board, device, group, campaign or package
EXIT_UNAVAILABLE = 5  # no server running or reachable, a port in use, a data directory locked by another process


class FotaError(Exception):
    """An error a user can act on: a message, an optional hint, an exit code."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class NotFoundError(FotaError):
    """Something named on the command line does not exist: a file, device, group, campaign."""

    exit_code = EXIT_NOT_FOUND


class UnavailableError(FotaError):
    """A server that is not running or not reachable, a port in use, a data directory in use."""

    exit_code = EXIT_UNAVAILABLE
