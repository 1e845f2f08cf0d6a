"""Neighbour offsets, their lattice paths and index tables for IRNet's inter-pixel affinities.

An affinity between two pixels is 1 - (the strongest boundary on the straight path between
them). Offsets only point into the lower half-plane, so every unordered pair within the radius
is visited exactly once; the random walk adds the transposed pairs itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


def radius_floor(radius: int) -> int:
    """The largest offset component a radius can produce (sizes the source-block margins)."""
    return math.ceil(radius) - 1


def search_offsets(radius: int) -> list[tuple[int, int]]:
    """Directed half-plane offsets (dy, dx) with dy^2 + dx^2 < radius^2 (r=5: 34, r=10: 152)."""
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dy * dy + dx * dx < radius * radius:
                offsets.append((dy, dx))
    return offsets


def offset_path(dy: int, dx: int) -> list[tuple[int, int]]:
    """Lattice points within distance 1 of the segment (0,0)-(dy,dx), destination first, origin last."""
    length_sq = dy * dy + dx * dx
    points = [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < length_sq
    ]
    return sorted(points, key=lambda p: -(abs(p[0]) + abs(p[1])))


@dataclass(frozen=True)
class PathGroup:
    """Offsets whose paths have the same length (the reference gathers each group as one block)."""

    offsets: list[int]               # positions of these offsets in `PathIndex.offsets`
    points: Tensor                   # (n_offsets, length, 2) path points (dy, dx), destination first
    point_ids: Tensor                # (n_offsets, length) the same points as rows of `PathIndex.points`


class PathIndex:
    """Sources, destinations and paths for every (source pixel, offset) pair on a (Hf, Wf) grid.

    Sources are rows [0, Hf - rf) and columns [rf, Wf - rf) with rf = radius_floor(radius), so
    every destination and path point stays inside the grid. Offsets are ordered by path length
    (group by group); every per-offset tensor here and in `path_affinity` uses that order.
    `src`, `dst` and `group_indices` are the reference's flat index tables (to build a sparse
    graph or check against IRNet); `sources`, `destinations` and `path_affinity` read the same
    values through shifted slices, which is faster and needs no index memory.
    """

    def __init__(self, radius: int, grid_size: tuple[int, int]) -> None:
        self.radius = radius
        self.radius_floor = radius_floor(radius)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        rf = self.radius_floor
        height, width = self.grid_size
        self.src_size = (height - rf, width - 2 * rf)
        if min(self.src_size) <= 0:
            raise ValueError(f"grid {self.grid_size} is too small for radius {radius} (needs > {rf} x {2 * rf})")

        by_length: dict[int, list[list[tuple[int, int]]]] = {}
        for dy, dx in search_offsets(radius):
            path = offset_path(dy, dx)
            by_length.setdefault(len(path), []).append(path)
        self.points = sorted({point for paths in by_length.values() for path in paths for point in path})
        row = {point: i for i, point in enumerate(self.points)}
        self.groups: list[PathGroup] = []
        self.paths: list[list[tuple[int, int]]] = []                # per offset, destination first
        for length in sorted(by_length):
            paths = by_length[length]
            ids = torch.tensor([[row[point] for point in path] for path in paths])
            self.groups.append(PathGroup(list(range(len(self.paths), len(self.paths) + len(paths))), torch.tensor(paths), ids))
            self.paths.extend(paths)
        self.offsets = torch.tensor([path[0] for path in self.paths])   # (n_offsets, 2) as (dy, dx)
        self._device_tables: dict[torch.device, tuple[list[Tensor], Tensor]] = {}

        rows = torch.arange(self.src_size[0])
        cols = torch.arange(rf, rf + self.src_size[1])
        self.src = (rows[:, None] * width + cols[None, :]).reshape(-1)          # (n_src,)
        self.dst = self.src[None, :] + self._flat(self.offsets)[:, None]        # (n_offsets, n_src)

    @property
    def n_offsets(self) -> int:
        return len(self.offsets)

    @property
    def n_src(self) -> int:
        return len(self.src)

    def sources(self, maps: Tensor) -> Tensor:
        """Values of (..., Hf, Wf) maps at the source pixels, (..., n_src)."""
        (hs, ws), rf = self.src_size, self.radius_floor
        return maps[..., :hs, rf: rf + ws].reshape(*maps.shape[:-2], hs * ws)

    def destinations(self, maps: Tensor) -> Tensor:
        """Values of (..., Hf, Wf) maps at every offset's destinations, (..., n_offsets, n_src).

        Same as indexing with `dst`, but stacked from shifted slices, which is ~10x faster.
        """
        return self.shifted(maps, self.offsets.tolist()).flatten(-2)

    def shifted(self, maps: Tensor, steps: list[tuple[int, int]] | list[list[int]]) -> Tensor:
        """(..., len(steps), hs, ws): the (..., Hf, Wf) maps over the source block moved by each step."""
        (hs, ws), rf = self.src_size, self.radius_floor
        return torch.stack([maps[..., dy: dy + hs, rf + dx: rf + dx + ws] for dy, dx in steps], dim=-3)

    def device_tables(self, device: torch.device) -> tuple[list[Tensor], Tensor]:
        """Each group's `point_ids`, and the flat grid index (n_points, n_src) of every path point
        of every source, on `device` (made once per device: training reuses them every step)."""
        if device not in self._device_tables:
            flat = self.src[None, :] + self._flat(torch.tensor(self.points))[:, None]
            self._device_tables[device] = [g.point_ids.to(device) for g in self.groups], flat.to(device)
        return self._device_tables[device]

    def _flat(self, points: Tensor) -> Tensor:
        """(…, 2) lattice steps as shifts of a row-major flat index on this grid."""
        return points[..., 0] * self.grid_size[1] + points[..., 1]

    def group_indices(self, group: PathGroup, device: torch.device | None = None) -> Tensor:
        """Flat grid indices (n_offsets, length, n_src) of every path point of every pair in `group`."""
        src = self.src.to(device)
        return src[None, None, :] + self._flat(group.points).to(device)[..., None]


def _chunks(index: PathIndex, device: torch.device) -> Iterator[tuple[slice, int, Tensor]]:
    """(offsets of a group, first path position, point ids (n_offsets, chunk)) in chunks of a
    group's path positions small enough that a chunk's gathered planes number at most n_points."""
    group_ids, _ = index.device_tables(device)
    for group, ids in zip(index.groups, group_ids):
        offsets = slice(group.offsets[0], group.offsets[-1] + 1)
        step = max(1, len(index.points) // ids.shape[0])
        for start in range(0, ids.shape[1], step):
            yield offsets, start, ids[:, start: start + step]


class _PathMax(torch.autograd.Function):
    """max(boundary on the path) for every (offset, source) pair, as (B, n_offsets, hs, ws).

    The map is moved once to every distinct path point (n_points planes: 39 at radius 5, 162 at
    10), and each group of equal-length paths takes its maximum over gathered planes, a chunk of
    path positions at a time, so that the temporary memory stays that of the point planes:
    tens of large ops per step instead of one maximum per path point (242 at radius 5, 2,134 at
    10). Gathering every pair's path at once would cost gigabytes per training batch. Backward
    sends each pair's gradient to the path points equal to its max; such ties happen only where a
    sigmoid saturates, and there its own gradient is 0 anyway.
    """

    @staticmethod
    def forward(ctx, boundary: Tensor, index: PathIndex) -> Tensor:
        planes = index.shifted(boundary, index.points)                          # (B, n_points, hs, ws)
        peak = boundary.new_empty(boundary.shape[0], index.n_offsets, *index.src_size)
        for offsets, start, ids in _chunks(index, boundary.device):
            values = _gather(planes, ids).amax(dim=2)
            if start == 0:
                peak[:, offsets] = values
            else:
                torch.maximum(peak[:, offsets], values, out=peak[:, offsets])
        ctx.index = index
        ctx.save_for_backward(boundary, peak)
        return peak

    @staticmethod
    def backward(ctx, grad_peak: Tensor) -> tuple[Tensor, None]:
        boundary, peak = ctx.saved_tensors
        index = ctx.index
        planes = index.shifted(boundary, index.points)
        grad_planes = torch.zeros_like(planes)
        for offsets, _, ids in _chunks(index, boundary.device):
            hits = torch.where(_gather(planes, ids) == peak[:, offsets, None], grad_peak[:, offsets, None], 0.0)
            grad_planes.index_add_(1, ids.reshape(-1), hits.flatten(1, 2))
        _, flat = index.device_tables(boundary.device)
        grad = torch.zeros_like(boundary)
        grad.view(boundary.shape[0], -1).index_add_(1, flat.reshape(-1), grad_planes.flatten(1))
        return grad, None


def _gather(planes: Tensor, ids: Tensor) -> Tensor:
    """(B, n_points, hs, ws) planes at point ids (n, m) -> (B, n, m, hs, ws)."""
    return planes.index_select(1, ids.reshape(-1)).view(planes.shape[0], *ids.shape, *planes.shape[2:])


def path_affinity(boundary: Tensor, index: PathIndex) -> Tensor:
    """Affinities 1 - max(boundary on the path), shape (B, n_offsets, n_src), from (B, Hf, Wf)."""
    if boundary.dim() != 3 or tuple(boundary.shape[1:]) != index.grid_size:
        raise ValueError(f"boundary must be (B, {index.grid_size[0]}, {index.grid_size[1]}), got {tuple(boundary.shape)}")
    peak = _PathMax.apply(boundary, index)
    return 1.0 - peak.reshape(boundary.shape[0], index.n_offsets, index.n_src)
