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
    """Offsets whose paths have the same length, so their boundary values gather as one block."""

    offsets: list[int]               # positions of these offsets in `PathIndex.offsets`
    points: Tensor                   # (n_offsets, length, 2) path points (dy, dx), destination first


class PathIndex:
    """Sources, destinations and paths for every (source pixel, offset) pair on a (Hf, Wf) grid.

    Sources are rows [0, Hf - rf) and columns [rf, Wf - rf) with rf = radius_floor(radius), so
    every destination and path point stays inside the grid. Offsets are ordered by path length
    (group by group); every per-offset tensor here and in `path_affinity` uses that order.
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
        ordered: list[tuple[int, int]] = []
        for length in sorted(by_length):
            paths = by_length[length]
            self.groups.append(PathGroup(list(range(len(ordered), len(ordered) + len(paths))), torch.tensor(paths)))
            ordered.extend(path[0] for path in paths)
        self.offsets = torch.tensor(ordered)                        # (n_offsets, 2) as (dy, dx)

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

    def _flat(self, points: Tensor) -> Tensor:
        """(…, 2) lattice steps as shifts of a row-major flat index on this grid."""
        return points[..., 0] * self.grid_size[1] + points[..., 1]

    def group_indices(self, group: PathGroup, device: torch.device | None = None) -> Tensor:
        """Flat grid indices (n_offsets, length, n_src) of every path point of every pair in `group`."""
        src = self.src.to(device)
        return src[None, None, :] + self._flat(group.points).to(device)[..., None]


def path_affinity(boundary: Tensor, index: PathIndex) -> Tensor:
    """Affinities 1 - max(boundary on the path), shape (B, n_offsets, n_src), from (B, Hf, Wf).

    The maximum's location is found without autograd and the boundary is then gathered there,
    which gives the max's gradient while keeping one index per pair instead of every path value
    (the training graph has ~2e6 pairs per image and paths up to 22 points long).
    """
    if boundary.dim() != 3 or tuple(boundary.shape[1:]) != index.grid_size:
        raise ValueError(f"boundary must be (B, {index.grid_size[0]}, {index.grid_size[1]}), got {tuple(boundary.shape)}")
    flat = boundary.reshape(boundary.shape[0], -1)
    with torch.no_grad():
        argmax = torch.empty(flat.shape[0], index.n_offsets, index.n_src, dtype=torch.long, device=flat.device)
        for group in index.groups:
            paths = index.group_indices(group, flat.device)                     # (g, L, n_src)
            values = flat[:, paths.reshape(-1)].reshape(flat.shape[0], *paths.shape)
            best = values.argmax(dim=2, keepdim=True)                           # (B, g, 1, n_src)
            chosen = paths.expand(flat.shape[0], -1, -1, -1).gather(2, best).squeeze(2)
            argmax[:, group.offsets[0]: group.offsets[-1] + 1] = chosen
    peak = flat.gather(1, argmax.reshape(flat.shape[0], -1)).reshape(argmax.shape)
    return 1.0 - peak
