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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conta.artifacts.cam_map import cam_map_path
from conta.artifacts.label_png import label_path
from conta.config import Config, dump_yaml
from conta.io import load_json, save_json, save_text


@dataclass(frozen=True)
class RoundPaths:
    root: Path

    @property
    def cam(self) -> Path:
        return self.root / "cam"

    @property
    def cam_checkpoint(self) -> Path:
        return self.cam / "checkpoint.pt"

    @property
    def cam_model(self) -> Path:
        return self.cam / "model.pt"

    @property
    def cam_maps(self) -> Path:
        return self.cam / "maps"

    def cam_map(self, image_id: str) -> Path:
        return cam_map_path(self.cam_maps, image_id)

    @property
    def ir_label(self) -> Path:
        return self.root / "ir_label"

    def seed_label(self, image_id: str) -> Path:
        return label_path(self.ir_label, image_id)

    @property
    def irn(self) -> Path:
        return self.root / "irn"

    @property
    def irn_checkpoint(self) -> Path:
        return self.irn / "checkpoint.pt"

    @property
    def irn_model(self) -> Path:
        return self.irn / "model.pt"

    @property
    def pseudo_mask(self) -> Path:
        return self.root / "pseudo_mask"

    @property
    def seg(self) -> Path:
        return self.root / "seg"

    @property
    def seg_checkpoint(self) -> Path:
        return self.seg / "checkpoint.pt"

    @property
    def seg_model(self) -> Path:
        return self.seg / "model.pt"

    @property
    def seg_tb(self) -> Path:
        return self.seg / "tb"

    def seg_pred(self, split: str) -> Path:
        return self.seg / "pred" / split

    def seg_logits(self, split: str) -> Path:
        return self.seg / "logits" / split

    @property
    def confounder(self) -> Path:
        return self.root / "confounder.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


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
