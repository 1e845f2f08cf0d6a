"""The synthetic dataset: VOC-layout round trip, determinism, resumability, and that each
confounding knob does what it says when measured on the written data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conta.data.synthetic as synthetic
from conta.config import ContextSpec, PairSpec, SynthConfig, load_config
from conta.data.palette import IGNORE_INDEX, voc_palette
from conta.data.synthetic import draw_image, generate, image_ids, part_marker
from conta.errors import ConfigError
from conta.io import load_json, load_label_png


def small(**kw) -> SynthConfig:
    base = dict(image_size=64, n_train=10, n_val=4, n_val_deconfounded=4)
    return SynthConfig(**{**base, **kw})


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Chebyshev dilation by r px (no wrap-around)."""
    padded = np.pad(mask, r)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def adjacent_pairs(label: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(label[:, 1:], label[:, :-1]), (label[1:, :], label[:-1, :])]


def test_round_trip(tmp_path: Path) -> None:
    cfg = small()
    summary = generate(cfg, tmp_path)
    assert summary.generated and summary.classes == cfg.classes
    assert (tmp_path / "class_names.txt").read_text().split() == cfg.classes
    n_classes = len(cfg.classes)
    for split, n in (("train", 10), ("val", 4), ("val_deconfounded", 4)):
        ids = (tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert ids == image_ids(cfg, split) and len(ids) == n == summary.splits[split].images
        for image_id in ids:
            with Image.open(tmp_path / "JPEGImages" / f"{image_id}.jpg") as img:
                assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)
            with Image.open(tmp_path / "SegmentationClass" / f"{image_id}.png") as png:
                assert png.mode == "P" and png.size == (64, 64)
                assert png.getpalette() == voc_palette()
                label = np.asarray(png)
            assert set(np.unique(label)) <= set(range(n_classes + 1)) | {IGNORE_INDEX}
            assert (label == IGNORE_INDEX).any() and (label > 0).any()
            # every change of label is covered by the border band: no two touching labelled pixels differ
            for a, b in adjacent_pairs(label):
                assert not ((a != b) & (a != IGNORE_INDEX) & (b != IGNORE_INDEX)).any()
            parts = load_label_png(tmp_path / "SynthParts" / f"{image_id}.png")
            on = (parts > 0) & (parts != IGNORE_INDEX)
            assert on.any() and (parts[on] == label[on]).all()
    stored = load_json(tmp_path / "synth.json")
    assert stored["config"]["image_size"] == 64
    assert set(stored["image_backgrounds"]) == {i for s in synthetic.SPLITS for i in image_ids(cfg, s)}
    assert not (tmp_path / ".synth_incomplete.json").exists()


def test_tags_in_summary_are_read_from_the_written_masks(tmp_path: Path) -> None:
    cfg = small(n_train=40, n_val=0, n_val_deconfounded=0)
    summary = generate(cfg, tmp_path)
    tags = np.zeros((40, len(cfg.classes)), bool)
    for i, image_id in enumerate(image_ids(cfg, "train")):
        label = load_label_png(tmp_path / "SegmentationClass" / f"{image_id}.png")
        present = np.unique(label[(label > 0) & (label != IGNORE_INDEX)])
        tags[i, present - 1] = True
    st = summary.splits["train"]
    assert st.class_images == {c: int(tags[:, k].sum()) for k, c in enumerate(cfg.classes)}
    horse, person = tags[:, 0], tags[:, 1]
    assert st.pairs[0].partner_given_first == pytest.approx((horse & person).sum() / horse.sum())
    assert set(summary.splits) == {"train"}  # empty splits get no list
    assert not (tmp_path / "ImageSets" / "Segmentation" / "val.txt").exists()


@pytest.mark.parametrize("width", [0, 1, 3])
def test_ignore_border_width(width: int) -> None:
    label = draw_image(small(ignore_border=width), "train", 0).label
    plain = draw_image(small(ignore_border=0), "train", 0).label
    band = label == IGNORE_INDEX
    assert (label[~band] == plain[~band]).all()
    if width == 0:
        assert not band.any()
        return
    # every band pixel has another label within `width` px, and the band is about `width` px thick
    near_other = np.zeros_like(band)
    for value in np.unique(plain):
        near_other |= dilate(plain != value, width) & (plain == value)
    assert near_other[band].all()
    thin = (draw_image(small(ignore_border=1), "train", 0).label == IGNORE_INDEX).sum()
    assert 0.5 * width * thin <= band.sum() <= 1.5 * width * thin


