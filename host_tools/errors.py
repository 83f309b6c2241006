"""The one error type of the fota library; the CLI turns it into an exit code."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_VERIFY_FAILED = 3


class FotaError(Exception):
    """An error a user can act on: a message, an optional hint, an exit code."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message
