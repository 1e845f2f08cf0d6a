"""Atomic, pickle-free reading and writing of run-directory artifacts.

Every write goes to a temporary file in the destination folder and is renamed into place, so an
interrupted stage never leaves a half-written file that a resumed stage would mistake for output.
The file gets the mode an ordinary write would (0666 less the umask, 0644 usually), so others on a
shared machine can read a run. A write that fails (no permission, a full disk, a read-only file
system) raises a one-line `WriteError` naming the destination and the cause; the file that was
there before, if any, is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from conta.data.palette import voc_palette
from conta.errors import DataError, WriteError


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_read_umask()
"""The mode of every file written here: what open() would give under this process's umask."""

_HINTS = {
    errno.EACCES: "choose a folder you can write to (--run-dir, run.out_dir or --out)",
    errno.EPERM: "choose a folder you can write to (--run-dir, run.out_dir or --out)",
    errno.EROFS: "choose a folder on a writable disk (--run-dir, run.out_dir or --out)",
    errno.ENOSPC: "free some space or write elsewhere; rerun the same command to resume",
    errno.EDQUOT: "free some space or write elsewhere; rerun the same command to resume",
}


def write_error(path: str | Path, exc: OSError) -> WriteError:
    """The one-line error for a failed write of `path`: the cause as the OS names it, and what to do."""
    code = exc.errno
    cause = os.strerror(code) if code else str(exc)
    name = f" ({errno.errorcode[code]})" if code in errno.errorcode else ""
    hint = f"; {_HINTS[code]}" if code in _HINTS else ""
    return WriteError(path, f"cannot write: {cause}{name}{hint}")


def _about_the_write(exc: OSError, tmp: str) -> bool:
    """Whether an OSError inside an atomic write is the write failing, rather than a read of some
    other file in the same block (that one keeps its own message)."""
    return exc.filename is None or os.fspath(exc.filename) == tmp


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` if the block succeeds.

    An OSError of the write itself becomes a `WriteError` naming `path`; the temporary file is
    removed whatever happens.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except FileExistsError:  # from mkdir: the folder to write in is a file
        raise WriteError(path, f"cannot write: {path.parent} is a file, not a folder") from None
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and _about_the_write(exc, tmp):
            raise write_error(path, exc) from None
        raise


def save_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from None


def save_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    """Write arrays uncompressed-by-pickle (np.savez_compressed never pickles plain arrays)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_npz(path: str | Path, skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Every array of the archive but those named in `skip` (left compressed on disk, unread)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files if key not in skip}
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (ValueError, OSError) as exc:
        raise DataError(path, f"not a readable .npz archive ({exc})") from None


def save_label_png(path: str | Path, label: np.ndarray, palette: list[int] | None = None) -> None:
    """Save a uint8 label map as a palette PNG (index values kept; colours for people to look at)."""
    if label.dtype != np.uint8:
        if label.min() < 0 or label.max() > 255:
            raise ValueError(f"label values out of uint8 range for {path}")
        label = label.astype(np.uint8)
    img = Image.fromarray(label, mode="P")
    # always a full palette: without one, Pillow writes a 1-bit PNG and every label becomes 0 or 1
    img.putpalette(palette if palette is not None else voc_palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


LABEL_MODES: tuple[str, ...] = ("P", "L", "I", "I;16")
"""PIL modes a label PNG may have: one index value per pixel (RGB masks are not labels)."""


def load_label_png(path: str | Path) -> np.ndarray:
    """Read a label PNG as its raw index values (palette PNGs are not converted to RGB)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.mode not in LABEL_MODES:
                raise DataError(path, f"label image has mode {img.mode}; expected a palette or grayscale PNG")
            return np.asarray(img, dtype=np.uint8) if img.mode in ("P", "L") else np.asarray(img).astype(np.int64)
    except FileNotFoundError:
        raise DataError(path, "label file not found") from None
    except OSError as exc:
        raise DataError(path, f"unreadable label image ({exc})") from None


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image as an H x W x 3 uint8 RGB array."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as exc:
        raise DataError(path, f"unreadable image ({exc})") from None


def image_file_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, read from its header without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            return img.height, img.width
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except OSError as exc:
        raise DataError(path, f"unreadable image ({exc})") from None


def save_rgb(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, quality=quality)
