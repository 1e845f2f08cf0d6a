"""The embedded default dataset: context-confounded synthetic images with exact masks, VOC layout.

Why synthetic: CONTA claims to fix three errors that context causes in CAMs (incomplete foreground,
object ambiguity, incomplete background). On real data their strength is unknown and fixed; here
each one is a config knob, its strength is measured on the written data (`synth.json`), and the
`val_deconfounded` split breaks every link, so a gain can be traced to the confounding it removes.
Everything is written in PASCAL VOC layout so the real-data code path reads it unchanged.

Each object is a large body whose look is shared by all classes plus a small class-specific part
(shape + pattern + colour): the part is enough to classify, the body is needed for a full mask.
See docs/synthetic.md for the generative process, the defaults and the confounding table.
"""

from __future__ import annotations

import colorsys
import functools
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conta.config import DataConfig, PretrainConfig, SynthConfig, to_dict
from conta.data.build import register_dataset
from conta.data.palette import IGNORE_INDEX, voc_palette
from conta.data.voc import VOCLayoutDataset
from conta.errors import DataError
from conta.io import load_json, save_json, save_label_png, save_rgb, save_text
from conta.registry import DATASETS

GENERATOR_VERSION = 1  # bump whenever drawing changes, so stale datasets are regenerated
SPLITS: dict[str, str] = {"train": "train", "val": "val", "val_deconfounded": "vdc"}  # split -> id prefix
CONFOUNDED_SPLITS = ("train", "val")  # val_deconfounded draws with every pair/context link off
SUMMARY_FILE = "synth.json"
_INCOMPLETE_FILE = ".synth_incomplete.json"  # present while a generation is under way
_ID_PATTERN = re.compile(r"^(train|val|vdc)_\d{5,}$")

_SHAPES = ("disc", "square", "triangle", "diamond", "cross")
_SHAPE_AREA = {"disc": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}  # of (2h)^2
_PATTERNS = ("solid", "stripes", "checker")
# Fully saturated and bright, unlike bodies (saturation <= 0.7, value <= 0.8).
_PART_COLOURS = ((255, 225, 0), (0, 225, 255), (255, 0, 220), (90, 255, 0), (255, 255, 255), (0, 70, 255), (255, 40, 0))
_PART_DARK = np.array((20, 20, 20), np.float32)
_BODY_TEXTURES = ("plain", "stripes", "noise")
_PARTNER_SCALE = {"on_top": 0.6, "beside": 0.8}  # partner size relative to the object it attaches to


# ----------------------------------------------------------------------------------------------
# Public results


@dataclass(frozen=True)
class PartMarker:
    """The discriminative part of a class: what a classifier can learn it from."""

    shape: str
    pattern: str
    colour: tuple[int, int, int]


