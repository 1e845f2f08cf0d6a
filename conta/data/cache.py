"""Where files derived from a dataset (tag tables, COCO semantic masks) are kept.

Deriving them is slow (10k XML files, 120k COCO masks) and deterministic, so they are written once
and reused. Shared datasets on clusters are often read-only, so the default falls back from the
dataset's own folder to the user's cache; `data.cache_dir` overrides both.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_NAME = ".conta_cache"


def dataset_cache_dir(root: str | Path, configured: str | Path | None = None) -> Path:
    """`configured`, else <root>/.conta_cache when root is writable, else ~/.cache/conta/<name>-<hash>."""
    if configured:
        return Path(configured).expanduser()
    root = Path(root).resolve()
    if os.access(root, os.W_OK):
        return root / CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "conta"
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:12]
    return base / f"{root.name}-{digest}"
