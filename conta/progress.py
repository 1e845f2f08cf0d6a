"""Progress bars that stay quiet when output is not a terminal (CI logs, tests) and on every
rank but 0 (N processes would draw N bars over each other)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

from conta.engine.distributed import is_main

T = TypeVar("T")


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", **kwargs: Any) -> tqdm:
    disable = os.environ.get("CONTA_PROGRESS", "") == "0" or not sys.stderr.isatty() or not is_main()
    return tqdm(iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


def counter(total: int, desc: str) -> tqdm:
    """A bar advanced by hand (`bar.update()`), for work that is not a loop over an iterable."""
    return progress(None, total=total, desc=desc)


def rate(count: int, seconds: float, unit: str = "image") -> str:
    """'12.3 images/s', or '4.2 s/image' below one per second, where a rate would print as 0.0."""
    per_second = count / max(seconds, 1e-9)
    if per_second >= 1 or count == 0:
        return f"{per_second:.1f} {unit}s/s"
    return f"{seconds / count:.1f} s/{unit}"
