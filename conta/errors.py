"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class ContaError(Exception):
    """An error caused by the user's input or environment, explained in its message."""


class ConfigError(ContaError):
    """A bad configuration key or value; the message names the key and the file.

    `key` is the dotted key at fault when one is known, so the loader can say whether the YAML
    file or a command-line override set it.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self) -> tuple[type, tuple[str, str | None]]:
        return type(self), (str(self), self.key)


class PathError(ContaError):
    """A problem with one file or folder: the message is `<path>: <problem>`."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # rebuilt from both fields when it crosses a process-pool boundary (args holds one string)
        return type(self), (self.path, self.problem)


class DataError(PathError):
    """A missing or malformed dataset file; the message names the file."""


class WriteError(PathError):
    """An output that cannot be written: no permission, a full disk, a read-only file system."""
