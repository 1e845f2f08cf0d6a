"""SegmentationClassAug from SBD: the class masks of train_aug as index PNGs.

SBD (benchmark.tgz, benchmark_RELEASE/dataset/) stores one `cls/<id>.mat` per image, whose
`GTcls.Segmentation` is the H x W class map (0 = background, 1..20 = VOC classes, no void band).
`conta data sbd-masks` writes `VOC2012/SegmentationClassAug/<id>.png` for every image of SBD train
∪ val ∪ VOC train ∪ VOC val: the official VOC mask (with its 255 void band) where the image has
one, else SBD's. Scoring CAMs and pseudo-masks on train_aug, or training DeepLab on ground truth,
reads these. Writes are atomic and existing PNGs are kept, so an interrupted run resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from conta.data.matfile import load_mat
from conta.data.palette import voc_palette
from conta.data.voc import VOC_CLASSES, read_id_list
from conta.data.voc12 import LIST_DIRS, MASK_DIRS, resolve_voc_root, sbd_list_dir
from conta.engine.parallel import run_parallel
from conta.errors import DataError
from conta.io import load_label_png, save_label_png

N_LABELS = len(VOC_CLASSES) + 1   # background + 20 classes


def read_sbd_mask(path: str | Path) -> np.ndarray:
    """GTcls.Segmentation of one SBD cls/<id>.mat as an H x W uint8 map, checked for VOC labels."""
    path = Path(path)
    gt = load_mat(path).get("GTcls")
    if not isinstance(gt, dict) or not isinstance(gt.get("Segmentation"), np.ndarray):
        raise DataError(path, "no GTcls.Segmentation in this file (is it from SBD's dataset/cls/?)")
    mask = gt["Segmentation"]
    if mask.ndim != 2 or mask.size == 0:
        raise DataError(path, f"GTcls.Segmentation has shape {mask.shape}; expected an H x W map")
    if mask.min() < 0 or mask.max() >= N_LABELS:
        raise DataError(path, f"GTcls.Segmentation holds values {int(mask.min())}..{int(mask.max())}; "
                        f"expected 0..{N_LABELS - 1}")
    return mask.astype(np.uint8)


def _convert(job: tuple[Path, Path]) -> None:
    source, out = job
    mask = load_label_png(source) if source.suffix == ".png" else read_sbd_mask(source)
    save_label_png(out, mask, voc_palette())


def write_sbd_masks(voc_root: str | Path, sbd_root: str | Path, workers: int = 1,
                    log: Callable[[str], None] = print) -> tuple[Path, int]:
    """Write SegmentationClassAug/<id>.png for SBD train ∪ val ∪ VOC train ∪ val; returns the
    folder and the number of masks it holds. Every SBD source is checked to exist first."""
    voc = resolve_voc_root(voc_root)
    sbd = sbd_list_dir(sbd_root)
    sbd_ids = set(read_id_list(sbd / "train.txt")) | set(read_id_list(sbd / "val.txt"))
    voc_ids = set(read_id_list(voc / LIST_DIRS[0] / "train.txt")) | set(read_id_list(voc / LIST_DIRS[0] / "val.txt"))
    official, out_dir = voc / MASK_DIRS[0], voc / MASK_DIRS[1]
    sources = {}
    for image_id in sorted(sbd_ids | voc_ids):
        png, mat = official / f"{image_id}.png", sbd / "cls" / f"{image_id}.mat"
        sources[image_id] = png if image_id in voc_ids and png.is_file() else mat
    missing = [p for p in sources.values() if not p.is_file()]
    if missing:
        raise DataError(missing[0], f"{len(missing)} of {len(sources)} source masks are missing "
                        "(SBD's dataset/cls/<id>.mat, or VOC2012/SegmentationClass/<id>.png)")
    jobs = [(src, out_dir / f"{i}.png") for i, src in sources.items() if not (out_dir / f"{i}.png").is_file()]
    n_sbd = sum(p.suffix == ".mat" for p in sources.values())
    log(f"sbd masks: {len(sources)} ids ({n_sbd} from SBD, {len(sources) - n_sbd} official VOC masks), "
        f"{len(jobs)} to write, {len(sources) - len(jobs)} already there")
    run_parallel(_convert, jobs, workers, "sbd masks")
    return out_dir, len(sources)
