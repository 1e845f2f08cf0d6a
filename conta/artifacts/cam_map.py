"""CAM maps, `cam/maps/<id>.npz`: written by `conta cam infer`, read by CAM evaluation, `cam show`,
the seed labels and the random walk.

    keys      int64 (K,)         0-based indices of the image's tagged classes
    cam       float16 (K, h, w)  stride-4 maps, h x w = ceil(H/4) x ceil(W/4), max-normalised
    high_res  float16 (K, H, W)  full-resolution maps (cam.high_res: direct); absent when upsampled

Maps are stored in float16 (half the disk of float32; the thresholds downstream are coarser
than its precision) and read back as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from conta.errors import DataError
from conta.io import load_npz, save_npz
from conta.ops.cam_fusion import strided_size, upsample_cam


@dataclass(frozen=True)
class CamRecord:
    """One image's CAMs: tagged classes, their stride-4 maps, and their full-resolution maps when
    the file holds them (cam.high_res: direct)."""

    keys: np.ndarray                 # (K,) int64 0-based class indices
    cam: np.ndarray                  # (K, ceil(H/4), ceil(W/4)) float32, max-normalised
    high_res: np.ndarray | None = None  # (K, H, W) float32, max-normalised

    @property
    def label_values(self) -> np.ndarray:
        """Label value of each argmax index over [background plane, CAMs]: 0, keys + 1."""
        return np.concatenate([[0], self.keys + 1]).astype(np.uint8)

    def full_res(self, size: tuple[int, int]) -> np.ndarray:
        """(K, H, W) CAMs: the stored full-resolution ones, else the stride-4 ones upsampled."""
        if self.high_res is not None:
            return self.high_res
        return upsample_cam(torch.from_numpy(self.cam), size).numpy()


def cam_map_path(folder: Path, image_id: str) -> Path:
    """Where image `image_id`'s maps live in a maps folder (`RoundPaths.cam_maps`)."""
    return Path(folder) / f"{image_id}.npz"


def write_cam_map(path: Path, record: CamRecord) -> None:
    """Store `record` (atomically) in the layout above."""
    arrays = {"keys": record.keys.astype(np.int64), "cam": record.cam.astype(np.float16)}
    if record.high_res is not None:
        arrays["high_res"] = record.high_res.astype(np.float16)
    save_npz(path, **arrays)


def read_cam_map(path: Path, size: tuple[int, int], high_res: bool = True) -> CamRecord:
    """Load one image's maps and check them against the H x W image they belong to; `high_res`
    False leaves a stored full-resolution map unread (the random walk needs only the stride-4 one)."""
    if not Path(path).is_file():
        raise DataError(path, "CAM not found: run `conta cam infer` (and check data.infer_split covers this image)")
    data = load_npz(path, skip=() if high_res else ("high_res",))
    if "keys" not in data or "cam" not in data:
        raise DataError(path, "CAM file needs the arrays 'keys' and 'cam'")
    keys = data["keys"].astype(np.int64).reshape(-1)
    cam = data["cam"].astype(np.float32)
    expected = (len(keys), *strided_size(*size))
    if cam.shape != expected:
        raise DataError(path, f"cam has shape {cam.shape}, expected {expected} for a {size[0]} x {size[1]} image")
    full = data.get("high_res")
    if full is not None and full.shape != (len(keys), *size):
        raise DataError(path, f"high_res has shape {full.shape}, expected {(len(keys), *size)} for a "
                              f"{size[0]} x {size[1]} image")
    return CamRecord(keys, cam, None if full is None else full.astype(np.float32))


def require_cam_maps(folder: Path, ids: list[str]) -> None:
    """Fail before any work when maps are missing, naming the command that makes them."""
    missing = [i for i in ids if not cam_map_path(folder, i).is_file()]
    if missing:
        raise DataError(cam_map_path(folder, missing[0]),
                        f"CAM missing for {len(missing)} images; run `conta cam infer` first")
