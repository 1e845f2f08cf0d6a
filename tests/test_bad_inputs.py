"""Bad inputs and faults, one row each, through `conta.cli.main` as a user types them.

Every row gives the command, the message expected (a regex naming the file or key and the
problem), the exit status, and is checked for: no traceback, the error on one line, and no file
lost (every file that existed before is there after, byte for byte). The world each row starts
from is a tiny VOC-layout dataset (`tests/_fixtures.py`: 4 images of 24 x 32, train = all, val =
the last two) read as `voc12`, plus, for the rows that need one, an untrained DeepLab with its
predictions of val. A few rows run as a subprocess to show that nothing reaches stderr but the line.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from _fixtures import make_voc_dataset
from _seg_tiny import untrained_model
from PIL import Image

import conta.engine.checkpoint as checkpoint
import conta.stages.data_check as data_check
from conta.cli import main
from conta.config import load_config
from conta.data.palette import voc_palette
from conta.data.voc import VOC_CLASSES
from conta.io import save_label_png, save_npz

MARKER = "payload_ran"  # what a malicious pickle would create if it were ever unpickled

BASE = ["data.dataset=voc12", "data.root={root}", "data.train_split=train", "data.infer_split=train",
        "data.eval_split=train", "data.val_splits=[val]", "data.cache_dir={tmp}/cache", "run.out_dir={tmp}/runs",
        "run.name=r", "run.device=cpu", "cam.backbone.arch=resnet18", "cam.backbone.width=4", "cam.batch_size=2",
        "cam.epochs=1", "cam.crop_size=32", "cam.resize_long=[24,40]", "cam.scales=[1.0]", "seg.arch=resnet18",
        "seg.width=8", "seg.msc_scales=[]", "seg.crop_size=33", "seg.batch_size=2", "seg.iter_size=1",
        "seg.iterations=2", "seg.save_every=1", "seg.label_source=gt", "seg.crf.enabled=false"]


@dataclass
class World:
    tmp: Path

    @property
    def root(self) -> Path:
        return self.tmp / "voc"

    @property
    def seg(self) -> Path:
        return self.tmp / "runs" / "r" / "round_0" / "seg"

    def format(self, text: str) -> str:
        return text.format(root=self.root, tmp=self.tmp)

    def mask(self, image_id: str) -> Path:
        return self.root / "SegmentationClass" / f"{image_id}.png"

    def image(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"


@dataclass
class Case:
    name: str
    argv: list[str]
    message: tuple[str, ...]     # regexes, searched in stderr when the status is not 0, else in stdout
    status: int
    setup: Callable[[World], None] = lambda world: None
    fault: Callable[[World, pytest.MonkeyPatch], None] | None = None
    base: bool = True             # add BASE to the command's overrides
    usage: bool = False           # an argparse error: the usage lines come before the error line
    absent: tuple[str, ...] = ()  # texts the output must not hold
    after: Callable[[World], None] = lambda world: None  # further checks


# -- set-ups ---------------------------------------------------------------------------------


def truncate_jpeg(world: World, image_id: str = "img_001") -> None:
    data = world.image(image_id).read_bytes()
    world.image(image_id).write_bytes(data[: len(data) // 2])


def empty_mask(world: World, image_id: str = "img_001") -> None:
    world.mask(image_id).write_bytes(b"")


def mask_value_42(world: World, image_id: str = "img_002") -> None:
    mask = np.asarray(Image.open(world.mask(image_id))).copy()
    mask[5, 5] = 42
    save_label_png(world.mask(image_id), mask, voc_palette())


def rgb_mask(world: World, image_id: str = "img_002") -> None:
    Image.new("RGB", (32, 24), (128, 0, 0)).save(world.mask(image_id))


def small_mask(world: World, image_id: str = "img_002") -> None:
    save_label_png(world.mask(image_id), np.zeros((16, 20), np.uint8), voc_palette())


def cam_maps(world: World) -> None:
    """Stride-4 CAMs of every image, as `conta cam infer` writes them (one tagged class)."""
    for i in range(4):
        save_npz(world.tmp / "runs" / "r" / "round_0" / "cam" / "maps" / f"img_{i:03d}.npz",
                 keys=np.array([0]), cam=np.ones((1, 6, 8), np.float16))


def list_a_missing_image(world: World) -> None:
    (world.root / "ImageSets" / "Segmentation" / "train.txt").write_text("img_000\nimg_001\nimg_009\n")


def list_an_id_twice(world: World) -> None:
    (world.root / "ImageSets" / "Segmentation" / "train.txt").write_text("img_000\nimg_001\nimg_002\nimg_001\n")


def drop_images(world: World) -> None:
    for path in (world.root / "JPEGImages").iterdir():
        path.unlink()
    (world.root / "JPEGImages").rmdir()


def perfect_predictions(world: World) -> None:
    for image_id in ("img_002", "img_003"):
        mask = np.asarray(Image.open(world.mask(image_id)))
        save_label_png(world.tmp / "pred" / f"{image_id}.png", np.where(mask == 255, 0, mask).astype(np.uint8))


def write_yaml(world: World, text: str, name: str = "config.yaml") -> None:
    (world.tmp / name).write_text(text)


class Payload:
    """Unpickling this creates the marker file: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def malicious_pt(world: World, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Payload(world.tmp / MARKER), "meta": {"kind": "deeplab_v2"}}, path)