@dataclass
class SynthImage:
    """One drawn image: what is written to disk, plus the part map for diagnostics."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    label: np.ndarray  # H x W uint8: 0 background, i+1 class i, 255 border band
    parts: np.ndarray  # H x W uint8: the label on visible discriminative-part pixels, else 0 (255 band kept)
    background: str


@dataclass
class PairRate:
    """Measured co-occurrence of a pair in one split (tags read from the written masks)."""

    first: str
    partner: str
    p: float  # the configured link strength (0 in val_deconfounded)
    n_first: int  # images tagged with `first`
    partner_given_first: float | None  # P(partner | first); None without such images
    first_given_partner: float | None  # P(first | partner)
    independent: float  # P(partner | first) with every link off, from the sampling process


@dataclass
class ContextRate:
    """Measured class/background association in one split."""

    cls: str
    background: str
    p: float  # the configured link strength (0 in val_deconfounded)
    n_class: int  # images tagged with `cls`
    background_given_class: float | None  # P(background | cls)
    background_given_other: float | None  # P(background | not cls): the context without its class
    background_rate: float  # P(background) over the split
    independent: float  # P(background | cls) with every link off (the free-draw weight)


@dataclass
class SplitStats:
    images: int
    class_images: dict[str, int]  # images tagged with each class
    background_images: dict[str, int]
    pairs: list[PairRate]
    contexts: list[ContextRate]


@dataclass
class SynthSummary:
    """What `generate` wrote: per-split counts and the measured confounding table."""

    root: Path
    generated: bool  # False when a complete dataset with the same config was already there
    classes: list[str]
    splits: dict[str, SplitStats]

    def describe(self) -> str:
        """The confounding table as plain text, for the CLI and logs."""
        lines = [f"synthetic dataset at {self.root} ({'generated' if self.generated else 'up to date'})"]
        for split, st in self.splits.items():
            lines.append(f"  {split}: {st.images} images; per class " + ", ".join(f"{k} {v}" for k, v in st.class_images.items()))
            for pr in st.pairs:
                lines.append(f"    pair {pr.first}+{pr.partner} (p={pr.p:g}): P({pr.partner}|{pr.first})={_fmt(pr.partner_given_first)}"
                             f" P({pr.first}|{pr.partner})={_fmt(pr.first_given_partner)} independent={pr.independent:.2f}")
            for cr in st.contexts:
                lines.append(f"    context {cr.cls}/{cr.background} (p={cr.p:g}): P({cr.background}|{cr.cls})={_fmt(cr.background_given_class)}"
                             f" P({cr.background}|not {cr.cls})={_fmt(cr.background_given_other)} P({cr.background})={cr.background_rate:.2f}"
                             f" independent={cr.independent:.2f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "splits": {k: asdict(v) for k, v in self.splits.items()}}

    @classmethod
    def from_dict(cls, root: Path, data: dict[str, Any], generated: bool) -> SynthSummary:
        splits = {
            name: SplitStats(
                images=st["images"], class_images=st["class_images"], background_images=st["background_images"],
                pairs=[PairRate(**p) for p in st["pairs"]], contexts=[ContextRate(**c) for c in st["contexts"]],
            )
            for name, st in data["splits"].items()
        }
        return cls(root=Path(root), generated=generated, classes=list(data["classes"]), splits=splits)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def part_marker(index: int) -> PartMarker:
    """Class `index`'s marker; 5, 3 and 7 are coprime, so the first 105 classes get distinct triples."""
    return PartMarker(_SHAPES[index % 5], _PATTERNS[index % 3], _PART_COLOURS[index % 7])


def label_tags(label: np.ndarray, n_classes: int) -> np.ndarray:
    """Multi-hot (bool) tags of the classes whose pixels a label map shows: how tags are read."""
    tags = np.zeros(n_classes, bool)
    tags[np.unique(label[(label > 0) & (label != IGNORE_INDEX)]) - 1] = True
    return tags


@dataclass(frozen=True)
class Confounder:
    """A known confounder to probe: class `source`'s CAM mass on label value `target`, on images
    tagged with `source` (and with `partner`, when given); `conta.eval.metrics.Leakage` measures it."""

    name: str
    source: int
    target: int
    partner: int | None = None


def known_confounders(cfg: SynthConfig, class_names: list[str]) -> list[Confounder]:
    """The confounders the generator builds in: each co-occurring pair in both directions (onto the
    partner's pixels) and each class with its context (onto background); indices into `class_names`."""
    index = {name: k for k, name in enumerate(class_names)}
    probes = []
    for pair in cfg.pairs:
        a, b = (index[c] for c in pair.classes)
        probes += [Confounder(f"{pair.classes[0]} -> {pair.classes[1]}", a, b + 1, b),
                   Confounder(f"{pair.classes[1]} -> {pair.classes[0]}", b, a + 1, a)]
    for ctx in cfg.contexts:
        probes.append(Confounder(f"{ctx.cls} -> background ({ctx.background} context)", index[ctx.cls], 0))
    return probes


