"""Atomic writes: the file mode an ordinary write gets, and one-line errors naming the path and the cause."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import conta.engine.checkpoint as checkpoint
from conta.errors import WriteError
from conta.io import FILE_MODE, atomic_path, save_json, write_error


def test_files_get_the_mode_of_an_ordinary_write(tmp_path: Path) -> None:
    save_json(tmp_path / "a.json", {"x": 1})
    with open(tmp_path / "plain.txt", "w") as fh:  # what open() gives under this process's umask
        fh.write("x")
    mode = stat.S_IMODE((tmp_path / "a.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == FILE_MODE


def test_the_umask_decides_the_mode(tmp_path: Path) -> None:
    """Read once, when conta.io is imported: each umask in a fresh import."""
    script = ("import importlib, os, stat, sys; import conta.io as io\n"
              "for mask in (0o022, 0o027, 0o077):\n"
              "    os.umask(mask); importlib.reload(io); io.save_text(f'{sys.argv[1]}/{mask:o}', 'x')\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env, timeout=120)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"22": 0o644, "27": 0o640, "77": 0o600}


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "No space left on device (ENOSPC); free some space"),
    (errno.EACCES, "Permission denied (EACCES); choose a folder you can write to"),
    (errno.EROFS, "Read-only file system (EROFS); choose a folder on a writable disk"),
    (errno.EISDIR, "Is a directory (EISDIR)"),
])
def test_write_error_names_the_path_and_the_cause(code: int, words: str) -> None:
    error = write_error(Path("runs/x/model.pt"), OSError(code, os.strerror(code)))
    assert str(error).startswith(f"runs/x/model.pt: cannot write: {words}") and "\n" not in str(error)


def test_a_full_disk_in_torch_save_keeps_the_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, step=1)
    old = path.read_bytes()

    def full(file, mode="r", *args, **kwargs):  # /dev/full: every write fails with ENOSPC
        return open("/dev/full", mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "open", full, raising=False)
    with pytest.raises(WriteError, match=r"checkpoint.pt: cannot write: No space left on device \(ENOSPC\)"):
        checkpoint.save_checkpoint(path, step=2, weights=torch.zeros(100_000))
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left


def test_a_failing_read_inside_a_write_keeps_its_own_error(tmp_path: Path) -> None:
    """Only the write's own failure is blamed on the destination."""
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        with atomic_path(tmp_path / "copy.npz") as tmp:
            shutil.copyfile(tmp_path / "missing.npz", tmp)
    assert not any(tmp_path.iterdir())


def test_an_unwritable_parent_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(WriteError, match=r"file/out.json: cannot write: .*/file is a file, not a folder$"):
        save_json(tmp_path / "file" / "out.json", {})
    with pytest.raises(WriteError, match=r"file/sub/out.json: cannot write: Not a directory \(ENOTDIR\)"):
        save_json(tmp_path / "file" / "sub" / "out.json", {})
