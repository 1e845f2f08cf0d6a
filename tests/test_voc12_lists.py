"""The packaged PASCAL VOC 2012 split lists (conta/data/lists/voc12/): official sizes and set relations."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conta.data.voc12 as voc12
from conta.data.voc import read_id_list
from conta.data.voc12 import LIST_COUNTS, PACKAGED_LISTS, find_split_list

ID = re.compile(r"20\d\d_\d{6}")


@pytest.fixture(scope="module")
def lists(tmp_path_factory) -> dict[str, list[str]]:
    """Each split as find_split_list resolves it for a dataset folder that carries no lists itself."""
    bare = tmp_path_factory.mktemp("voc_without_lists")
    found = {split: find_split_list(bare, split) for split in LIST_COUNTS}
    assert all(path.parent == PACKAGED_LISTS for path in found.values())
    return {split: read_id_list(path) for split, path in found.items()}


@pytest.mark.parametrize("split", sorted(LIST_COUNTS))
def test_packaged_list_has_the_official_size_and_format(split: str, lists) -> None:
    path = PACKAGED_LISTS / f"{split}.txt"
    text = path.read_text()
    lines = text.splitlines()
    assert text.endswith("\n") and not text.endswith("\n\n") and "\r" not in text
    assert len(lines) == LIST_COUNTS[split] == len(lists[split])
    assert all(ID.fullmatch(line) for line in lines), [line for line in lines if not ID.fullmatch(line)][:5]
    assert len(set(lines)) == len(lines)


def test_packaged_lists_nest_and_do_not_overlap(lists) -> None:
    train, train_aug, val, test = (set(lists[s]) for s in ("train", "train_aug", "val", "test"))
    assert train <= train_aug
    assert not val & train_aug
    assert not test & train_aug and not test & val
    assert not train & val


def test_lists_are_sorted_as_the_official_ones(lists) -> None:
    # train_aug too: sorted, as IRNet's list is and as `conta data voc-lists` writes it
    for split in LIST_COUNTS:
        assert lists[split] == sorted(lists[split]), split


def test_the_dataset_folder_still_wins_over_the_package(tmp_path: Path) -> None:
    own = tmp_path / "ImageSets" / "Segmentation" / "val.txt"
    own.parent.mkdir(parents=True)
    own.write_text("2007_000033\n")
    assert voc12.find_split_list(tmp_path, "val") == own
    assert voc12.find_split_list(tmp_path, "train") == PACKAGED_LISTS / "train.txt"
