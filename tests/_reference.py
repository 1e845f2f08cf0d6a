"""The references' resampling arithmetic written out in NumPy, for tests that check conta against it."""

from __future__ import annotations

import numpy as np


def bilinear_1d(values: np.ndarray, out: int) -> np.ndarray:
    """Linear resampling with align_corners=False (torch's bilinear, cv2's INTER_LINEAR): output j
    reads source x = (j + 0.5) n / out - 0.5, clamped to the first and last sample."""
    n = len(values)
    x = np.clip((np.arange(out) + 0.5) * n / out - 0.5, 0, n - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    return values[lo] * (1 - (x - lo)) + values[hi] * (x - lo)


def bilinear_2d(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`bilinear_1d` along the rows, then along the columns (bilinear is separable)."""
    rows = np.stack([bilinear_1d(r, size[1]) for r in plane])
    return np.stack([bilinear_1d(c, size[0]) for c in rows.T]).T
