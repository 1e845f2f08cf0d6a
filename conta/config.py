"""Typed configuration: dataclasses loaded from YAML, with dotted command-line overrides.

Every section is a dataclass; `load_config` checks every key and value against the field types
and each section's `validate()` rules, and errors name the offending key and where it was set:
the YAML file, or the command-line override. The resolved config (`to_dict`) is written next to
every run's outputs.

Sizes are bounded so that a typo fails here rather than as a MemoryError deep in a stage: every
crop, resize and test side lies in [MIN_SIDE, MAX_SIDE] pixels and every scale factor in
(0, MAX_SCALE].
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from conta.errors import ConfigError
from conta.registry import BACKBONES, DATASETS, REFINERS

MIN_SIDE = 16
"""Smallest crop or image side (pixels): the classifier's output stride, below which it has no feature cell."""
MAX_SIDE = 4096
"""Largest crop, resize or image side (pixels): eight times a VOC image; one float32 RGB crop of
4096 x 4096 is 200 MB, where 100000 would need 120 GB."""
MAX_SCALE = 4.0
"""Largest rescaling factor of an augmentation or of multi-scale inference (the references use at most 2)."""


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class PairSpec:
    """Two classes that co-occur and touch (rider on horse): the "object ambiguity" confounder.

    Whenever `classes[0]` is drawn in a confounded split, a `classes[1]` partner is attached to it
    with probability `p`, always in the same relative `placement` (so the CAM learns to spill there).
    """

    classes: list[str] = field(default_factory=list)
    p: float = 0.9
    placement: Literal["on_top", "beside"] = "on_top"

    def validate(self, key: str) -> None:
        _check(len(self.classes) == 2, f"{key}.classes", "must name exactly two classes")
        _check(self.classes[0] != self.classes[1], f"{key}.classes", "must name two different classes")
        _check(0.0 <= self.p <= 1.0, f"{key}.p", "must be in [0, 1]")


@dataclass
class ContextSpec:
    """A class shown on its usual background (boat on water) with probability `p`: the
    "incomplete background" confounder."""

    cls: str = ""
    background: str = ""
    p: float = 0.9

    def validate(self, key: str) -> None:
        _check(bool(self.cls), f"{key}.cls", "must name a class")
        _check(bool(self.background), f"{key}.background", "must name a background")
        _check(0.0 <= self.p <= 1.0, f"{key}.p", "must be in [0, 1]")


