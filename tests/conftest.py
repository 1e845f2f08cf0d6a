"""Shared fixtures. The dataset writers live in tests/_fixtures.py (import them directly when a test
needs the helpers themselves: `from _fixtures import make_voc_dataset, write_voc_xml`).

Fixtures:
    make_voc   factory `make_voc(name="voc", **kwargs) -> VocFixture` writing
               `make_voc_dataset(tmp_path / name, **kwargs)`; see its docstring for the arguments
               (n, size, classes, splits, masks, class_names_file)
    tiny_voc   `make_voc()` with the defaults: 4 images of 24 x 32, classes cat/dog/person,
               splits train (all four) and val (the last two), palette masks with 255 rings
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _fixtures import VocFixture, make_voc_dataset


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Test tensors are tiny, so intra-op threads only add overhead; on a busy machine OpenMP's
    spin-waiting made the CAM stage tests 30x slower with two threads than with one."""
    torch.set_num_threads(1)


@pytest.fixture
def make_voc(tmp_path: Path) -> Callable[..., VocFixture]:
    def factory(name: str = "voc", **kwargs) -> VocFixture:
        return make_voc_dataset(tmp_path / name, **kwargs)

    return factory


@pytest.fixture
def tiny_voc(make_voc: Callable[..., VocFixture]) -> VocFixture:
    return make_voc()
