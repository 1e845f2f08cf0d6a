"""Time `conta data check`'s decoding of every image and mask, at VOC size, by worker count.

    PYTHONPATH=. .venv/bin/python bench/data_check.py [--images 1200] [--workers 1 2] [--repeat 1] [--keep DIR]

Writes a VOC-layout folder of 500 x 375 JPEGs (quality 90, smooth colour fields with noise, ~90
kB each, as VOC's) and palette masks with a few objects, then runs the whole check on it
(`check_dataset`, split train) for each worker count, `--repeat` times in turn. The files were
just written, so they are in the page cache, as on a second check. `--keep DIR` writes the
folder there and reuses it on the next run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from conta.config import DataConfig
from conta.io import save_label_png, save_rgb
from conta.stages.data_check import check_dataset


def write_dataset(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    h, w = 375, 500
    ys, xs = np.mgrid[0:h, 0:w]
    ids = [f"2008_{i:06d}" for i in range(n)]
    for image_id in ids:
        phase = rng.uniform(0, 6.3, 3)
        field = np.stack([np.sin(xs / (40 + 10 * k) + ys / 57 + phase[k]) for k in range(3)], -1)
        noise = rng.normal(0, 18, (h, w, 3))
        image = np.clip(128 + 90 * field + noise, 0, 255).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, h - 80), rng.integers(0, w - 80)
            mask[top : top + rng.integers(40, 80), left : left + rng.integers(40, 80)] = rng.integers(1, 21)
        save_rgb(root / "JPEGImages" / f"{image_id}.jpg", image, quality=90)
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", mask)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(f"{i}\n" for i in ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="write the dataset here and keep it (reused when present)")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="conta-bench-check-"))
    try:
        if not (folder / "VOC2012" / "ImageSets").is_dir():
            started = time.perf_counter()
            write_dataset(folder / "VOC2012", args.images)
            print(f"{args.images} pairs written in {time.perf_counter() - started:.1f} s", flush=True)
        jpegs = list((folder / "VOC2012" / "JPEGImages").iterdir())
        print(f"{len(jpegs)} images, {sum(p.stat().st_size for p in jpegs) / len(jpegs) / 1e3:.0f} kB JPEG each; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        data = DataConfig(dataset="voc12", root=str(folder / "VOC2012"), cache_dir=str(folder / "cache"))
        for _ in range(args.repeat):
            for workers in args.workers:
                started = time.perf_counter()
                report = check_dataset(data, ["train"], workers=workers)
                seconds = time.perf_counter() - started
                assert report.ok, report.text()
                print(f"workers {workers}: {seconds:.2f} s, {len(jpegs) / seconds:.0f} image+mask pairs/s", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
