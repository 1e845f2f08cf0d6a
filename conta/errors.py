"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class ContaError(Exception):
    """An error caused by the user's input or environment, explained in its message."""


class ConfigError(ContaError):
    """A bad configuration key or value; the message names the key and the file."""


class DataError(ContaError):
    """A missing or malformed dataset file; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # rebuilt from both fields when it crosses a process-pool boundary (args holds one string)
        return type(self), (self.path, self.problem)
