"""User-facing errors: bad input ends the CLI with exit code 2 and one line, never a traceback.

Internal bugs raise ordinary exceptions; only problems with what the user gave us are InputError.
"""
from __future__ import annotations

from pathlib import Path

EXIT_INPUT_ERROR = 2


class InputError(Exception):
    """Bad user input. `where` names the case or file, `message` says what is wrong and what was expected."""

    def __init__(self, where: str | Path, message: str):
        self.where = str(where)
        self.message = message
        super().__init__(f"{self.where}: {message}")

    def line(self) -> str:
        """The one-line form the CLI prints."""
        text = f"error: {self.where}: {self.message}"
        return " ".join(text.split())  # never more than one line


def with_location(exc: OSError, where: Path) -> OSError:
    """The same OS error (disk full, permissions), naming `where` when the original names no path."""
    named = exc.filename if exc.filename and "/" in str(exc.filename) else where
    return OSError(exc.errno, exc.strerror, str(named))
