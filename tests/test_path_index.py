"""Path indices and path affinities on hand-made boundary maps."""

from __future__ import annotations

import pytest
import torch

from conta.ops.path_index import PathIndex, offset_path, path_affinity, radius_floor, search_offsets


@pytest.mark.parametrize("radius,n_offsets,n_groups", [(5, 34, 9), (10, 152, 20)])
def test_offset_and_group_counts(radius: int, n_offsets: int, n_groups: int) -> None:
    offsets = search_offsets(radius)
    assert len(offsets) == len(set(offsets)) == n_offsets
    assert not {(-dy, -dx) for dy, dx in offsets} & set(offsets)     # one direction per pair
    index = PathIndex(radius, (3 * radius, 3 * radius))
    assert index.n_offsets == n_offsets and len(index.groups) == n_groups
    assert sorted(map(tuple, index.offsets.tolist())) == sorted(offsets)


def test_radius_10_lengths_and_training_grid() -> None:
    index = PathIndex(10, (128, 128))
    lengths = [g.points.shape[1] for g in index.groups]
    assert lengths == sorted(lengths) and (lengths[0], lengths[-1]) == (2, 22)
    assert index.radius_floor == radius_floor(10) == 9
    assert index.n_src == 119 * 110 == 13090 and tuple(index.dst.shape) == (152, 13090)


@pytest.mark.parametrize("radius", [5, 10])
def test_paths_hold_both_ends_destination_first(radius: int) -> None:
    for dy, dx in search_offsets(radius):
        path = offset_path(dy, dx)
        assert path[0] == (dy, dx) and path[-1] == (0, 0)
        assert len(set(path)) == len(path)
        for y, x in path:
            assert (dy * x - dx * y) ** 2 < dy * dy + dx * dx
            assert min(0, dy) <= y <= max(0, dy) and min(0, dx) <= x <= max(0, dx)


def test_index_tables_follow_the_grid() -> None:
    height, width, radius = 13, 17, 5
    index = PathIndex(radius, (height, width))
    rf = index.radius_floor
    sy, sx = index.src // width, index.src % width
    assert sy.min() == 0 and sy.max() == height - rf - 1 and sx.min() == rf and sx.max() == width - rf - 1
    ty, tx = index.dst // width, index.dst % width
    assert torch.equal(ty - sy, index.offsets[:, :1].expand_as(ty))                  # no row wrap-around
    assert torch.equal(tx - sx, index.offsets[:, 1:].expand_as(tx))
    for group in index.groups:
        paths = index.group_indices(group)
        assert torch.equal(paths[:, 0], index.dst[group.offsets])                   # destination first
        assert torch.equal(paths[:, -1], index.src.expand(len(group.offsets), -1))  # source last


def _pairs(index: PathIndex) -> tuple[torch.Tensor, torch.Tensor]:
    width = index.grid_size[1]
    return index.src.expand_as(index.dst) % width, index.dst % width


def test_vertical_wall_cuts_affinities() -> None:
    boundary = torch.zeros(1, 12, 20)
    boundary[0, :, 10] = 1.0
    index = PathIndex(5, (12, 20))
    aff = path_affinity(boundary, index)[0]
    sx, tx = _pairs(index)
    touches = (torch.minimum(sx, tx) <= 10) & (torch.maximum(sx, tx) >= 10)
    assert torch.all(aff[touches] == 0.0)
    assert torch.all(aff[~touches] == 1.0)


def test_affinity_is_one_minus_the_strongest_wall_crossed() -> None:
    boundary = torch.full((1, 12, 24), 0.1)
    boundary[0, :, 8] = 0.3
    boundary[0, :, 11] = 0.8
    index = PathIndex(5, (12, 24))
    aff = path_affinity(boundary, index)[0]
    sx, tx = _pairs(index)
    lo, hi = torch.minimum(sx, tx), torch.maximum(sx, tx)
    expected = torch.full_like(aff, 0.9)
    expected[(lo <= 8) & (hi >= 8)] = 0.7
    expected[(lo <= 11) & (hi >= 11)] = 0.2
    assert torch.allclose(aff, expected)


def test_gradient_matches_the_max_over_the_path() -> None:
    torch.manual_seed(0)
    index = PathIndex(5, (9, 14))
    boundary = torch.rand(2, 9, 14, requires_grad=True)
    weights = torch.rand(2, index.n_offsets, index.n_src)
    (path_affinity(boundary, index) * weights).sum().backward()
    ours = boundary.grad.clone()
    boundary.grad = None
    flat = boundary.reshape(2, -1)
    direct = torch.cat([1 - flat[:, index.group_indices(g)].amax(dim=2) for g in index.groups], dim=1)
    (direct * weights).sum().backward()
    assert torch.allclose(ours, boundary.grad)


@pytest.mark.parametrize("radius", [5, 10])
def test_gradient_goes_to_every_tied_maximum(radius: int) -> None:
    """Where several path points hold the max (a saturated sigmoid: here a flat band), each of
    them gets the pair's whole gradient, as in a running max over the path."""
    index = PathIndex(radius, (2 * radius + 2, 2 * radius + 4))
    gen = torch.Generator().manual_seed(1)
    boundary = torch.rand(2, *index.grid_size, generator=gen)
    boundary[:, 2:5] = 0.9                                   # ties on every path through the band
    weights = torch.rand(2, index.n_offsets, index.n_src, generator=gen)
    x = boundary.clone().requires_grad_()
    (path_affinity(x, index) * weights).sum().backward()
    expected = torch.zeros(2, boundary[0].numel(), dtype=torch.float64)
    flat = boundary.reshape(2, -1)
    for group in index.groups:
        cells = index.group_indices(group)                                     # (n, length, n_src)
        values = flat[:, cells]
        hit = values == values.amax(dim=2, keepdim=True)
        share = torch.where(hit, -weights[:, group.offsets, None].double(), 0.0)
        expected.scatter_add_(1, cells.reshape(1, -1).expand(2, -1), share.reshape(2, -1))
    assert torch.allclose(x.grad.double(), expected.reshape(boundary.shape), rtol=1e-5)
    assert (expected != 0).sum() > 0


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        PathIndex(10, (9, 40))
    with pytest.raises(ValueError, match="boundary must be"):
        path_affinity(torch.zeros(1, 10, 10), PathIndex(5, (12, 12)))


def test_sources_and_destinations_match_the_index_tables() -> None:
    index = PathIndex(5, (11, 15))
    maps = torch.randn(2, 3, 11, 15)
    flat = maps.reshape(2, 3, -1)
    assert torch.equal(index.sources(maps), flat[..., index.src])
    assert torch.equal(index.destinations(maps), flat[..., index.dst])
