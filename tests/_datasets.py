"""Tiny real-format fixtures for the VOC 2012 + SBD, COCO 2014 and folder readers, and the one CAM
training step every reader must feed.

    make_voc_sbd(tmp)  VOCdevkit/VOC2012 (JPEGs, XML, SegmentationClass for train + val only,
                       SegmentationClassAug for all, official-style train/val lists) and SBD's
                       benchmark_RELEASE/dataset/{train,val}.txt
    make_coco(tmp)     train2014/, val2014/ JPEGs and annotations/instances_*.json with a polygon,
                       a compressed RLE, an uncompressed crowd RLE, a crowd-only and an empty image
    make_folder(tmp)   images/ (.jpg, .png, .jpeg), tags.csv, class_names.txt, masks/ for two
                       images, splits/val.txt
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _fixtures import VocFixture, make_voc_dataset, write_voc_xml

from conta.config import CamConfig
from conta.data.palette import voc_palette
from conta.data.voc import VOC_CLASSES, VOCLayoutDataset
from conta.io import save_label_png, save_rgb

# -- VOC 2012 + SBD ------------------------------------------------------------------------------

VOC_TRAIN, VOC_VAL = ["img_000", "img_001"], ["img_004", "img_005"]
SBD_TRAIN, SBD_VAL = ["img_001", "img_002", "img_004"], ["img_003"]   # SBD train holds a VOC val id
TRAIN_AUG = ["img_000", "img_001", "img_002", "img_003"]              # (SBD ∪ VOC train) − VOC val


@dataclass
class VocSbd:
    devkit: Path     # VOCdevkit/
    root: Path       # VOCdevkit/VOC2012
    sbd: Path        # benchmark_RELEASE/
    voc: VocFixture


def make_voc_sbd(tmp: Path) -> VocSbd:
    """Six images of VOC classes 1..3; img_002's XML also names a bottle the mask does not show."""
    root = tmp / "VOCdevkit" / "VOC2012"
    voc = make_voc_dataset(root, n=6, classes=VOC_CLASSES[:3], class_names_file=False,
                           splits={"train": VOC_TRAIN, "val": VOC_VAL})
    for image_id in voc.ids:
        save_label_png(root / "SegmentationClassAug" / f"{image_id}.png", voc.masks[image_id], voc_palette())
        if image_id not in VOC_TRAIN + VOC_VAL:
            (root / "SegmentationClass" / f"{image_id}.png").unlink()  # SBD-only images: no official mask
        objects = voc.tags[image_id] + (["bottle"] if image_id == "img_002" else [])
        write_voc_xml(root / "Annotations" / f"{image_id}.xml", objects, parts={o: ["head"] for o in objects})
    sbd = tmp / "benchmark_RELEASE"
    (sbd / "dataset").mkdir(parents=True)
    (sbd / "dataset" / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (sbd / "dataset" / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    return VocSbd(tmp / "VOCdevkit", root, sbd, voc)


# -- COCO 2014 -----------------------------------------------------------------------------------

COCO_SIZE = (40, 48)  # height, width
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 17, "name": "cat"}]
COCO_CLASSES = ["person", "cat", "dog"]   # by category id: 1, 17, 18


def coco_file(split: str, image_id: int) -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(COCO_SIZE, np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: run lengths over the column-major pixels, starting with a zero run."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def make_coco(tmp: Path) -> Path:
    """train2014: image 1 (a large person polygon, a small dog RLE on it, a crowd of people
    overlapping the person's corner), 2 (crowd only), 3 (no annotation), 4 (a cat);
    val2014: image 5 (a dog), 6 (no annotation)."""
    root = tmp / "coco"
    anns = {
        "train2014": [
            (1, 1, box_polygon(4, 4, 40, 36), 0),
            (2, 18, compressed_rle(box_mask(20, 10, 30, 20)), 0),
            (3, 1, uncompressed_rle(box_mask(0, 28, 12, 40)), 1),
            (4, 1, uncompressed_rle(box_mask(10, 10, 30, 30)), 1),   # image 2, crowd only
            (5, 17, box_polygon(8, 8, 24, 24), 0),                   # image 4
        ],
        "val2014": [(6, 18, box_polygon(10, 5, 30, 25), 0)],
    }
    owner = {1: 1, 2: 1, 3: 1, 4: 2, 5: 4, 6: 5}
    images = {"train2014": [1, 2, 3, 4], "val2014": [5, 6]}
    rng = np.random.default_rng(0)
    for split, ids in images.items():
        for image_id in ids:
            pixels = rng.integers(0, 255, (*COCO_SIZE, 3), dtype=np.uint8)
            save_rgb(root / split / coco_file(split, image_id), pixels)
        doc = {
            "images": [{"id": i, "file_name": coco_file(split, i), "height": COCO_SIZE[0], "width": COCO_SIZE[1]}
                       for i in ids],
            "annotations": [{"id": a, "image_id": owner[a], "category_id": c, "segmentation": seg,
                             "iscrowd": crowd, "area": 0.0, "bbox": [0, 0, 1, 1]}
                            for a, c, seg, crowd in anns[split]],
            "categories": CATEGORIES,
        }
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
    return root


# -- a folder of tagged images --------------------------------------------------------------------


def make_folder(tmp: Path) -> Path:
    root = tmp / "mydata"
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.png", "c.jpeg"):
        save_rgb(root / "images" / name, rng.integers(0, 255, (30, 36, 3), dtype=np.uint8))
    (root / "tags.csv").write_text("id,tags\na,cat;dog\nb,dog\nc,cat\n")
    (root / "class_names.txt").write_text("cat\ndog\n")
    for image_id, value in (("a", 1), ("b", 2)):
        mask = np.zeros((30, 36), np.uint8)
        mask[5:20, 5:20] = value
        save_label_png(root / "masks" / f"{image_id}.png", mask, voc_palette())
    (root / "splits").mkdir()
    (root / "splits" / "val.txt").write_text("a\nb\n")
    return root


# -- the CAM step ---------------------------------------------------------------------------------


def cam_training_step(dataset: VOCLayoutDataset) -> float:
    """One SGD step of the stage-1 classifier (resnet18, width 8) on the first batch of `dataset`;
    checks the trainable weights moved and returns the loss."""
    from conta.stages.cam import CamTrainSet, build_cam_net, classification_loss

    torch.manual_seed(0)
    cam = CamConfig(batch_size=2, crop_size=32, resize_long=[32, 48])
    batch = next(iter(torch.utils.data.DataLoader(CamTrainSet(dataset, cam, seed=0), batch_size=2)))
    model = build_cam_net({"arch": "resnet18", "width": 8, "strides": [2, 2, 2, 1], "dilations": [1, 1, 1, 1],
                           "n_classes": dataset.n_classes, "context_at": None})
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    loss, _ = classification_loss(model.train(), batch)
    loss.backward()
    optimizer.step()
    assert batch["label"].shape == (2, dataset.n_classes) and torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable))
    return float(loss.detach())