def image_ids(cfg: SynthConfig, split: str) -> list[str]:
    n = {"train": cfg.n_train, "val": cfg.n_val, "val_deconfounded": cfg.n_val_deconfounded}[split]
    return [f"{SPLITS[split]}_{i:05d}" for i in range(n)]


# ----------------------------------------------------------------------------------------------
# Writing


def generate(cfg: SynthConfig, out: Path, *, progress: bool = False) -> SynthSummary:
    """Write the dataset under `out` in VOC layout and return the measured confounding table.

    A complete dataset with the same config (and generator version) is kept as it is. An
    interrupted run with the same config resumes: every image is a pure function of
    (config, split, index), so files already written are kept and only missing ones are drawn
    to disk (all are drawn in memory, which is cheap, to measure the table).
    """
    out = Path(out)
    key = {"generator_version": GENERATOR_VERSION, "config": to_dict(cfg)}
    done, marker = out / SUMMARY_FILE, out / _INCOMPLETE_FILE
    if not done.is_file() and not marker.is_file():
        _refuse_foreign(out)
    if done.is_file():
        stored = load_json(done)
        if {k: stored.get(k) for k in key} == key:
            return SynthSummary.from_dict(out, stored["summary"], generated=False)
        done.unlink(missing_ok=True)
    resume = marker.is_file() and load_json(marker) == key
    if not resume:
        _remove_generated(out)
        save_json(marker, key)

    palette = voc_palette()
    splits = {s: ids for s in SPLITS if (ids := image_ids(cfg, s))}  # an empty split gets no list
    bar = _progress(sum(map(len, splits.values())), progress)
    stats: dict[str, SplitStats] = {}
    backgrounds: dict[str, str] = {}
    for split, ids in splits.items():
        tags = np.zeros((len(ids), len(cfg.classes)), bool)
        bgs = np.zeros(len(ids), np.int64)
        for i, image_id in enumerate(ids):
            drawn = draw_image(cfg, split, i)
            tags[i] = label_tags(drawn.label, len(cfg.classes))
            bgs[i] = cfg.backgrounds.index(drawn.background)
            backgrounds[image_id] = drawn.background
            paths = (out / "JPEGImages" / f"{image_id}.jpg", out / "SegmentationClass" / f"{image_id}.png",
                     out / "SynthParts" / f"{image_id}.png")
            if not (resume and all(p.is_file() for p in paths)):
                save_rgb(paths[0], drawn.image, quality=cfg.jpeg_quality)
                save_label_png(paths[1], drawn.label, palette)
                save_label_png(paths[2], drawn.parts, palette)
            bar(1)
        stats[split] = _split_stats(cfg, split, tags, bgs)
        save_text(out / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    bar(0, close=True)
    save_text(out / "class_names.txt", "".join(f"{c}\n" for c in cfg.classes))
    summary = SynthSummary(root=out, generated=True, classes=list(cfg.classes), splits=stats)
    save_json(done, {**key, "summary": summary.to_dict(), "image_backgrounds": backgrounds})
    marker.unlink(missing_ok=True)
    return summary


def _refuse_foreign(out: Path) -> None:
    """A folder that already holds a dataset this generator did not write (no synth.json) is
    someone's data: writing there would replace its split lists. Usually data.dataset is left at
    its default, synthetic, for a real dataset's root."""
    held = [f"{sub}/" for sub in ("JPEGImages", "ImageSets", "SegmentationClass") if (out / sub).is_dir()]
    if held:
        others = " or ".join(name for name in DATASETS.names() if name != "synthetic")
        raise DataError(out, f"holds a dataset that conta did not generate ({', '.join(held)} but no "
                        f"{SUMMARY_FILE}); data.dataset is 'synthetic', so set it to {others}, "
                        "or point data.root at an empty folder")


def _remove_generated(out: Path) -> None:
    """Drop files a previous config wrote (ids or splits it had that this one lacks must not linger)."""
    for split in SPLITS:
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").unlink(missing_ok=True)
    for sub in ("JPEGImages", "SegmentationClass", "SynthParts"):
        folder = out / sub
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix in (".jpg", ".png") and _ID_PATTERN.match(path.stem):
                    path.unlink()


def _progress(total: int, enabled: bool) -> Callable[..., None]:
    if not enabled:
        return lambda n, close=False: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="synthetic", unit="img")
    return lambda n, close=False: bar.close() if close else bar.update(n)


