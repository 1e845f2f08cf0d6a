"""Model files: what a training stage hands the next, and what `conta weights convert` writes.

One torch file, `{"model": state dict, "meta": how to rebuild the network}`, loaded with
weights_only=True. `meta["kind"]` names the network: "cam_net" (the classifier), "irn",
"deeplab_v2" / "deeplab_v3" / "deeplab_v3plus" (the segmenter) or "resnet_backbone" (a
converted trunk); the rest of the meta is what that kind's builder reads, so every network is
rebuilt from its file alone, never from the current config.

Files of the previous layout: classifiers and IRNs had no "kind"; a classifier's meta held
everything else and still loads; an IRN's lacked its backbone's strides and dilations, and
`conta irn upgrade` adds them from the config it was trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from conta.engine.checkpoint import load_checkpoint, save_torch
from conta.errors import DataError

CAM_KEYS = frozenset({"arch", "width", "strides", "dilations", "n_classes", "context_at", "context_module"})
"""A classifier's meta of the previous layout: all of these, and no kind."""
OLD_IRN_KEYS = frozenset({"arch", "width", "radius", "displacement", "displacement_mean"})
"""An IRN's meta of the previous layout: no kind, no backbone strides and dilations."""
OLD_IRN = "irn (previous layout)"


def save_model_file(path: str | Path, weights: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write {"model": weights, "meta": meta} atomically; `meta` must name its kind."""
    if "kind" not in meta:
        raise ValueError("a model file's meta names its kind")
    save_torch(path, {"model": weights, "meta": meta})


def read_meta(path: str | Path) -> dict[str, Any] | None:
    """The meta (with its kind) of a model file, or None for any other torch file (an ImageNet state dict)."""
    _, meta, kind = _read(path)
    return {**meta, "kind": kind} if kind is not None else None


def read_model_file(path: str | Path, kinds: tuple[str, ...], what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, meta) of a model file of one of `kinds`; a one-line DataError names the file and
    says what it is instead (`what` describes the expected file), or how to convert an old one."""
    state, meta, kind = _read(path)
    if kind == OLD_IRN and "irn" in kinds:
        raise DataError(path, "an IRN model file of the previous layout (its meta has no backbone strides and "
                              "dilations); convert it with `conta irn upgrade --config <the config it was "
                              "trained with> --round <t>`")
    if kind not in kinds:
        found = "not a conta model file" if kind is None else f"a model file of kind {kind}"
        raise DataError(path, f"not {what} ({found})")
    return state["model"], {**meta, "kind": kind}


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> torch.nn.Module:
    """`weights` into the network built from the same file's meta, strictly; a one-line DataError if they differ."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise DataError(path, f"weights do not match their own meta ({(lines[1:2] or lines)[0]})") from None
    return model


def _read(path: str | Path) -> tuple[Any, dict[str, Any] | None, str | None]:
    """(the loaded file, its meta, its kind), the last two None for a file that is no model file."""
    state = load_checkpoint(path)
    meta = state.get("meta") if isinstance(state, dict) else None
    kind = _kind(meta) if isinstance(meta, dict) and "model" in state else None
    return state, meta, kind


def _kind(meta: dict[str, Any]) -> str | None:
    if "kind" in meta:
        return meta["kind"]
    if CAM_KEYS <= meta.keys():
        return "cam_net"
    if OLD_IRN_KEYS <= meta.keys():
        return OLD_IRN
    return None
