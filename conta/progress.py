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