def _prepare(data: DataConfig, log: Callable[[str], None]) -> None:
    """Generate the dataset at data.root when it is missing or stale."""
    if generate(data.synth, Path(data.root)).generated:
        log(f"synthetic dataset ready at {Path(data.root)}")


@register_dataset("synthetic", prepare=_prepare)
def _build(data: DataConfig, split: str, need_images: bool) -> VOCLayoutDataset:
    """The generated files in VOC layout, read by the generic reader."""
    return VOCLayoutDataset(data.root, split, tags_file=data.tags_file or None, need_images=need_images)





def _split_stats(cfg: SynthConfig, split: str, tags: np.ndarray, bgs: np.ndarray) -> SplitStats:
    confounded = split in CONFOUNDED_SPLITS
    idx = {c: i for i, c in enumerate(cfg.classes)}
    weights = _background_weights(cfg)
    pairs = []
    for pair in cfg.pairs:
        a, b = tags[:, idx[pair.classes[0]]], tags[:, idx[pair.classes[1]]]
        pairs.append(PairRate(
            first=pair.classes[0], partner=pair.classes[1], p=pair.p if confounded else 0.0, n_first=int(a.sum()),
            partner_given_first=_rate(b, a), first_given_partner=_rate(a, b), independent=_independent_pair_rate(cfg),
        ))
    contexts = []
    for ctx in cfg.contexts:
        has = tags[:, idx[ctx.cls]]
        on = bgs == cfg.backgrounds.index(ctx.background)
        contexts.append(ContextRate(
            cls=ctx.cls, background=ctx.background, p=ctx.p if confounded else 0.0, n_class=int(has.sum()),
            background_given_class=_rate(on, has), background_given_other=_rate(on, ~has),
            background_rate=float(on.mean()) if len(on) else 0.0,
            independent=float(weights[cfg.backgrounds.index(ctx.background)]),
        ))
    return SplitStats(
        images=len(tags),
        class_images={c: int(tags[:, i].sum()) for i, c in enumerate(cfg.classes)},
        background_images={b: int((bgs == i).sum()) for i, b in enumerate(cfg.backgrounds)},
        pairs=pairs, contexts=contexts,
    )


def _rate(event: np.ndarray, given: np.ndarray) -> float | None:
    n = int(given.sum())
    return float((event & given).sum() / n) if n else None


def _independent_pair_rate(cfg: SynthConfig) -> float:
    """P(B | A) from primary draws alone: n ~ U{min..max} distinct classes, so E[n(n-1)] / ((C-1) E[n])."""
    n = np.arange(cfg.min_objects, cfg.max_objects + 1, dtype=np.float64)
    c = len(cfg.classes)
    return float((n * (n - 1)).mean() / ((c - 1) * n.mean())) if c > 1 else 0.0


def _background_weights(cfg: SynthConfig) -> np.ndarray:
    w = np.asarray(cfg.background_weights or [1.0] * len(cfg.backgrounds), np.float64)
    return w / w.sum()


# ----------------------------------------------------------------------------------------------
# Scene sampling


@dataclass
class _Object:
    """An object's geometry in pixels; (dy, dx) is the body centre relative to its group's anchor."""

    cls: int
    a: float  # body ellipse semi-axes and rotation
    b: float
    phi: float
    part_dy: float  # part centre relative to the body centre
    part_dx: float
    part_h: float  # part half-size
    dy: float = 0.0
    dx: float = 0.0

    def bbox(self) -> np.ndarray:
        """[top, bottom, left, right] relative to the group anchor, part included."""
        ex = math.hypot(self.a * math.cos(self.phi), self.b * math.sin(self.phi))
        ey = math.hypot(self.a * math.sin(self.phi), self.b * math.cos(self.phi))
        py, px, h = self.part_dy, self.part_dx, self.part_h
        return np.array([min(-ey, py - h) + self.dy, max(ey, py + h) + self.dy,
                         min(-ex, px - h) + self.dx, max(ex, px + h) + self.dx])


