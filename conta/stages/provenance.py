"""Outputs that belong to the model that made them.

A stage that skips images whose outputs exist must not keep another model's outputs when the
user points it at a new model (`conta seg test --model-path M`). So each such folder records the
model file it was made with, in MODEL.json (path and sha256); a folder made with another file, or
that records none, is emptied of its outputs before the new model fills it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from conta.errors import ContaError
from conta.io import load_json, save_json

STAMP = "MODEL.json"
OUTPUT_SUFFIXES: tuple[str, ...] = (".png", ".npz")


def model_identity(path: Path) -> dict[str, str]:
    """{"path", "sha256"} of a model file; a missing one is an error naming it."""
    if not path.is_file():
        raise ContaError(f"{path}: model file not found" + ("" if path.parent.is_dir() else
                                                           f" (nor its folder {path.parent})"))
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "sha256": digest.hexdigest()}


def made_by(folder: Path, identity: dict[str, str]) -> bool:
    """Whether `folder`'s outputs were made with the model file `identity` describes (same bytes)."""
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    recorded = load_json(stamp)
    return isinstance(recorded, dict) and recorded.get("sha256") == identity["sha256"]


def claim(folder: Path, identity: dict[str, str], log: Callable[[str], None]) -> None:
    """Make `folder` the model's: drop the outputs of any other model, then record this one.

    The old record goes first and the new one last, so an interruption in between leaves a
    folder that records no model, which the next run empties again.
    """
    (folder / STAMP).unlink(missing_ok=True)
    stale = [p for p in folder.glob("*") if p.suffix in OUTPUT_SUFFIXES and p.is_file()] if folder.is_dir() else []
    for path in stale:
        path.unlink()
    if stale:
        log(f"{folder}: {len(stale)} outputs of another model removed; making them with {identity['path']}")
    save_json(folder / STAMP, identity)