def test_deterministic_and_independent_of_order(tmp_path: Path) -> None:
    generate(small(), tmp_path / "a")
    generate(small(), tmp_path / "b")
    generate(small(seed=1), tmp_path / "c")
    generate(small(n_train=3), tmp_path / "d")
    mask = Path("SegmentationClass/train_00002.png")
    assert (tmp_path / "a" / mask).read_bytes() == (tmp_path / "b" / mask).read_bytes()
    assert (tmp_path / "a" / mask).read_bytes() != (tmp_path / "c" / mask).read_bytes()
    assert (tmp_path / "a" / mask).read_bytes() == (tmp_path / "d" / mask).read_bytes()
    a, v = draw_image(small(), "train", 5), draw_image(small(), "val", 5)
    assert not np.array_equal(a.image, v.image)  # splits draw from different streams


def test_up_to_date_dataset_is_kept_and_a_changed_config_regenerates(tmp_path: Path) -> None:
    first = generate(small(), tmp_path)
    mask = tmp_path / "SegmentationClass" / "train_00009.png"
    stamp = mask.stat().st_mtime_ns
    again = generate(small(), tmp_path)
    assert not again.generated and mask.stat().st_mtime_ns == stamp
    assert again.splits == first.splits  # the stored table round-trips
    changed = generate(small(n_train=5), tmp_path)
    assert changed.generated and not mask.exists()  # ids the new config lacks are removed
    assert (tmp_path / "ImageSets" / "Segmentation" / "train.txt").read_text().split() == image_ids(small(n_train=5), "train")