def _reach(a: float, b: float, phi: float, theta: float) -> float:
    """Distance from an ellipse's centre to its edge in direction theta (where partners attach)."""
    return 1.0 / math.hypot(math.cos(theta - phi) / a, math.sin(theta - phi) / b)


def _sample_object(rng: np.random.Generator, cls: int, diameter: float, cfg: SynthConfig,
                   avoid: list[tuple[float, float]]) -> _Object:
    """Body ellipse plus a part of about `part_fraction` of its area, placed away from `avoid`
    directions (dx, dy) so an attached partner does not hide it."""
    a = diameter / 2
    b = a * rng.uniform(0.6, 1.0)
    phi = rng.uniform(0, math.pi)
    shape = part_marker(cls + cfg.marker_offset).shape
    min_h = max(2.5, 0.025 * cfg.image_size)  # keep parts >= ~5 px (6 px at 128) to stay learnable
    h = max(min_h, math.sqrt(cfg.part_fraction * math.pi * a * b / (4 * _SHAPE_AREA[shape])))
    if avoid:
        away = math.atan2(-sum(d[1] for d in avoid), -sum(d[0] for d in avoid))
        theta = away + rng.uniform(-1, 1) * 0.8 * (math.pi / 2) / len(avoid)
    else:
        theta = rng.uniform(0, 2 * math.pi)
    dist = rng.uniform(0.45, 0.7) * _reach(a, b, phi, theta)
    return _Object(cls, a, b, phi, dist * math.sin(theta), dist * math.cos(theta), h)


def _sample_group(rng: np.random.Generator, cls: int, cfg: SynthConfig, confounded: bool) -> list[_Object]:
    """A primary object and, in confounded splits, the partners its pairs attach to it."""
    diameter = rng.uniform(*cfg.object_size) * cfg.image_size
    partners = []
    if confounded:
        for pair in cfg.pairs:
            if cfg.classes.index(pair.classes[0]) == cls and rng.random() < pair.p:
                side = 1.0 if pair.placement == "on_top" else float(rng.choice((-1.0, 1.0)))
                partners.append((cfg.classes.index(pair.classes[1]), pair.placement, side))
    avoid = [(0.0, -1.0) if placement == "on_top" else (side, 0.0) for _, placement, side in partners]
    main = _sample_object(rng, cls, diameter, cfg, avoid)
    group = [main]
    for partner_cls, placement, side in partners:
        obj = _sample_object(rng, partner_cls, diameter * _PARTNER_SCALE[placement], cfg, [])
        if placement == "on_top":  # sits into the top of the main body, centred with a little jitter
            obj.dy = -(_reach(main.a, main.b, main.phi, -math.pi / 2) + 0.5 * _reach(obj.a, obj.b, obj.phi, math.pi / 2))
            obj.dx = rng.uniform(-0.15, 0.15) * _reach(main.a, main.b, main.phi, 0.0)
        else:  # touches the main body's side, overlapping it a little
            obj.dx = side * (_reach(main.a, main.b, main.phi, 0.0) + 0.6 * _reach(obj.a, obj.b, obj.phi, 0.0))
        group.append(obj)
    return group


