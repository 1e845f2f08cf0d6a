"""Demos: `conta demo single` writes a figure; `conta demo live` fails cleanly without OpenCV,
a display or a camera (exit code 2 and a message, never a traceback)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from _seg_tiny import seg_config, untrained_model
from PIL import Image

from conta.cli import main
from conta.io import save_rgb


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return untrained_model(seg_config(tmp_path), tmp_path / "model.pt", ["cat", "dog"])


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [*extra, f"run.out_dir={tmp_path / 'runs'}", "run.name=demo", "seg.test_size=40"]


def test_demo_single_writes_a_figure(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    save_rgb(tmp_path / "photo.png", image)
    out = tmp_path / "figure.png"
    argv = ["demo", "single", "--model-path", str(model), "--image-path", str(tmp_path / "photo.png"), "--out", str(out)]
    assert main(_args(tmp_path, *argv)) == 0
    with Image.open(out) as figure:
        assert figure.mode == "RGB" and figure.width > 2 * 50 and figure.height > 30
    assert str(out) in capsys.readouterr().out
    # without --out it goes to the current folder, not into the run the config names; --crf is accepted
    monkeypatch.chdir(tmp_path / "runs" if (tmp_path / "runs").is_dir() else tmp_path)
    work = Path.cwd()
    assert main(_args(tmp_path, *argv[:-2], "--crf")) == 0
    assert (work / "photo_seg_crf.png").is_file() and not (tmp_path / "runs" / "demo").exists()
    # with --run-dir it goes to <run dir>/demo/<name>_seg.png
    assert main(_args(tmp_path, *argv[:-2], "--run-dir", str(tmp_path / "mine"))) == 0
    assert (tmp_path / "mine" / "demo" / "photo_seg.png").is_file()


def test_demo_single_with_a_v3plus_model(tmp_path: Path) -> None:
    """The figure comes from the file alone: the v3+ network is rebuilt from its meta."""
    v3plus = untrained_model(seg_config(tmp_path, "seg.model=deeplabv3plus"), tmp_path / "v3plus.pt", ["cat", "dog"])
    save_rgb(tmp_path / "photo.png", np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    out = tmp_path / "figure.png"
    argv = ["demo", "single", "--model-path", str(v3plus), "--image-path", str(tmp_path / "photo.png"), "--out", str(out)]
    assert main(_args(tmp_path, *argv)) == 0 and out.is_file()


def test_demo_single_missing_image_is_a_clean_error(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["demo", "single", "--model-path", str(model), "--image-path", str(tmp_path / "nope.jpg")]
    assert main(_args(tmp_path, *argv)) == 2
    assert "nope.jpg" in capsys.readouterr().err


def test_demo_live_without_opencv(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    assert main(_args(tmp_path, "demo", "live", "--model-path", str(model))) == 2
    err = capsys.readouterr().err
    assert "OpenCV" in err and "conta[live]" in err and "Traceback" not in err


def _fake_cv2(opened: bool) -> types.ModuleType:
    cv2 = types.ModuleType("cv2")
    cv2.error = type("error", (Exception,), {})
    cv2.VideoCapture = lambda camera_id: types.SimpleNamespace(isOpened=lambda: opened, release=lambda: None)
    return cv2


def test_demo_live_without_a_display(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2(opened=True))
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(_args(tmp_path, "demo", "live", "--model-path", str(model))) == 2
    assert "display" in capsys.readouterr().err


def test_demo_live_without_a_camera(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "cv2", _fake_cv2(opened=False))
    monkeypatch.setenv("DISPLAY", ":99")
    assert main(_args(tmp_path, "demo", "live", "--model-path", str(model), "--camera-id", "3")) == 2
    assert "camera 3 cannot be opened" in capsys.readouterr().err


def test_seg_cli_commands_exist() -> None:
    from conta.cli import build_parser

    parser = build_parser()
    for argv in (["seg", "train"], ["seg", "test", "--split", "val", "--model-path", "m.pt", "--keep-logits"],
                 ["seg", "crf", "--split", "val", "--workers", "2"], ["demo", "live", "--camera-id", "1"]):
        assert callable(parser.parse_args(argv).handler)
