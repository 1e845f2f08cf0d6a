"""Where each stage's artifacts live in a run directory (the contract between stages).

    runs/<name>/config.yaml
    runs/<name>/round_<t>/cam/{checkpoint.pt, model.pt, maps/<id>.npz}
                         ir_label/<id>.png
                         irn/{checkpoint.pt, model.pt}
                         pseudo_mask/<id>.png
                         seg/{checkpoint.pt, model.pt, tb/, pred/<split>/<id>.png, logits/<split>/<id>.npz}
                         confounder.npz
                         metrics.json

Every path of a round is named here and nowhere else; the formats of the files handed from
stage to stage are in `conta.artifacts` (docs/design.md, "The run directory", lists who writes
and who reads each).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conta.artifacts.cam_map import cam_map_path
from conta.artifacts.label_png import label_path
from conta.config import Config, dump_yaml
from conta.io import load_json, save_json, save_text


class RoundPaths:
    """Every artifact path of one round, under its folder `root` (the layout above)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cam = root / "cam"
        self.cam_checkpoint = self.cam / "checkpoint.pt"
        self.cam_model = self.cam / "model.pt"
        self.cam_maps = self.cam / "maps"
        self.ir_label = root / "ir_label"
        self.irn = root / "irn"
        self.irn_checkpoint = self.irn / "checkpoint.pt"
        self.irn_model = self.irn / "model.pt"
        self.pseudo_mask = root / "pseudo_mask"
        self.seg = root / "seg"
        self.seg_checkpoint = self.seg / "checkpoint.pt"
        self.seg_model = self.seg / "model.pt"
        self.seg_tb = self.seg / "tb"
        self.confounder = root / "confounder.npz"
        self.metrics = root / "metrics.json"

    def __repr__(self) -> str:
        return f"RoundPaths({self.root})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RoundPaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def cam_map(self, image_id: str) -> Path:
        return cam_map_path(self.cam_maps, image_id)

    def seed_label(self, image_id: str) -> Path:
        return label_path(self.ir_label, image_id)

    def seg_pred(self, split: str) -> Path:
        return self.seg / "pred" / split

    def seg_logits(self, split: str) -> Path:
        return self.seg / "logits" / split


def write_run_config(cfg: Config) -> Path:
    """The resolved config (what actually ran) beside the run's outputs."""
    path = cfg.run_dir / "config.yaml"
    save_text(path, dump_yaml(cfg))
    return path


def round_paths(cfg: Config, t: int) -> RoundPaths:
    """Round t's paths in the run of `cfg`. Stages get theirs from their RoundContext; readers of a
    finished run (the report, the study) call this directly."""
    return RoundPaths(cfg.run_dir / f"round_{t}")


def update_metrics(path: Path, section: str, values: Any) -> None:
    """Merge one stage's numbers into a round's metrics.json (read-modify-atomic-write)."""
    data = load_json(path) if path.is_file() else {}
    data[section] = values
    save_json(path, data)


def read_metrics(path: Path) -> dict[str, Any]:
    return load_json(path) if path.is_file() else {}


def write_done_marker(folder: Path, info: dict[str, Any] | None = None) -> None:
    """Record that every output of a folder is written (for people and scripts inspecting a run;
    the stages themselves resume file by file)."""
    save_json(folder / "DONE.json", info or {})