def _place(rng: np.random.Generator, box: np.ndarray, placed: list[np.ndarray], size: int, tries: int = 8) -> tuple[float, float]:
    """An anchor keeping the group's box inside the image, overlapping earlier groups least."""
    lo = -box[[0, 2]]
    hi = size - 1 - box[[1, 3]]
    mid = (lo + hi) / 2
    lo, hi = np.where(lo > hi, mid, lo), np.where(lo > hi, mid, hi)  # too big to fit: centre it
    cand = rng.uniform(lo, hi, size=(tries, 2))  # (cy, cx)
    overlap = np.zeros(tries)
    for other in placed:
        h = np.minimum(cand[:, 0] + box[1], other[1]) - np.maximum(cand[:, 0] + box[0], other[0])
        w = np.minimum(cand[:, 1] + box[3], other[3]) - np.maximum(cand[:, 1] + box[2], other[2])
        overlap += np.clip(h, 0, None) * np.clip(w, 0, None)
    cy, cx = cand[int(np.argmin(overlap))]
    return float(cy), float(cx)


def _choose_background(rng: np.random.Generator, cfg: SynthConfig, present: set[int], confounded: bool) -> str:
    """A present class's context fires with its p (random order, first wins); else a free draw."""
    if confounded:
        links = [c for c in cfg.contexts if cfg.classes.index(c.cls) in present]
        for k in rng.permutation(len(links)):
            if rng.random() < links[k].p:
                return links[k].background
    return cfg.backgrounds[int(rng.choice(len(cfg.backgrounds), p=_background_weights(cfg)))]


# ----------------------------------------------------------------------------------------------
# Drawing (vectorised over coordinate grids)


def draw_image(cfg: SynthConfig, split: str, index: int) -> SynthImage:
    """Image `index` of `split`; depends only on (cfg, split, index), never on drawing order."""
    rng = np.random.default_rng([cfg.seed, list(SPLITS).index(split), index])
    size = cfg.image_size
    confounded = split in CONFOUNDED_SPLITS
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    groups = [_sample_group(rng, int(c), cfg, confounded) for c in rng.choice(len(cfg.classes), n, replace=False)]
    background = _choose_background(rng, cfg, {o.cls for g in groups for o in g}, confounded)

    canvas = _BACKGROUNDS[background](rng, size)
    label = np.zeros((size, size), np.uint8)
    part_map = np.zeros((size, size), bool)
    placed: list[np.ndarray] = []
    for group in groups:
        box = np.max([o.bbox() * (-1, 1, -1, 1) for o in group], axis=0) * (-1, 1, -1, 1)
        cy, cx = _place(rng, box, placed, size)
        placed.append(box + (cy, cy, cx, cx))
        for obj in group:  # partners after their main object: they are in front
            _paint(rng, cfg, obj, cy + obj.dy, cx + obj.dx, canvas, label, part_map)

    canvas += rng.normal(0, 3.0, canvas.shape).astype(np.float32)
    band = _border_band(label, cfg.ignore_border)
    label[band] = IGNORE_INDEX
    parts = np.where(part_map, label, 0).astype(np.uint8)
    parts[band] = IGNORE_INDEX
    return SynthImage(np.clip(canvas, 0, 255).astype(np.uint8), label, parts, background)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32) * 255


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [-1, 1]: a random (cells+1)^2 lattice, smoothly interpolated to size^2."""
    lattice = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, endpoint=False, dtype=np.float32)
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = lattice[i] * (1 - f)[:, None] + lattice[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _body_style(rng: np.random.Generator, cls: int, cfg: SynthConfig) -> tuple[np.ndarray, str]:
    """Body colour and texture. Shared: one distribution for every class (warm hues, muted, so
    bodies stand apart from the blue/green/grey backgrounds), so only the part names the class."""
    if cfg.shared_body:
        hue, texture = rng.uniform(0.72, 1.17), _BODY_TEXTURES[int(rng.integers(3))]
    else:
        hue = 0.72 + 0.45 * (cls + 0.5) / len(cfg.classes) + rng.uniform(-0.01, 0.01)
        texture = _BODY_TEXTURES[cls % 3]
    return _hsv(hue, rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.8)), texture


def _paint(rng: np.random.Generator, cfg: SynthConfig, obj: _Object, cy: float, cx: float,
           canvas: np.ndarray, label: np.ndarray, part_map: np.ndarray) -> None:
    size = cfg.image_size
    yy, xx = _grid(size)
    y, x = yy - cy, xx - cx
    cos, sin = math.cos(obj.phi), math.sin(obj.phi)
    r2 = ((x * cos + y * sin) / obj.a) ** 2 + ((-x * sin + y * cos) / obj.b) ** 2
    body = r2 <= 1.0
    colour, texture = _body_style(rng, obj.cls, cfg)
    shade = 1.0 - 0.15 * r2  # rounded look: darker towards the rim
    if texture == "stripes":
        psi = rng.uniform(0, math.pi)
        period = rng.uniform(5, 12) * size / 128 + 2
        shade = shade + 0.18 * np.sin(2 * math.pi * (x * math.cos(psi) + y * math.sin(psi)) / period + rng.uniform(0, 6.3))
    elif texture == "noise":
        shade = shade + 0.22 * _smooth_noise(rng, size, int(rng.integers(6, 12)))
    canvas[body] = colour * shade[body][:, None]

    marker = part_marker(obj.cls + cfg.marker_offset)
    h = obj.part_h
    py, px = y - obj.part_dy, x - obj.part_dx
    part = _shape_mask(marker.shape, py / h, px / h)
    cell = max(2.0, round(h * 2 / 3))
    if marker.pattern == "stripes":
        dark = np.floor(py / cell) % 2 == 1
    elif marker.pattern == "checker":
        dark = (np.floor(py / cell) + np.floor(px / cell)) % 2 == 1
    else:
        dark = np.zeros_like(part)
    canvas[part] = np.where(dark[part][:, None], _PART_DARK, np.array(marker.colour, np.float32))

    drawn = body | part
    label[drawn] = obj.cls + 1
    part_map[drawn] = part[drawn]


def _shape_mask(shape: str, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Unit shapes in [-1, 1]^2 (v down, u right); areas are _SHAPE_AREA times 4."""
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return u * u + v * v <= 1
    if shape == "square":
        return np.maximum(au, av) <= 1
    if shape == "triangle":
        return (av <= 1) & (au <= (v + 1) / 2)
    if shape == "diamond":
        return au + av <= 1
    return (np.maximum(au, av) <= 1) & (np.minimum(au, av) <= 1 / 3)  # cross


