"""Whole-state checkpoints (model, optimizer, step, RNG) written atomically, loaded without pickle."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from conta.errors import ContaError
from conta.io import atomic_path


def save_torch(path: str | Path, obj: Any) -> None:
    """`torch.save` atomically, through a Python file object: a full disk or a read-only folder
    then raises an OSError with its errno (a one-line `WriteError`), not the C++ writer's
    "enforce fail" RuntimeError."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        torch.save(obj, fh)


def save_checkpoint(path: str | Path, **state: Any) -> None:
    """Save tensors, state dicts and plain values; RNG state is added so a resume continues exactly."""
    state.setdefault("torch_rng", torch.get_rng_state())
    if torch.cuda.is_available():
        state.setdefault("cuda_rng", torch.cuda.get_rng_state_all())
    save_torch(path, state)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ContaError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, not a deep traceback
        raise ContaError(f"{path}: not a readable conta checkpoint ({load_failure(exc, path)})") from None


def load_failure(exc: Exception, path: Path) -> str:
    """One line for why torch.load refused `path`. Its own message spans many lines and suggests
    weights_only=False, which would run whatever code a pickle holds; only the reason is kept."""
    text = str(exc)
    reason = ""
    if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        after = text.split("WeightsUnpickler error:", 1)[1]
        reason = next((line.strip() for line in after.splitlines() if line.strip()), "")
        reason = re.split(r"\. Please use", reason)[0]
    if reason.startswith("Unsupported global"):
        return f"refused by the weights-only loader, which runs no code: {reason}"
    if path.is_file() and path.stat().st_size == 0:
        return "empty file"
    if path.is_file() and not zipfile.is_zipfile(path):
        return "not a file that torch.save wrote, or a truncated one"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {(reason or first)[:200]}"


def restore_rng(state: dict[str, Any]) -> None:
    if "torch_rng" in state:
        torch.set_rng_state(state["torch_rng"].cpu())
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
