"""The one error type for bad input data; its message always names the file and the culprit."""

from __future__ import annotations

from pathlib import Path

from sml_torchrec.errors import UserError


class DataError(UserError, ValueError):
    """Raised for malformed or inconsistent input data.

    The message starts with the file (or dataset directory) at fault and names the line,
    column, id or value that is wrong, so a user can fix their data without a debugger.
    """

    def __init__(self, path: str | Path | None, message: str) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