def malicious_npz(world: World, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, keys=np.array([Payload(world.tmp / MARKER)], dtype=object), cam=np.zeros((1, 6, 8)))


def seg_model(world: World, n_classes: int = len(VOC_CLASSES), path: Path | None = None) -> Path:
    cfg = load_config(None, [world.format(o) for o in BASE])
    return untrained_model(cfg, path or world.seg / "model.pt", [f"c{i}" for i in range(n_classes)])


def seg_model_with_predictions(world: World) -> None:
    seg_model(world)
    assert main(["seg", "test", *(world.format(o) for o in BASE)]) == 0


def payload_did_not_run(world: World) -> None:
    assert not (world.tmp / MARKER).exists()


def disk_fault(code: int, match: Callable[[str], bool]) -> Callable[[World, pytest.MonkeyPatch], None]:
    """os.replace fails with `code` for destinations `match` accepts (root ignores file modes, so
    a read-only folder cannot be made for real in the tests)."""

    def fault(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            if match(os.fspath(dst)):
                raise OSError(code, os.strerror(code), os.fspath(src), None, os.fspath(dst))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    return fault


def full_disk_for_torch(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint writer's file object fails as a full disk does, mid-write."""

    class Full:
        def __init__(self, path, mode="r", *args, **kwargs) -> None:
            self.fh = open(path, mode, *args, **kwargs)

        def write(self, data) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

    monkeypatch.setattr(checkpoint, "open", Full, raising=False)


def checkpoint_of_a_classifier(world: World) -> None:
    checkpoint.save_checkpoint(world.tmp / "cam_model.pt", model={}, meta={"arch": "resnet18", "context_at": None})


def deeplab_as_classifier(world: World) -> None:
    seg_model(world, path=world.tmp / "runs" / "r" / "round_0" / "cam" / "model.pt")


# -- the table ------------------------------------------------------------------------------

SEG_TEST = ["seg", "test"]
EVAL_MASKS = ["eval", "masks", "--pred", "{tmp}/pred", "--split", "val", "--root", "{root}", "--dataset", "voc12"]
DATA_CHECK = ["data", "check", "--dataset", "voc12", "--root", "{root}", "--split", "train", "--split", "val",
              "--workers", "1", "data.cache_dir={tmp}/cache"]

CASES = [
    # configuration
    Case("unknown key", ["cam", "train", "cam.bogus=1"],
         (r"^conta: error: command-line override cam.bogus=1: unknown key cam.bogus \(known: ",), 2),
    Case("wrong type", ["cam", "train", "cam.epochs=1.5"],
         (r"command-line override cam.epochs=1.5: cam.epochs: expected an integer, got 1.5",), 2),
    Case("YAML syntax error", ["cam", "train", "--config", "{tmp}/config.yaml"],
         (r"config.yaml: not valid YAML \(",), 2, setup=lambda w: write_yaml(w, "cam:\n  lr: [0.1\n")),
    Case("an override's mistake is not blamed on the file", ["cam", "train", "--config", "{tmp}/config.yaml", "cam.lr=-1"],
         (r"^conta: error: command-line override cam.lr=-1: cam.lr: must be positive$",), 2,
         setup=lambda w: write_yaml(w, "cam:\n  epochs: 1\n"), absent=("config.yaml",)),
    Case("cam crop of 100000 pixels", ["cam", "train", "cam.crop_size=100000"],
         (r"cam.crop_size=100000: cam.crop_size: must be in \[16, 4096\] pixels, got 100000",), 2),
    Case("seg crop of 100000 pixels", ["seg", "train", "seg.crop_size=100000"],
         (r"seg.crop_size=100000: seg.crop_size: must be in \[16, 4096\] pixels, got 100000",), 2),
    Case("fg_threshold out of range names fg_threshold", ["pseudo-mask", "ir_label.fg_threshold=1.5"],
         (r"ir_label.fg_threshold: must be in \(0, 1\), got 1.5",), 2, absent=("bg_threshold",)),
    Case("overrides on both sides of an option", ["eval", "masks", "data.cache_dir={tmp}/c1", "--pred", "{tmp}/pred",
                                                  "data.num_workers=0", "--split", "val", "data.dataset=voc12",
                                                  "--root", "{root}", "data.tags_file=null"],
         (r"mIoU",), 0, setup=perfect_predictions, base=False),
    Case("an unknown option is named with its command's usage", ["cam", "train", "a.b=1", "--bogus", "c.d=2"],
         (r"conta cam train: error: unrecognized arguments: --bogus",), 2, usage=True),
    # the dataset
    Case("missing root", [*EVAL_MASKS[:7], "{tmp}/nowhere", *EVAL_MASKS[8:]],
         (r"nowhere: dataset root not found",), 2, setup=perfect_predictions, base=False),
    Case("a listed image is missing", ["cam", "train"],
         (r"train.txt: names 1 images missing from JPEGImages/ \(first: img_009.jpg\)",), 2,
         setup=list_a_missing_image),
    Case("an id listed twice", ["cam", "train"],
         (r"train.txt: lists 1 ids more than once \(first: img_001\)",), 2, setup=list_an_id_twice),
    Case("an id listed twice, data check", DATA_CHECK,
         (r"BAD split train: .*train.txt: lists 1 ids more than once \(first: img_001\)",), 1,
         setup=list_an_id_twice, base=False),
    Case("truncated JPEG", DATA_CHECK,
         (r"BAD unreadable image: 1 file \(first: .*img_001.jpg \(image file is truncated",), 1,
         setup=truncate_jpeg, base=False),
    Case("zero-byte PNG", DATA_CHECK,
         (r"BAD unreadable mask: 1 file \(first: .*img_001.png \(empty file\)\)",), 1, setup=empty_mask, base=False),
    Case("mask value 42", DATA_CHECK,
         (r"BAD mask value outside 0..20 \(and 255 = ignore\): 1 file \(first: .*img_002.png \(value 42\)\)",), 1,
         setup=mask_value_42, base=False),
    Case("mask value 42, scoring", EVAL_MASKS,
         (r"img_002.png: mask value 42 outside 0..20",), 2, setup=lambda w: (perfect_predictions(w), mask_value_42(w)),
         base=False),
    Case("RGB mask", DATA_CHECK,
         (r"BAD mask is not a palette or grayscale PNG: 1 file \(first: .*img_002.png \(mode RGB\)\)",), 1,
         setup=rgb_mask, base=False),
    Case("RGB mask, scoring", EVAL_MASKS, (r"img_002.png: label image has mode RGB",), 2,
         setup=lambda w: (perfect_predictions(w), rgb_mask(w)), base=False),
    Case("every problem in one pass", DATA_CHECK,
         (r"BAD unreadable image: 1 file", r"BAD unreadable mask: 1 file", r"BAD mask value outside", r"3 problem\(s\)"),
         1, setup=lambda w: (truncate_jpeg(w), empty_mask(w), mask_value_42(w)), base=False),
    Case("mask and image sizes differ, data check", DATA_CHECK,
         (r"BAD mask size differs from its image: 1 file \(first: .*img_002.png \(20x16, image 32x24\)\)",), 1,
         setup=small_mask, base=False),
    Case("mask and image sizes differ, cam train", ["cam", "train"],
         (r"img_002.png: mask size 20x16 differs from its image 32x24$",), 2, setup=small_mask),
    Case("mask and image sizes differ, cam infer", ["cam", "infer"],
         (r"img_002.png: mask size 20x16 differs from its image 32x24$",), 2, setup=small_mask),
    Case("mask and image sizes differ, cam eval", ["cam", "eval"],
         (r"img_002.png: mask size 20x16 differs from its image 32x24$",), 2,
         setup=lambda w: (cam_maps(w), small_mask(w))),
    Case("mask and image sizes differ, eval masks", EVAL_MASKS,
         (r"img_002.png: mask size 20x16 differs from its image 32x24$",), 2,
         setup=lambda w: (perfect_predictions(w), small_mask(w)), base=False),
    Case("eval masks needs no JPEGImages", EVAL_MASKS, (r"mIoU +100.00",), 0,
         setup=lambda w: (perfect_predictions(w), drop_images(w)), base=False),
    Case("synthetic generator pointed at a real dataset", ["cam", "train", "data.dataset=synthetic"],
         (r"voc: holds a dataset that conta did not generate \(JPEGImages/, ImageSets/, SegmentationClass/ but no "
          r"synth.json\); data.dataset is 'synthetic'",), 2),
    Case("batch larger than the dataset, before BN estimation", ["cam", "train", "cam.batch_size=64"],
         (r"4 training images are fewer than one batch of 64; lower cam.batch_size$",), 2, absent=("estimating",)),
    # models
    Case("missing model file", [*SEG_TEST, "--model-path", "{tmp}/missing.pt"],
         (r"missing.pt: model file not found$",), 2, setup=seg_model_with_predictions),
    Case("random bytes as the model", [*SEG_TEST, "--model-path", "{tmp}/random.pt"],
         (r"random.pt: not a readable conta checkpoint \(",), 2,
         setup=lambda w: (seg_model_with_predictions(w), (w.tmp / "random.pt").write_bytes(os.urandom(4096)))),
    Case("malicious pickle as the model", [*SEG_TEST, "--model-path", "{tmp}/evil.pt"],
         (r"evil.pt: not a readable conta checkpoint \(refused by the weights-only loader, which runs no code: "
          r"Unsupported global",), 2,
         setup=lambda w: (seg_model_with_predictions(w), malicious_pt(w, w.tmp / "evil.pt")), after=payload_did_not_run),
    Case("malicious pickle as the classifier", ["cam", "infer"],
         (r"cam/model.pt: not a readable conta checkpoint \(refused by the weights-only loader",), 2,
         setup=lambda w: malicious_pt(w, w.tmp / "runs" / "r" / "round_0" / "cam" / "model.pt"),
         after=payload_did_not_run),
    Case("malicious pickle as a CAM map", ["cam", "eval"],
         (r"img_000.npz: not a readable .npz archive \(Object arrays cannot be loaded when allow_pickle=False\)",), 2,
         setup=lambda w: malicious_npz(w, w.tmp / "runs" / "r" / "round_0" / "cam" / "maps" / "img_000.npz"),
         after=payload_did_not_run),
    Case("the checkpoint of another model as the segmenter", [*SEG_TEST, "--model-path", "{tmp}/cam_model.pt"],
         (r"cam_model.pt: not a whole conta DeepLab",), 2, setup=checkpoint_of_a_classifier),
    Case("a DeepLab as the classifier", ["cam", "infer"], (r"cam/model.pt: not a conta CAM classifier",), 2,
         setup=deeplab_as_classifier),
    Case("a segmenter for other classes", [*SEG_TEST, "--model-path", "{tmp}/four.pt"],
         (r"four.pt: a model of 5 classes cannot label a dataset of 21",), 2,
         setup=lambda w: seg_model(w, 4, w.tmp / "four.pt")),
    Case("the model file's architecture wins over seg.arch, said out loud", [*SEG_TEST, "seg.arch=resnet50"],
         (r"model.pt was built with arch resnet18 \(config: resnet50\); the file's own architecture is used",), 0,
         setup=lambda w: seg_model(w)),
    # writing
    Case("a full disk while writing predictions", [*SEG_TEST, "--split", "train"],
         (r"pred/train/img_000.png: cannot write: No space left on device \(ENOSPC\); free some space",), 2,
         setup=seg_model_with_predictions, fault=disk_fault(errno.ENOSPC, lambda p: p.endswith(".png"))),
    Case("a full disk while saving a checkpoint", ["seg", "train"],
         (r"seg/checkpoint.pt: cannot write: No space left on device \(ENOSPC\)",), 2, fault=full_disk_for_torch),
    Case("a read-only file system", ["run"],
         (r"runs/r/config.yaml: cannot write: Read-only file system \(EROFS\); choose a folder",), 2,
         fault=disk_fault(errno.EROFS, lambda p: p.endswith("config.yaml"))),
    Case("a folder without write permission", [*EVAL_MASKS, "--json", "{tmp}/scores.json"],
         (r"scores.json: cannot write: Permission denied \(EACCES\); choose a folder you can write to",), 2,
         setup=perfect_predictions, base=False, fault=disk_fault(errno.EACCES, lambda p: p.endswith("scores.json"))),
    Case("an output path that is a folder", [*EVAL_MASKS, "--json", "{tmp}/pred"],
         (r"pred: cannot write: Is a directory \(EISDIR\)",), 2, setup=perfect_predictions, base=False),
]


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    world = World(tmp_path)
    make_voc_dataset(world.root)
    case.setup(world)
    before = snapshot(tmp_path)
    capsys.readouterr()
    if case.fault is not None:
        case.fault(world, monkeypatch)
    argv = [world.format(a) for a in case.argv]
    if case.base:  # the world's settings, except those the row sets itself
        argv += [world.format(o) for o in BASE if not any(a.startswith(o.split("=")[0] + "=") for a in argv)]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    monkeypatch.undo()
    out, err = capsys.readouterr()
    assert status == case.status, (out, err)
    text = err if status == 2 else out  # 1: data check's report
    for pattern in case.message:
        assert re.search(pattern, text, re.MULTILINE), (pattern, text)
    for absent in case.absent:
        assert absent not in out + err
    assert "Traceback" not in out + err
    if status == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 or case.usage, err  # the error is one line
        assert lines[-1].startswith("conta"), err
    after = snapshot(tmp_path)
    lost = [path for path, digest in before.items() if after.get(path) != digest]
    assert not lost, lost
    case.after(world)


# -- as a subprocess: stderr holds the line and nothing else ------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["cam", "train", "cam.crop_size=100000"], "cam.crop_size: must be in [16, 4096] pixels"),
    (["seg", "test", "--model-path", "{tmp}/evil.pt"], "evil.pt: not a readable conta checkpoint"),
])
def test_subprocess_stderr_is_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    world = World(tmp_path)
    make_voc_dataset(world.root)
    malicious_pt(world, tmp_path / "evil.pt")
    command = [sys.executable, "-m", "conta", *(world.format(a) for a in argv),
               *(world.format(o) for o in BASE if not any(a.startswith(o.split("=")[0] + "=") for a in argv))]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    payload_did_not_run(world)


def test_payload_would_run_if_unpickled(tmp_path: Path) -> None:
    """The control for the malicious rows: the same file does run its payload under plain pickle."""
    world = World(tmp_path)
    malicious_pt(world, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / MARKER).exists()
    (tmp_path / MARKER).unlink()
    malicious_npz(world, tmp_path / "evil.npz")
    np.load(tmp_path / "evil.npz", allow_pickle=True)["keys"]
    assert (tmp_path / MARKER).exists()


def test_data_check_in_processes_reports_what_one_process_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    world = World(tmp_path)
    make_voc_dataset(world.root)
    truncate_jpeg(world), rgb_mask(world), small_mask(world, "img_003")
    argv = [world.format(a) for a in DATA_CHECK]
    assert main(argv) == 1
    alone = capsys.readouterr().out
    monkeypatch.setattr(data_check, "FILES_PER_PROCESS", 1)  # 4 pairs: worth 2 processes now
    assert main([*argv[:-2], "2", argv[-1]]) == 1
    pooled = capsys.readouterr().out
    assert "decoded 4 images and 4 masks in 2 processes" in pooled
    assert pooled.replace(" in 2 processes", "") == alone and alone.count("  BAD ") == 3
