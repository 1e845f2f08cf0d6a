"""Neighbour offsets, their lattice paths and index tables for IRNet's inter-pixel affinities.

An affinity between two pixels is 1 - (the strongest boundary on the straight path between
them). Offsets only point into the lower half-plane, so every unordered pair within the radius
is visited exactly once; the random walk adds the transposed pairs itself.
"""

from __future__ import annotations

import math
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
        self.groups: list[PathGroup] = []
        self.paths: list[list[tuple[int, int]]] = []                # per offset, destination first
        for length in sorted(by_length):
            paths = by_length[length]
            self.groups.append(PathGroup(list(range(len(self.paths), len(self.paths) + len(paths))), torch.tensor(paths)))
            self.paths.extend(paths)
        self.offsets = torch.tensor([path[0] for path in self.paths])   # (n_offsets, 2) as (dy, dx)

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
        (hs, ws), rf = self.src_size, self.radius_floor
        shifted = [maps[..., dy: dy + hs, rf + dx: rf + dx + ws] for dy, dx in self.offsets.tolist()]
        return torch.stack(shifted, dim=-3).reshape(*maps.shape[:-2], self.n_offsets, hs * ws)

    def _flat(self, points: Tensor) -> Tensor:
        """(…, 2) lattice steps as shifts of a row-major flat index on this grid."""
        return points[..., 0] * self.grid_size[1] + points[..., 1]

    def group_indices(self, group: PathGroup, device: torch.device | None = None) -> Tensor:
        """Flat grid indices (n_offsets, length, n_src) of every path point of every pair in `group`."""
        src = self.src.to(device)
        return src[None, None, :] + self._flat(group.points).to(device)[..., None]


def _path_views(boundary: Tensor, index: PathIndex, path: list[tuple[int, int]]) -> list[Tensor]:
    """For every point of one offset's path, the (B, hs, ws) view of the map at the source block shifted there."""
    (hs, ws), rf = index.src_size, index.radius_floor
    return [boundary[:, dy: dy + hs, rf + dx: rf + dx + ws] for dy, dx in path]


class _PathMax(torch.autograd.Function):
    """max(boundary on the path) for every (offset, source) pair, as (B, n_offsets, hs, ws).

    A running max over shifted views instead of gathering every path value: the training graph
    has ~2e6 pairs per image with paths up to 22 points, so the gather would cost gigabytes per
    batch and is ~10x slower. Backward sends each pair's gradient to the path points equal to its
    max; such ties happen only where a sigmoid saturates, and there its own gradient is 0 anyway.
    """

    @staticmethod
    def forward(ctx, boundary: Tensor, index: PathIndex) -> Tensor:
        peak = boundary.new_empty(boundary.shape[0], index.n_offsets, *index.src_size)
        for o, path in enumerate(index.paths):
            views = _path_views(boundary, index, path)
            peak[:, o] = views[0]
            for view in views[1:]:
                torch.maximum(peak[:, o], view, out=peak[:, o])
        ctx.index = index
        ctx.save_for_backward(boundary, peak)
        return peak

    @staticmethod
    def backward(ctx, grad_peak: Tensor) -> tuple[Tensor, None]:
        boundary, peak = ctx.saved_tensors
        grad = torch.zeros_like(boundary)
        for o, path in enumerate(ctx.index.paths):
            for view, grad_view in zip(_path_views(boundary, ctx.index, path), _path_views(grad, ctx.index, path)):
                grad_view.add_(torch.where(view == peak[:, o], grad_peak[:, o], 0.0))
        return grad, None


def path_affinity(boundary: Tensor, index: PathIndex) -> Tensor:
    """Affinities 1 - max(boundary on the path), shape (B, n_offsets, n_src), from (B, Hf, Wf)."""
    if boundary.dim() != 3 or tuple(boundary.shape[1:]) != index.grid_size:
        raise ValueError(f"boundary must be (B, {index.grid_size[0]}, {index.grid_size[1]}), got {tuple(boundary.shape)}")
    peak = _PathMax.apply(boundary, index)
    return 1.0 - peak.reshape(boundary.shape[0], index.n_offsets, index.n_src)
