"""Demos of a trained segmenter (deeplab-pytorch's demo.py): one image to a figure, or a live webcam.

`single` needs only Pillow. `live` needs OpenCV (the optional extra `live`), a camera and a
display; when one is missing it says which and how to fix it, instead of a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conta.errors import ContaError
from conta.io import load_rgb, save_rgb
from conta.seg_predictor import Predictor, architecture_note
from conta.stages.round_context import RoundContext
from conta.stages.seg import default_model_path
from conta.viz import caption, grid, label_legend, label_overlay

Log = Callable[[str], None]
WINDOW = "conta live (q quits)"


def figure(image: np.ndarray, labels: np.ndarray, class_names: list[str]) -> np.ndarray:
    """input | predicted classes over it | legend of the classes present (names include background)."""
    return grid([caption(image, "input"), caption(label_overlay(image, labels), "prediction"),
                 label_legend(labels, class_names[1:])])


def figure_name(image_path: Path, crf: bool) -> str:
    return f"{Path(image_path).stem}_seg{'_crf' if crf else ''}.png"


def single(rnd: RoundContext, image_path: Path, model_path: Path | None = None, crf: bool = False,
           out: Path | None = None, log: Log = print) -> Path:
    """Segment one image (long side resized to seg.test_size) and save the figure; returns its path
    (default: <image name>_seg.png in the current folder, never inside a run someone else made)."""
    image = load_rgb(image_path)
    predictor = _predictor(rnd, model_path, log)
    labels, _ = predictor.predict(image, resize=True, crf=crf)
    out = Path(out) if out is not None else Path(figure_name(image_path, crf))
    save_rgb(out, figure(image, labels, predictor.class_names))
    log(f"demo: figure written to {out}")
    return out


def live(rnd: RoundContext, model_path: Path | None = None, camera_id: int = 0, log: Log = print) -> None:
    """Webcam loop: 50/50 class overlay, the class under the mouse cursor named, q quits."""
    try:
        import cv2
    except ImportError:
        raise ContaError('the live demo needs OpenCV: pip install "conta[live]" '
                         "(or use `conta demo single` on an image)") from None
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ContaError("the live demo needs a display and none is set ($DISPLAY); use `conta demo single` instead")
    predictor = _predictor(rnd, model_path, log)
    camera = cv2.VideoCapture(camera_id)
    if not camera.isOpened():
        raise ContaError(f"camera {camera_id} cannot be opened (is one connected? try --camera-id)")
    cursor: list[tuple[int, int]] = []  # the last mouse position, written by OpenCV's callback

    def on_mouse(event: int, x: int, y: int, flags: int, param: Any) -> None:
        cursor[:] = [(x, y)]

    try:
        try:
            cv2.namedWindow(WINDOW)
            cv2.setMouseCallback(WINDOW, on_mouse)
        except cv2.error as exc:
            raise ContaError(f"cannot open a window for the live demo ({exc})") from None
        _loop(cv2, camera, predictor, cursor, camera_id, log)
    finally:
        camera.release()
        cv2.destroyAllWindows()


def _predictor(rnd: RoundContext, model_path: Path | None, log: Log) -> Predictor:
    path = model_path or default_model_path(rnd)
    predictor = Predictor(rnd.cfg, path)
    note = architecture_note(path, predictor.meta, rnd.cfg.seg)
    if note:
        log(f"demo: {note}")
    return predictor


def _loop(cv2: Any, camera: Any, predictor: Predictor, cursor: list[tuple[int, int]], camera_id: int, log: Log) -> None:
    names, shown = predictor.class_names, None
    while True:
        ok, frame = camera.read()
        if not ok:
            raise ContaError(f"camera {camera_id} stopped delivering frames")
        rgb = np.ascontiguousarray(frame[..., ::-1])
        labels, _ = predictor.predict(rgb, resize=True)
        view = np.ascontiguousarray(label_overlay(rgb, labels)[..., ::-1])
        if cursor:
            x = min(max(cursor[0][0], 0), labels.shape[1] - 1)
            y = min(max(cursor[0][1], 0), labels.shape[0] - 1)
            name = names[labels[y, x]]
            cv2.putText(view, name, (x + 8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
            if name != shown:
                log(f"under the cursor: {name}")
                shown = name
        cv2.imshow(WINDOW, view)
        if cv2.waitKey(1) & 0xFF == ord("q"):
            return