def test_interrupted_generation_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = synthetic.save_rgb, []

    def failing(*args, **kw) -> None:
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(args[0])
        real(*args, **kw)

    monkeypatch.setattr(synthetic, "save_rgb", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(small(), tmp_path)
    assert not (tmp_path / "synth.json").exists() and (tmp_path / ".synth_incomplete.json").exists()
    first = tmp_path / "SegmentationClass" / "train_00000.png"
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr(synthetic, "save_rgb", real)
    summary = generate(small(), tmp_path)
    assert summary.generated and first.stat().st_mtime_ns == stamp  # kept, not rewritten
    assert not (tmp_path / ".synth_incomplete.json").exists()
    fresh = generate(small(), tmp_path / "fresh")
    assert summary.splits == fresh.splits
    for p in ("SegmentationClass/train_00003.png", "SegmentationClass/vdc_00003.png"):
        assert (tmp_path / p).read_bytes() == (tmp_path / "fresh" / p).read_bytes()


# -- the confounding controls, measured on generated data ----------------------------------------


def confounding(root: Path, **kw) -> synthetic.SynthSummary:
    cfg = SynthConfig(**{**dict(image_size=48, n_train=300, n_val=0, n_val_deconfounded=0), **kw})
    return generate(cfg, root)


@pytest.fixture(scope="module")
def linked(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SynthSummary:
    """The default links (p = 0.9 everywhere), with a deconfounded split."""
    return confounding(tmp_path_factory.mktemp("linked"), n_val_deconfounded=300)


@pytest.fixture(scope="module")
def unlinked(tmp_path_factory: pytest.TempPathFactory) -> synthetic.SynthSummary:
    """The horse+person pair and the boat/water context switched off (p = 0)."""
    return confounding(tmp_path_factory.mktemp("unlinked"), pairs=[PairSpec(["horse", "person"], 0.0)],
                       contexts=[ContextSpec("boat", "water", 0.0)])


@pytest.mark.parametrize("p", [0.9, 0.0])
def test_pair_probability_sets_the_measured_co_occurrence(p: float, linked, unlinked) -> None:
    summary = linked if p else unlinked
    pair = summary.splits["train"].pairs[0]
    assert pair.p == p and 0.05 < pair.independent < 0.25 and pair.n_first > 50
    assert pair.partner_given_first == pytest.approx(1 - (1 - p) * (1 - pair.independent), abs=0.08)


def test_deconfounded_split_has_the_independent_rates(linked) -> None:
    vdc = linked.splits["val_deconfounded"]
    for pair in vdc.pairs:
        assert pair.p == 0.0 and pair.partner_given_first == pytest.approx(pair.independent, abs=0.08)
    for ctx in vdc.contexts:
        assert ctx.p == 0.0 and ctx.background_given_class == pytest.approx(ctx.independent, abs=0.08)


def test_context_probability_sets_the_measured_background_rate(linked, unlinked) -> None:
    boat = linked.splits["train"].contexts[0]
    w = boat.independent
    assert w == pytest.approx(0.25)
    assert boat.background_given_class == pytest.approx(0.9 + 0.1 * w, abs=0.1)
    assert 0.1 < boat.background_given_other < 0.3  # water also appears without boats
    assert unlinked.splits["train"].contexts[0].background_given_class == pytest.approx(w, abs=0.08)


def test_background_weights_set_the_free_draw(tmp_path: Path) -> None:
    summary = confounding(tmp_path, n_train=40, n_val_deconfounded=40, contexts=[],
                          background_weights=[0.0, 0.0, 1.0, 0.0])
    for st in summary.splits.values():
        assert st.background_images == {"plain": 0, "water": 0, "grass": st.images, "sky": 0}


@pytest.mark.parametrize("placement", ["on_top", "beside"])
def test_partners_touch_their_object(placement: str) -> None:
    cfg = small(max_objects=1, pairs=[PairSpec(["horse", "person"], 1.0, placement)])
    horse, person = 1, 2
    seen = 0
    for i in range(60):
        label = draw_image(cfg, "train", i).label
        if not (label == horse).any():
            continue
        seen += 1
        assert (label == person).any()
        # across the band (width 1) a horse pixel and a person pixel are two apart
        assert (dilate(label == horse, 2) & (label == person)).any()
    assert seen >= 5


def test_parts_are_small_and_bodies_are_needed() -> None:
    cfg = SynthConfig(image_size=128)
    fractions = []
    for i in range(30):
        drawn = draw_image(cfg, "train", i)
        for value in np.unique(drawn.label[(drawn.label > 0) & (drawn.label != IGNORE_INDEX)]):
            fractions.append((drawn.parts == value).sum() / (drawn.label == value).sum())
    assert 0.5 * cfg.part_fraction < np.median(fractions) < 2 * cfg.part_fraction


def body_colour_spread(shared: bool) -> float:
    """Spread across classes of the per-class mean body colour (body = object minus part)."""
    cfg = small(shared_body=shared)
    sums = np.zeros((len(cfg.classes), 3))
    counts = np.zeros(len(cfg.classes))
    for i in range(80):
        drawn = draw_image(cfg, "train", i)
        for k in range(len(cfg.classes)):
            body = (drawn.label == k + 1) & (drawn.parts == 0)
            sums[k] += drawn.image[body].sum(axis=0)
            counts[k] += body.sum()
    return float((sums / counts[:, None]).std(axis=0).mean())


def test_shared_body_hides_the_class_in_the_body() -> None:
    assert body_colour_spread(False) > 2 * body_colour_spread(True)


def test_markers_are_distinct_and_backgrounds_all_drawable() -> None:
    assert len({part_marker(i) for i in range(SynthConfig.MAX_CLASSES)}) == SynthConfig.MAX_CLASSES
    cfg = small(backgrounds=list(synthetic.BACKGROUND_STYLES), contexts=[])
    assert {draw_image(cfg, "train", i).background for i in range(40)} == set(synthetic.BACKGROUND_STYLES)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.synth.pairs=[{classes: [horse, unicorn]}]", "data.synth.pairs[0].classes"),
        ("data.synth.pairs=[{classes: [horse, horse]}]", "data.synth.pairs[0].classes"),
        ("data.synth.pairs=[{classes: [horse, person], p: 1.5}]", "data.synth.pairs[0].p"),
        ("data.synth.pairs=[{classes: [horse, person], placement: under}]", "data.synth.pairs[0].placement"),
        ("data.synth.contexts=[{cls: boat, background: lava}]", "data.synth.contexts[0].background"),
        ("data.synth.contexts=[{cls: ship, background: water}]", "data.synth.contexts[0].cls"),
        ("data.synth.backgrounds=[plain, lava]", "data.synth.backgrounds[1]"),
        ("data.synth.background_weights=[1, 2]", "data.synth.background_weights"),
        ("data.synth.max_objects=7", "data.synth.max_objects"),
        ("data.synth.object_size=[0.5, 0.2]", "data.synth.object_size"),
        ("data.synth.part_fraction=0.8", "data.synth.part_fraction"),
        ("data.synth.ignore_border=-1", "data.synth.ignore_border"),
        ("data.synth.n_val_deconfounded=-1", "data.synth.n_val_deconfounded"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_known_confounders_name_each_pair_both_ways_and_each_context() -> None:
    cfg = SynthConfig()  # horse/person paired; boat on water, bird in the sky
    probes = {c.name: c for c in synthetic.known_confounders(cfg, cfg.classes)}
    assert set(probes) == {"horse -> person", "person -> horse", "boat -> background (water context)",
                           "bird -> background (sky context)"}
    horse, person = cfg.classes.index("horse"), cfg.classes.index("person")
    assert probes["horse -> person"] == synthetic.Confounder("horse -> person", horse, person + 1, person)
    assert probes["boat -> background (water context)"].target == 0
