"""`conta pretrain`: the miniature's ImageNet. Trains a backbone on a large synthetic
classification task and writes its weights in torchvision's layout, with their recipe.

The real protocol starts every network from ImageNet weights, which cannot be had offline; the
embedded world mirrors it with a world of its own (`conta.data.synthetic.pretraining_world`):
other classes (part markers the default classes never wear), every background, no confounding,
images drawn on the fly and never written. The demo then loads these weights by the name
`synthetic` exactly as a real run loads an ImageNet file (docs/pretraining.md).
"""

from __future__ import annotations

import hashlib
import io
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from conta import __version__
from conta.config import Config, PretrainConfig, SynthConfig, to_dict
from conta.data.synthetic import draw_image, label_tags, pretraining_world
from conta.data.transforms import normalize, to_chw
from conta.engine.device import resolve_device, seed_everything
from conta.engine.loop import EpochTraining, train_epochs
from conta.engine.sampling import EpochAugmented
from conta.engine.schedule import PolySchedule
from conta.eval.metrics import average_precision
from conta.io import atomic_path, save_json
from conta.models.backbone import create_backbone
from conta.models.classifier import ImageClassifier
from conta.weights.backbone import synthetic_weights_name

Log = Callable[[str], None]
PRETRAIN_STRIDES = (2, 2, 2, 2)  # the standard ImageNet ResNet; every stage may use other strides on the weights
VAL_SPLIT = "val"  # held-out images: the same world, another random stream


class WorldImages(EpochAugmented):
    """Epoch e, index i -> image e * N + i of the pretraining world, drawn when asked and
    flipped at random: every epoch sees new images, and a resumed run draws the same ones."""

    def __init__(self, world: SynthConfig, n: int, seed: int) -> None:
        super().__init__(seed)
        self.world, self.n = world, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        drawn = draw_image(self.world, "train", self.epoch * self.n + index)
        image = drawn.image[:, ::-1] if self.sample_rng(index).random() < 0.5 else drawn.image
        return {"image": torch.from_numpy(to_chw(normalize(image))),
                "label": torch.from_numpy(label_tags(drawn.label, len(self.world.classes)).astype(np.float32))}


def held_out(world: SynthConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` images of the world's other split, as uint8 images and multi-hot tags."""
    drawn = [draw_image(world, VAL_SPLIT, i) for i in range(n)]
    return (np.stack([d.image for d in drawn]),
            np.stack([label_tags(d.label, len(world.classes)) for d in drawn]).astype(np.float32))


def classification_metrics(scores: np.ndarray, tags: np.ndarray) -> dict[str, float]:
    """Held-out quality: mAP over classes, and top-k precision (an image with k tags: the share
    of them among its k best scores), the multi-label form of top-1 accuracy."""
    k = tags.sum(axis=1).astype(int)
    ranked = np.argsort(-scores, axis=1, kind="stable")
    hits = [tags[i, ranked[i, :k[i]]].sum() for i in range(len(tags))]
    return {"mAP": float(np.nanmean(average_precision(scores, tags))),
            "top_k_precision": float(np.sum(hits) / max(k.sum(), 1))}


def _validation(images: np.ndarray, tags: np.ndarray, device: torch.device, batch: int = 100) -> Callable:
    def validate(model: torch.nn.Module) -> dict[str, float]:
        scores = []
        for start in range(0, len(images), batch):
            x = np.stack([to_chw(normalize(im)) for im in images[start:start + batch]])
            scores.append(model(torch.from_numpy(x).to(device)).float().cpu().numpy())
        return classification_metrics(np.concatenate(scores), tags)

    return validate


def multilabel_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Softmax cross-entropy against the tags spread evenly (k tags: 1/k each), the loss of
    large-scale multi-label pretraining (Mahajan et al., ECCV 2018). Per-class sigmoids averaged
    over 99 classes left the network at the class prior for two epochs (docs/pretraining.md)."""
    target = batch["label"] / batch["label"].sum(dim=1, keepdim=True).clamp(min=1)
    return F.cross_entropy(model(batch["image"]).float(), target), {}


def weights_bytes(model: ImageClassifier) -> bytes:
    """The backbone's state dict in torchvision's key layout, floats stored as fp16.

    Serialised in memory, so the bytes (and the sha256 recorded beside them) do not depend on
    the temporary file name a write goes through.
    """
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.backbone.state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def pretrain(cfg: Config, out_dir: Path | None = None, command: str = "conta pretrain", log: Log = print) -> Path:
    """Train `cfg.pretrain` and write <out_dir>/<name>.pt and its recipe <name>.json; returns the
    weights path. Checkpoints every epoch under the run directory and resumes from there."""
    pre: PretrainConfig = cfg.pretrain
    run_dir = cfg.run_dir
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    name = synthetic_weights_name(pre.arch, pre.width)
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed, cfg.run.deterministic)
    world = pretraining_world(pre)
    log(f"pretrain: {pre.arch} width {pre.width}, {pre.n_classes} classes (part markers "
        f"{world.marker_offset}..{world.marker_offset + pre.n_classes - 1}), {len(world.backgrounds)} backgrounds, "
        f"world seed {pre.world_seed}; {pre.epochs} epochs of {pre.images_per_epoch} new images")
    model = ImageClassifier(create_backbone(pre.arch, pre.width, PRETRAIN_STRIDES), pre.n_classes).to(device)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]  # BN and biases, as usual
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": pre.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=pre.lr, momentum=pre.momentum, nesterov=pre.momentum > 0)
    steps = pre.epochs * (pre.images_per_epoch // pre.batch_size)
    schedule = PolySchedule(optimizer, pre.lr, steps, pre.poly_power)
    images, tags = held_out(world, pre.val_images)
    started = time.perf_counter()
    history = train_epochs(
        model, optimizer, schedule, WorldImages(world, pre.images_per_epoch, cfg.run.seed), multilabel_loss,
        EpochTraining(pre.epochs, pre.batch_size, cfg.run.seed, pre.workers),
        run_dir / "checkpoint.pt", device, "pretrain", validate=_validation(images, tags, device), log=log,
    )
    final = {k[len("val_"):]: v for k, v in history[-1].items() if k.startswith("val_")}
    blob = weights_bytes(model.cpu())
    path = out_dir / f"{name}.pt"
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
    save_json(out_dir / f"{name}.json", {
        "file": path.name, "sha256": hashlib.sha256(blob).hexdigest(),
        "command": command,
        "seed": cfg.run.seed, "pretrain": to_dict(pre), "held_out": final,
        "held_out_images": pre.val_images, "history": history,
        "made_with": {"conta": __version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "device": str(device), "machine": platform.machine()},
        "train_seconds_this_session": round(time.perf_counter() - started, 1),
    })
    log(f"pretrain: held-out mAP {final['mAP']:.3f}, top-k precision {final['top_k_precision']:.3f}; wrote {path}")
    return path
