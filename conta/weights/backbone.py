"""Strict loading of torchvision-format ImageNet ResNet checkpoints into `conta.models.resnet.ResNet`.

The references load with `strict=False`, which silently loads nothing on a name mismatch. Here every model tensor must come from the file with the right shape; only the
classifier (`fc.*`) may be left over. Nothing is ever downloaded: "hub" means a file already in
the torch hub cache, and "synthetic" the stand-in for ImageNet that ships inside the package
(`conta pretrain` made it; docs/pretraining.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from conta.engine.checkpoint import load_failure
from conta.errors import ContaError
from conta.models.resnet import ResNet

# torchvision's canonical file names, oldest (the one IRNet and most WSSS papers use) first.
HUB_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-5c106cde.pth", "resnet18-f37072fd.pth"),
    "resnet34": ("resnet34-333f7ec4.pth", "resnet34-b627a593.pth"),
    "resnet50": ("resnet50-19c8e357.pth", "resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet101": ("resnet101-5d3b4d8f.pth", "resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}


SYNTHETIC = "synthetic"
SYNTHETIC_DIR = Path(__file__).resolve().parent.parent / "pretrained"


def synthetic_weights_name(arch: str, width: int) -> str:
    """The shipped file's stem for one backbone shape, e.g. synthetic-resnet18-w16."""
    return f"{SYNTHETIC}-{arch}-w{width}"


@dataclass
class LoadReport:
    """What a load did, for the run log."""

    source: str
    loaded: int
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {self.loaded} tensors from {self.source}"
        return f"{text} (skipped: {', '.join(self.skipped)})" if self.skipped else text


def hub_dir() -> Path:
    """Where "hub" looks: torch's checkpoint cache (follows $TORCH_HOME and torch.hub.set_dir)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_backbone_weights(model: ResNet, source: str, arch: str,
                          config_key: str = "pretrained") -> LoadReport:
    """Copy an ImageNet checkpoint into `model`, strictly; `config_key` is named in errors."""
    path = _resolve(source, arch, model.out_channels[0], config_key)
    state = _read_state_dict(path)
    own = model.state_dict()
    skipped = [k for k in state if k.startswith("fc.")]
    unexpected = [k for k in state if k not in own and not k.startswith("fc.")]
    if unexpected:
        raise ContaError(f"{path}: unexpected key {unexpected[0]!r}; not a torchvision {arch} checkpoint")
    for key, target in own.items():
        # Pre-0.4.1 torchvision files (e.g. resnet50-19c8e357.pth) have no BN batch counters.
        if key not in state and key.endswith("num_batches_tracked"):
            continue
        if key not in state:
            raise ContaError(f"{path}: missing key {key!r}; not a torchvision {arch} checkpoint")
        if state[key].shape != target.shape:
            raise ContaError(
                f"{path}: {key!r} has shape {tuple(state[key].shape)} but the model needs "
                f"{tuple(target.shape)} (a different arch or backbone width?)"
            )
    merged = {k: state.get(k, v) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)
    return LoadReport(str(path), sum(k in state for k in own), skipped)


def _resolve(source: str, arch: str, width: int, config_key: str) -> Path:
    if source == SYNTHETIC:
        path = SYNTHETIC_DIR / f"{synthetic_weights_name(arch, width)}.pt"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in SYNTHETIC_DIR.glob(f"{SYNTHETIC}-*.pt"))) or "none"
            raise ContaError(f"{config_key}=synthetic: no shipped weights for {arch} of width {width} "
                             f"(shipped: {shipped}); make them with `conta pretrain pretrain.arch={arch} "
                             f"pretrain.width={width}` and pass the file's path")
        return path
    if source != "hub":
        path = Path(source).expanduser()
        if not path.is_file():
            raise ContaError(
                f"{path}: backbone weights file not found; set {config_key} to an existing "
                f"torchvision {arch} checkpoint such as {HUB_FILES.get(arch, ('?',))[0]}"
            )
        return path
    if arch not in HUB_FILES:
        raise ContaError(f"{config_key}=hub: no torchvision checkpoint names known for {arch!r}")
    folder = hub_dir()
    for name in HUB_FILES[arch]:
        if (folder / name).is_file():
            return folder / name
    raise ContaError(
        f"{config_key}=hub: no ImageNet {arch} checkpoint in {folder} (nothing is downloaded); "
        f"put one of {', '.join(HUB_FILES[arch])} there, or set {config_key} to its path"
    )


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint; all mean the same
        raise ContaError(f"{path}: not a readable PyTorch checkpoint ({load_failure(exc, path)})") from None
    for nest in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(nest), dict):
            obj = obj[nest]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ContaError(f"{path}: not a state dict of tensors")
    return obj