@dataclass
class SynthConfig:
    """The embedded synthetic dataset with controlled confounding (see docs/synthetic.md)."""

    # Distinct part markers: 5 shapes x 3 patterns x 7 colours (coprime, so index i -> unique triple).
    MAX_CLASSES: typing.ClassVar[int] = 105

    seed: int = 0
    image_size: int = 128
    n_train: int = 600
    n_val: int = 150
    n_val_deconfounded: int = 150
    classes: list[str] = field(
        default_factory=lambda: ["horse", "person", "boat", "car", "bird", "dog"]
    )
    backgrounds: list[str] = field(default_factory=lambda: ["plain", "water", "grass", "sky"])
    background_weights: list[float] = field(default_factory=list)  # free-draw weights; [] = uniform
    pairs: list[PairSpec] = field(
        default_factory=lambda: [PairSpec(classes=["horse", "person"], p=0.9)]
    )
    contexts: list[ContextSpec] = field(
        default_factory=lambda: [
            ContextSpec(cls="boat", background="water", p=0.9),
            ContextSpec(cls="bird", background="sky", p=0.9),
        ]
    )
    min_objects: int = 1
    max_objects: int = 2
    object_size: list[float] = field(default_factory=lambda: [0.3, 0.55])
    part_fraction: float = 0.15
    shared_body: bool = True
    ignore_border: int = 1
    jpeg_quality: int = 95
    marker_offset: int = 0               # class i wears part marker i + marker_offset (the pretraining world's are disjoint)

    def validate(self, key: str) -> None:
        _check(self.seed >= 0, f"{key}.seed", "must be >= 0")
        _check(self.marker_offset >= 0, f"{key}.marker_offset", "must be >= 0")
        _check(32 <= self.image_size <= MAX_SIDE, f"{key}.image_size", f"must be in [32, {MAX_SIDE}], got {self.image_size}")
        _check(self.n_train > 0, f"{key}.n_train", "must be positive")
        _check(self.n_val >= 0, f"{key}.n_val", "must be >= 0")
        _check(self.n_val_deconfounded >= 0, f"{key}.n_val_deconfounded", "must be >= 0")
        _check(len(set(self.classes)) == len(self.classes) > 0, f"{key}.classes", "must be unique and non-empty")
        _check(len(self.classes) + self.marker_offset <= self.MAX_CLASSES, f"{key}.classes",
               f"at most {self.MAX_CLASSES} distinct part markers: {len(self.classes)} classes from marker {self.marker_offset} do not fit")
        _check(len(set(self.backgrounds)) == len(self.backgrounds) > 0, f"{key}.backgrounds", "must be unique and non-empty")
        from conta.data.synthetic import BACKGROUND_STYLES  # the renderers' names; here, as that module imports this one

        for i, name in enumerate(self.backgrounds):
            _check(name in BACKGROUND_STYLES, f"{key}.backgrounds[{i}]", f"unknown background {name!r} (known: {', '.join(BACKGROUND_STYLES)})")
        if self.background_weights:
            _check(len(self.background_weights) == len(self.backgrounds), f"{key}.background_weights", "needs one weight per background (or [] for uniform)")
            _check(min(self.background_weights) >= 0 and sum(self.background_weights) > 0, f"{key}.background_weights", "must be >= 0 with a positive sum")
        attached: set[tuple[str, str]] = set()
        for i, pair in enumerate(self.pairs):
            for name in pair.classes:
                _check(name in self.classes, f"{key}.pairs[{i}].classes", f"unknown class {name!r}")
            slot = (pair.classes[0], pair.placement)
            _check(slot not in attached, f"{key}.pairs[{i}].placement", f"{pair.classes[0]!r} already has a partner placed {pair.placement!r}")
            attached.add(slot)
        seen: set[str] = set()
        for i, ctx in enumerate(self.contexts):
            _check(ctx.cls in self.classes, f"{key}.contexts[{i}].cls", f"unknown class {ctx.cls!r}")
            _check(ctx.background in self.backgrounds, f"{key}.contexts[{i}].background", f"unknown background {ctx.background!r}")
            _check(ctx.cls not in seen, f"{key}.contexts[{i}].cls", f"{ctx.cls!r} already has a context")
            seen.add(ctx.cls)
        _check(1 <= self.min_objects <= self.max_objects, f"{key}.min_objects", "need 1 <= min_objects <= max_objects")
        _check(self.max_objects <= len(self.classes), f"{key}.max_objects", "must be <= the number of classes (primary objects have distinct classes)")
        _check(len(self.object_size) == 2 and 0 < self.object_size[0] <= self.object_size[1] <= 1, f"{key}.object_size", "must be [min, max] fractions of the image side")
        _check(0 < self.part_fraction <= 0.5, f"{key}.part_fraction", "must be in (0, 0.5]: the part is the smaller piece")
        _check(self.ignore_border >= 0, f"{key}.ignore_border", "must be >= 0")
        _check(1 <= self.jpeg_quality <= 100, f"{key}.jpeg_quality", "must be in [1, 100]")


@dataclass
class DataConfig:
    dataset: str = "synthetic"           # a name registered in conta.registry.DATASETS (docs/datasets.md)
    root: str = "data/synthetic"
    train_split: str = "train"          # classifier and IRN training
    infer_split: str = "train"          # CAMs, seeds and pseudo-masks are made for these ids
    eval_split: str = "train"           # CAMs / seeds / pseudo-masks are scored here (needs GT)
    val_splits: list[str] = field(default_factory=lambda: ["val", "val_deconfounded"])
    tags_file: str | None = None        # optional CSV/JSON of image-level tags
    class_names: list[str] = field(default_factory=list)  # folder: foreground classes ([] = root/class_names.txt)
    cache_dir: str | None = None        # derived files (tag cache, COCO masks); null = root/.conta_cache or ~/.cache/conta
    # DataLoader workers per process; auto: 0 on the CPU (workers cost more than they save
    # there), on a GPU up to 8, as the node's cores allow (conta.engine.device.loader_workers)
    num_workers: int | Literal["auto"] = "auto"
    synth: SynthConfig = field(default_factory=SynthConfig)

    def validate(self, key: str) -> None:
        DATASETS.check(self.dataset, f"{key}.dataset")
        _check(bool(self.root), f"{key}.root", "must be a path")
        _check(self.num_workers == "auto" or self.num_workers >= 0, f"{key}.num_workers", "must be auto or >= 0")