def _border_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within a `width`-px band around every change of label (VOC's void outlines)."""
    band = np.zeros(label.shape, bool)
    if width == 0:
        return band
    band[:, :-1] |= label[:, 1:] != label[:, :-1]
    band[:-1, :] |= label[1:, :] != label[:-1, :]
    lo, hi = -((width - 1) // 2), width // 2  # the marked pixel is the left/top one of each change
    for axis in (0, 1):
        grown = band.copy()
        for shift in range(lo, hi + 1):
            if shift:
                grown |= _shifted(band, shift, axis)
        band = grown
    return band


def _shifted(mask: np.ndarray, shift: int, axis: int) -> np.ndarray:
    """`mask` moved by `shift` pixels along `axis`, zero-filled (np.roll would wrap around)."""
    out = np.zeros_like(mask)
    src = [slice(None)] * 2
    dst = [slice(None)] * 2
    src[axis] = slice(0, -shift) if shift > 0 else slice(-shift, None)
    dst[axis] = slice(shift, None) if shift > 0 else slice(0, shift)
    out[tuple(dst)] = mask[tuple(src)]
    return out


# Backgrounds: each returns a size x size x 3 float32 canvas in [0, 255].


def _bg_plain(rng: np.random.Generator, size: int) -> np.ndarray:
    base = (rng.uniform(0.55, 0.9) + rng.uniform(-0.04, 0.04, 3)) * 255
    shade = 1 + 0.08 * _smooth_noise(rng, size, 3)
    return (shade[..., None] * base).astype(np.float32)


def _bg_water(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    colour = _hsv(rng.uniform(0.52, 0.6), rng.uniform(0.45, 0.8), rng.uniform(0.45, 0.75))
    wavelength = max(3.0, rng.uniform(5, 10) * size / 128)
    swell = rng.uniform(20, 45) * size / 128
    waves = np.sin(2 * math.pi * yy / wavelength + 1.5 * np.sin(2 * math.pi * xx / swell + rng.uniform(0, 6.3)))
    shade = 1 + 0.14 * waves + 0.06 * _smooth_noise(rng, size, 4)
    img = shade[..., None] * colour
    glint = np.clip((waves - 0.9) * 4, 0, 0.4)[..., None]
    return (img * (1 - glint) + 255 * glint).astype(np.float32)


def _bg_grass(rng: np.random.Generator, size: int) -> np.ndarray:
    colour = _hsv(rng.uniform(0.22, 0.33), rng.uniform(0.5, 0.85), rng.uniform(0.35, 0.65))
    k = 4  # blade length: vertical box filter of white noise
    c = np.cumsum(rng.normal(0, 1, (size + k, size)).astype(np.float32), axis=0)
    blades = (c[k:] - c[:-k]) / math.sqrt(k)
    shade = 1 + 0.12 * blades + 0.12 * _smooth_noise(rng, size, 4)
    return (shade[..., None] * colour).astype(np.float32)


def _bg_sky(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, _ = _grid(size)
    hue = rng.uniform(0.55, 0.62)
    top, horizon = _hsv(hue, rng.uniform(0.45, 0.7), rng.uniform(0.7, 0.9)), _hsv(hue, rng.uniform(0.05, 0.2), rng.uniform(0.9, 1.0))
    t = np.clip(yy / size + rng.uniform(-0.2, 0.2), 0, 1)[..., None]
    img = top * (1 - t) + horizon * t
    cloud = np.clip((_smooth_noise(rng, size, int(rng.integers(3, 6))) - 0.3) / 0.4, 0, 1)[..., None] * 0.8
    return (img * (1 - cloud) + 250 * cloud).astype(np.float32)


def _bg_road(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = _grid(size)
    grain = 1 + 0.12 * rng.normal(0, 1, (size, size)).astype(np.float32) + 0.05 * _smooth_noise(rng, size, 3)
    img = np.repeat(grain[..., None], 3, axis=2) * (rng.uniform(0.22, 0.4) * 255)
    y0, half = rng.uniform(0.3, 0.7) * size, max(1.0, size / 80)
    dash = max(4.0, size / 10)
    lane = (np.abs(yy - y0) <= half) & ((xx // dash) % 2 == 0)
    img[lane] = (235, 225, 150) if rng.random() < 0.5 else (240, 240, 240)
    return img.astype(np.float32)


_BACKGROUNDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "plain": _bg_plain, "water": _bg_water, "grass": _bg_grass, "sky": _bg_sky, "road": _bg_road,
}
BACKGROUND_STYLES: tuple[str, ...] = tuple(_BACKGROUNDS)
"""The background names data.synth.backgrounds may use: one per renderer (the config checks against it)."""


# ----------------------------------------------------------------------------------------------
# The pretraining world


def pretraining_world(pre: PretrainConfig) -> SynthConfig:
    """The world `conta pretrain` classifies: ImageNet's role, never the target data.

    Its classes wear the part markers after those of the default classes (which the demo uses),
    it draws on every background the generator has, links nothing (no pairs, no contexts) and has
    a seed of its own, so no demo class, image or confounder is ever seen in pretraining.
    """
    offset = len(SynthConfig().classes)
    return SynthConfig(
        seed=pre.world_seed, image_size=pre.image_size, n_train=1, n_val=1, n_val_deconfounded=0,
        classes=[f"marker{offset + i:03d}" for i in range(pre.n_classes)],
        backgrounds=list(BACKGROUND_STYLES), pairs=[], contexts=[],
        min_objects=pre.min_objects, max_objects=pre.max_objects, object_size=list(pre.object_size),
        marker_offset=offset,
    )