@dataclass
class BackboneConfig:
    arch: str = "resnet50"               # a registered backbone (conta.registry.BACKBONES): resnet18/34/50/101
    width: int = 64                      # 64 is the standard ResNet; smaller for the CPU demo
    strides: list[int] = field(default_factory=lambda: [2, 2, 2, 1])
    dilations: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    pretrained: str | None = None        # torchvision checkpoint path, "hub", or null = random

    def validate(self, key: str) -> None:
        BACKBONES.check(self.arch, f"{key}.arch")
        _check(self.width >= 4, f"{key}.width", "must be >= 4")
        _check(len(self.strides) == 4 and all(s in (1, 2) for s in self.strides), f"{key}.strides", "must be four values in {1, 2}")
        _check(len(self.dilations) == 4 and all(d >= 1 for d in self.dilations), f"{key}.dilations", "must be four values >= 1")


@dataclass
class CamConfig:
    """Stage 1: the multi-label classifier and its CAMs (IRNet's train_cam/make_cam/eval_cam).

    crop_size and both resize_long sides lie in [MIN_SIDE, MAX_SIDE] = [16, 4096] pixels, scales
    in (0, 4].
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    batch_size: int = 16
    epochs: int = 5
    lr: float = 0.1
    head_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.0                # the reference's effective value: see docs
    poly_power: float = 0.9
    crop_size: int = 512
    resize_long: list[int] = field(default_factory=lambda: [320, 640])
    scales: list[float] = field(default_factory=lambda: [1.0, 0.5, 1.5, 2.0])
    flip: bool = True
    eval_threshold: float = 0.15
    sweep: list[float] = field(default_factory=lambda: [0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45, 0.50])
    # full-resolution CAMs (evaluation, seeds): "direct" fuses each scale's map at full size and
    # stores it (IRNet); "upsampled" derives them from the stride-4 CAM and stores nothing more
    high_res: Literal["direct", "upsampled"] = "direct"
    log_every: int = 20                  # training steps between loss read-backs (progress bar, NaN check)

    def validate(self, key: str) -> None:
        _positive(self, key, "batch_size", "epochs", "lr", "log_every")
        _side(self, key, "crop_size")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _check(len(self.resize_long) == 2 and self.resize_long[0] <= self.resize_long[1], f"{key}.resize_long", "must be [min, max] long-side lengths")
        _sides(self.resize_long, f"{key}.resize_long")
        _check(len(self.scales) > 0, f"{key}.scales", "must not be empty")
        _scales(self.scales, f"{key}.scales")
        _check(0 < self.eval_threshold < 1, f"{key}.eval_threshold", "must be in (0, 1)")


@dataclass
class CrfConfig:
    """Dense CRF parameters (pydensecrf conventions)."""

    enabled: bool = True
    iterations: int = 10
    gt_prob: float = 0.7                 # only for label unaries
    pos_xy_std: float = 3.0
    pos_w: float = 3.0
    bi_xy_std: float = 50.0
    bi_rgb_std: float = 5.0
    bi_w: float = 10.0
    # the colours the bilateral term compares (conta.ops.crf.crf_colours): "rgb" as IRNet reads
    # images, "bgr" as deeplab-pytorch's cv2 does, "bgr_mean_wrapped" its main.py crf exactly
    image: Literal["rgb", "bgr", "bgr_mean_wrapped"] = "rgb"

    def validate(self, key: str) -> None:
        _positive(self, key, "iterations", "pos_xy_std", "bi_xy_std", "bi_rgb_std")
        _check(0 < self.gt_prob < 1, f"{key}.gt_prob", "must be in (0, 1)")


@dataclass
class IrLabelConfig:
    """Stage 2: CAMs to seed labels (fg / bg / ignore)."""

    fg_threshold: float = 0.30
    bg_threshold: float = 0.05
    refiner: str = "crf"                 # a registered seed refiner (conta.registry.REFINERS): crf, none
    crf: CrfConfig = field(default_factory=CrfConfig)
    workers: int = 0                     # CPU processes; 0 = one per core

    def validate(self, key: str) -> None:
        REFINERS.check(self.refiner, f"{key}.refiner")
        _check(0 < self.fg_threshold < 1, f"{key}.fg_threshold", f"must be in (0, 1), got {self.fg_threshold:g}")
        _check(0 < self.bg_threshold < 1, f"{key}.bg_threshold", f"must be in (0, 1), got {self.bg_threshold:g}")
        _check(self.bg_threshold < self.fg_threshold, f"{key}.bg_threshold",
               f"must be below {key}.fg_threshold ({self.fg_threshold:g}), got {self.bg_threshold:g}")
        _check(self.workers >= 0, f"{key}.workers", "must be >= 0")


@dataclass
class IrnConfig:
    """Stage 3: the inter-pixel relation network (boundary + displacement).

    crop_size lies in [16, 4096] pixels (and is a multiple of 4), scale_range in (0, 4].
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    batch_size: int = 32
    epochs: int = 3
    lr: float = 0.1
    displacement_lr_mult: float = 10.0
    weight_decay: float = 1e-4
    momentum: float = 0.0
    poly_power: float = 0.9
    crop_size: int = 512
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    radius: int = 10
    # The displacement branch feeds only IRNet's instance step, which CONTA skips; false leaves it
    # out (the boundaries, hence the pseudo-masks, do not depend on it) and saves its cost.
    displacement: bool = True
    log_every: int = 20                  # training steps between loss read-backs (progress bar, NaN check)

    def validate(self, key: str) -> None:
        _positive(self, key, "batch_size", "epochs", "lr", "radius", "log_every")
        _side(self, key, "crop_size")
        _check(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _check(len(self.scale_range) == 2 and self.scale_range[0] <= self.scale_range[1], f"{key}.scale_range", "must be [min, max]")
        _scales(self.scale_range, f"{key}.scale_range")


@dataclass
class PseudoMaskConfig:
    """Stage 4: random walk on the boundary affinities, then thresholding."""

    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    walk: Literal["chebyshev", "power"] = "chebyshev"  # the 2^exp_times steps as a truncated expansion (degree 78 at 2^8), 2x faster and nearer the exact walk; power: the steps one by one
    irn_amp: Literal["fp32", "bf16"] = "fp32"  # autocast of the IRN's boundary pass; bf16: 2.4x faster ResNet-50 at 512 px on CPUs with AVX512-BF16, boundaries at bf16 rounding (docs/benchmarks.md)
    bg_threshold: float = 0.25
    workers: int = 0                     # CPU processes when run.device is the CPU; 0 = one per core

    def validate(self, key: str) -> None:
        _positive(self, key, "beta")
        _check(self.radius >= 2, f"{key}.radius", "must be >= 2 (radius 1 has no neighbours)")
        _check(self.exp_times >= 0, f"{key}.exp_times", "must be >= 0")
        _check(0 < self.bg_threshold < 1, f"{key}.bg_threshold", "must be in (0, 1)")
        _check(self.workers >= 0, f"{key}.workers", "must be >= 0")


@dataclass
class SegConfig:
    """Stage 5: DeepLab (v2 by default: ResNet-101, ASPP, multi-scale) trained on pseudo-masks.

    crop_size and test_size lie in [16, 4096] pixels, scales in (0, 4].

    v3 and v3+ (docs/segmentation.md) train their BN; output_stride, multi_grid and sync_bn are theirs.
    """

    model: Literal["deeplabv2", "deeplabv3", "deeplabv3plus"] = "deeplabv2"
    arch: str = "resnet101"              # a registered backbone (conta.registry.BACKBONES)
    width: int = 64
    pretrained: str | None = None        # ImageNet torchvision file, "hub", or a converted DeepLab checkpoint
    normalization: Literal["imagenet", "caffe"] = "imagenet"
    atrous_rates: list[int] = field(default_factory=lambda: [6, 12, 18, 24])  # v2's; v3/v3+: 6/12/18 at stride 16, x2 at 8
    output_stride: int = 16              # v3/v3+: 16 or 8 (v2 is always 8)
    multi_grid: list[int] = field(default_factory=list)  # v3/v3+: layer4 dilation multipliers, one per block ([] = none)
    sync_bn: bool = True                 # v3/v3+ under DDP: BN statistics over all processes
    msc_scales: list[float] = field(default_factory=lambda: [0.5, 0.75])
    label_source: Literal["pseudo_mask", "gt"] = "pseudo_mask"
    batch_size: int = 5
    iter_size: int = 2
    iterations: int = 20000
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    lr_decay_every: int = 10
    scales: list[float] = field(default_factory=lambda: [0.5, 0.75, 1.0, 1.25, 1.5])
    crop_size: int = 321
    test_size: int = 513                 # long side for the single-image demo
    log_every: int = 100
    image_log_every: int = 500
    save_every: int = 5000
    average_loss: int = 20
    crf: CrfConfig = field(
        default_factory=lambda: CrfConfig(pos_xy_std=1.0, pos_w=3.0, bi_xy_std=67.0, bi_rgb_std=3.0, bi_w=4.0,
                                          image="bgr")
    )

    def validate(self, key: str) -> None:
        BACKBONES.check(self.arch, f"{key}.arch")
        _positive(self, key, "batch_size", "iter_size", "iterations", "lr", "lr_decay_every", "log_every", "save_every", "average_loss")
        _side(self, key, "crop_size", "test_size")
        _check(len(self.atrous_rates) > 0 and all(r > 0 for r in self.atrous_rates), f"{key}.atrous_rates", "must be positive")
        _check(self.output_stride in (8, 16), f"{key}.output_stride", "must be 8 or 16")
        _check(all(g >= 1 for g in self.multi_grid), f"{key}.multi_grid", "must be dilation multipliers >= 1")
        _check(all(0 < s < 1 for s in self.msc_scales), f"{key}.msc_scales", "extra input scales must be in (0, 1)")
        _check(len(self.scales) > 0, f"{key}.scales", "must not be empty")
        _scales(self.scales, f"{key}.scales")


@dataclass
class ContaConfig:
    """The causal intervention and its rounds (see docs/conta.md for each choice)."""

    rounds: int = 3                      # T: rounds 1..T follow the baseline round 0
    mode: Literal["conta", "baseline", "mask"] = "conta"
    confounder_size: list[int] = field(default_factory=lambda: [32, 32])
    confounder_source: Literal["seg", "pseudo_mask"] = "seg"
    prior: Literal["uniform", "frequency"] = "uniform"
    include_background: bool = False
    inject_at: Literal["image", "stage3", "head"] = "stage3"
    unit_prior: bool = False             # rescale P(c) to mean 1 so M spans a mask's range
    vary_seed: bool = True               # round t trains with seed run.seed + t

    def validate(self, key: str) -> None:
        _check(self.rounds >= 0, f"{key}.rounds", "must be >= 0")
        _check(len(self.confounder_size) == 2 and 0 < min(self.confounder_size) and max(self.confounder_size) <= MAX_SIDE,
               f"{key}.confounder_size", f"must be [h, w] in [1, {MAX_SIDE}]")


@dataclass
class PretrainConfig:
    """`conta pretrain`: the stand-in for ImageNet, a multi-label classification task on a synthetic
    world disjoint from the demo's (other part markers, every background, its own seed), drawn on
    the fly (docs/pretraining.md). Trainable BN, SGD + Nesterov momentum, poly decay."""

    arch: str = "resnet18"               # a registered backbone (conta.registry.BACKBONES)
    width: int = 16
    world_seed: int = 1000               # the demo's data use seed 0
    n_classes: int = 99                  # part markers 6..104: the default classes wear 0..5
    image_size: int = 128
    min_objects: int = 1
    max_objects: int = 3
    object_size: list[float] = field(default_factory=lambda: [0.2, 0.6])
    images_per_epoch: int = 4096         # every image is new: epoch e draws images e*N .. e*N+N-1
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1.0e-4
    poly_power: float = 0.9
    val_images: int = 1000               # held-out images of the same world (another split)
    workers: int = 1                     # processes drawing images beside the training process

    def validate(self, key: str) -> None:
        BACKBONES.check(self.arch, f"{key}.arch")
        _positive(self, key, "width", "n_classes", "images_per_epoch", "epochs", "batch_size", "lr", "val_images")
        _side(self, key, "image_size")
        _check(self.n_classes + len(SynthConfig().classes) <= SynthConfig.MAX_CLASSES, f"{key}.n_classes",
               f"at most {SynthConfig.MAX_CLASSES - len(SynthConfig().classes)}: the markers of the default classes are never used")
        _check(1 <= self.min_objects <= self.max_objects <= self.n_classes, f"{key}.min_objects", "need 1 <= min_objects <= max_objects <= n_classes")
        _check(len(self.object_size) == 2 and 0 < self.object_size[0] <= self.object_size[1] <= 1, f"{key}.object_size", "must be [min, max] fractions of the image side")
        _check(0 <= self.momentum < 1, f"{key}.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(self.workers >= 0, f"{key}.workers", "must be >= 0")


@dataclass
class RunConfig:
    name: str = "demo"
    out_dir: str = "runs"
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    # autocast dtype (fp16 adds loss scaling; CUDA only); auto: bf16 on CUDA GPUs with native bf16
    # (compute capability 8.0+), fp32 elsewhere, so CPU results stay those of fp32
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | Literal["auto"] = "auto"   # NHWC tensors for cuDNN; auto: on with amp on CUDA
    deterministic: bool = False

    def validate(self, key: str) -> None:
        _check(bool(self.name) and "/" not in self.name, f"{key}.name", "must be a plain folder name")


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cam: CamConfig = field(default_factory=CamConfig)
    ir_label: IrLabelConfig = field(default_factory=IrLabelConfig)
    irn: IrnConfig = field(default_factory=IrnConfig)
    pseudo_mask: PseudoMaskConfig = field(default_factory=PseudoMaskConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    conta: ContaConfig = field(default_factory=ContaConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name


# ----------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML file (or the defaults when `path` is None) and apply `key.sub=value` overrides."""
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
    set_by = {_apply_override(raw, item): item for item in overrides}
    try:
        cfg = _build(Config, raw, "")
        _validate_tree(cfg, "")
    except ConfigError as exc:
        item = _override_of(exc.key, set_by)
        where = f"command-line override {item}" if item is not None else source
        raise ConfigError(f"{where}: {exc}", key=exc.key) from None
    return cfg


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's many-line message as one line: where, and what."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _override_of(key: str | None, set_by: dict[str, str]) -> str | None:
    """The last override that set `key`, a section holding it, or a key inside it (None: the file did)."""
    if key is None:
        return None
    hits = [item for dotted, item in set_by.items()
            if key == dotted or key.startswith((f"{dotted}.", f"{dotted}[")) or dotted.startswith(f"{key}.")]
    return hits[-1] if hits else None


def to_dict(cfg: Any) -> Any:
    """The config as plain YAML-able data (what `config.yaml` in a run directory holds)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def replace(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with dotted overrides applied and re-validated."""
    raw = to_dict(cfg)
    for item in overrides:
        _apply_override(raw, item)
    try:
        new = _build(Config, raw, "")
        _validate_tree(new, "")
    except ConfigError as exc:
        raise ConfigError(f"<override>: {exc}") from None
    return new


def _apply_override(raw: dict[str, Any], item: str) -> str:
    """Set one `key.sub=value` in the raw mapping; returns the dotted key."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.subkey=value")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key component")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty `section:` in the YAML file
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value
    return ".".join(parts)


def _build(cls: type, raw: Any, key: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{key or 'top level'}: expected a mapping, got {type(raw).__name__}", key=key or None)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(sorted(names))})", key=f"{where}{unknown[0]}")
    kwargs = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, value in raw.items():
        factory = fields[name].default_factory
        if dataclasses.is_dataclass(hints[name]) and factory is not dataclasses.MISSING and isinstance(value, (dict, type(None))):
            # a partial section starts from the field's own default (seg.crf has other values than CrfConfig())
            value = {**to_dict(factory()), **(value or {})}
        kwargs[name] = _coerce(hints[name], value, f"{key}.{name}" if key else name)
    return cls(**kwargs)


_EXP_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{key}: bad value {value!r}", key=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}", key=key)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}", key=key)
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}", key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}", key=key)
        return value
    if tp is float:
        if isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}", key=key)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}", key=key)
        return value
    raise ConfigError(f"{key}: unsupported type {tp}", key=key)


def _validate_tree(obj: Any, key: str) -> None:
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            _validate_tree(item, f"{key}[{i}]")
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _validate_tree(getattr(obj, f.name), f"{key}.{f.name}" if key else f.name)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}", key=key)


def _positive(section: Any, key: str, *names: str) -> None:
    for name in names:
        _check(getattr(section, name) > 0, f"{key}.{name}", "must be positive")


def _side(section: Any, key: str, *names: str) -> None:
    for name in names:
        _sides([getattr(section, name)], f"{key}.{name}", single=True)


def _sides(values: list[int], key: str, single: bool = False) -> None:
    for i, value in enumerate(values):
        _check(MIN_SIDE <= value <= MAX_SIDE, key if single else f"{key}[{i}]",
               f"must be in [{MIN_SIDE}, {MAX_SIDE}] pixels, got {value}")


def _scales(values: list[float], key: str) -> None:
    for i, value in enumerate(values):
        _check(0 < value <= MAX_SCALE, f"{key}[{i}]", f"must be in (0, {MAX_SCALE:g}], got {value:g}")
