"""IRNet's inter-pixel relation network: class boundaries + instance displacements.

A frozen backbone feeds two light branches at stride 4. Training compares path affinities
(1 - max boundary on the path) and displacement differences with labels derived from the
stage-2 seeds; inference feeds the boundary map to the random walk (conta.ops.random_walk).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conta.data.palette import IGNORE_INDEX
from conta.models.backbone import Backbone
from conta.ops.path_index import PathIndex, path_affinity

EPS = 1e-5                          # the reference's guard in logs and pair-count denominators
PAD_MULTIPLE = 16                   # the backbone's output stride


def _upsample_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear upsampling by the integer stride ratio, then a crop to `size`.

    Scaling by the ratio (not resizing to `size`) keeps the reference's sampling grid when the
    input side is not a multiple of 16 and the coarse map is one pixel larger than exact.
    """
    factor = -(-size[0] // x.shape[-2])
    if factor > 1:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return x[..., : size[0], : size[1]]


class _Lateral(nn.Module):
    """1x1 conv (no bias) + GroupNorm, optionally upsampled to a finer map, then ReLU."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = nn.GroupNorm(groups, cout)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x if size is None else _upsample_to(x, size))


class BoundaryBranch(nn.Module):
    """Five 32-channel laterals at stride 4, concatenated, then a 1x1 conv to one logit."""

    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(_Lateral(c, 32, 4) for c in in_channels)
        self.out = nn.Conv2d(32 * len(in_channels), 1, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = tuple(feats[1].shape[-2:])
        maps = [lat(f, size if i > 1 else None) for i, (lat, f) in enumerate(zip(self.laterals, feats))]
        return self.out(torch.cat(maps, dim=1))


class DisplacementBranch(nn.Module):
    """Coarse stages fused at stride 8, then with the stride-4 stages; two output channels (dy, dx)."""

    def __init__(self, in_channels: list[int]) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = in_channels
        self.fine = nn.ModuleList([_Lateral(c1, 64, 8), _Lateral(c2, 128, 16)])
        self.coarse = nn.ModuleList([_Lateral(c3, 256, 16), _Lateral(c4, 256, 16), _Lateral(c5, 256, 16)])
        self.fuse_coarse = _Lateral(768, 256, 16)
        self.out = nn.Sequential(
            nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256), nn.ReLU(inplace=True),
            nn.Conv2d(256, 2, 1, bias=False),
        )

    def forward(self, feats: list[Tensor]) -> Tensor:
        fine_size = tuple(feats[1].shape[-2:])
        coarse_size = tuple(feats[2].shape[-2:])
        d1, d2 = (lat(f) for lat, f in zip(self.fine, feats[:2]))
        d3 = self.coarse[0](feats[2])
        d4 = self.coarse[1](feats[3], coarse_size)
        d5 = self.coarse[2](feats[4], coarse_size)
        d6 = self.fuse_coarse(torch.cat([d3, d4, d5], dim=1), fine_size)
        return self.out(torch.cat([d1, d2, d6], dim=1))


class IRN(nn.Module):
    """Frozen backbone + boundary and displacement branches; outputs at stride 4.

    The backbone gets no gradient and stays in eval mode whatever `train()` is called with; only
    `boundary_head` and `displacement_head` are trainable (the stage gives the latter its lr
    multiplier). In eval the stored `displacement_mean` is subtracted from the displacements.
    With `displacement=False` the network has no displacement branch (only IRNet's instance step
    reads it; the branches share nothing trainable, so the boundaries are the same without it) and
    returns None in its place.
    """

    def __init__(self, backbone: Backbone, displacement: bool = True) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.boundary_head = BoundaryBranch(backbone.out_channels)
        self.displacement_head = DisplacementBranch(backbone.out_channels) if displacement else None
        self.register_buffer("displacement_mean", torch.zeros(2))
        self.backbone.eval()

    def train(self, mode: bool = True) -> IRN:
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, x: Tensor, displacement: bool = True) -> tuple[Tensor, Tensor | None]:
        """(B, 3, H, W) with H, W multiples of 16 -> boundary logits (B, 1, H/4, W/4), displacement
        (B, 2, H/4, W/4), or None without the branch or with `displacement=False` (which skips it)."""
        with torch.no_grad():
            feats = [f.detach() for f in self.backbone.forward_stages(x)]
        boundary = self.boundary_head(feats)
        if self.displacement_head is None or not displacement:
            return boundary, None
        displacement = self.displacement_head(feats)
        if not self.training:
            displacement = displacement - self.displacement_mean.view(1, 2, 1, 1)
        return boundary, displacement


def inference_size(height: int, width: int, crop_size: int) -> tuple[int, int]:
    """The padded input size of an H x W image: the training crop size where the side fits in it
    (IRNet pads every image to its 512 crop, so GroupNorm pools over the padding as it did in
    training), else the side rounded up to a multiple of 16 (images IRNet cannot take)."""
    return tuple(-(-max(side, crop_size) // PAD_MULTIPLE) * PAD_MULTIPLE for side in (height, width))  # type: ignore[return-value]


@torch.no_grad()
def infer_boundary_displacement(model: IRN, image: Tensor, crop_size: int,
                                displacement: bool = True) -> tuple[Tensor, Tensor | None]:
    """Boundary (h, w) in [0, 1] and displacement (2, h, w) (None without the branch, or with
    `displacement=False`, which skips it: the random walk reads only the boundary) for one
    normalised image (3, H, W), from an IRN trained on `crop_size` crops.

    h, w = ceil(H/4), ceil(W/4). The image and its mirror are zero-padded right/bottom to
    `inference_size`; the boundary averages the two logits, the displacement comes from the
    unflipped pass only (it is not flip-symmetric). Runs the model in eval mode and restores
    its previous mode.
    """
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    height, width = image.shape[-2:]
    h, w = -(-height // 4), -(-width // 4)
    padded_h, padded_w = inference_size(height, width, crop_size)
    batch = torch.stack([image, image.flip(-1)])
    batch = F.pad(batch, (0, padded_w - width, 0, padded_h - height))
    was_training = model.training
    model.eval()
    try:
        logits, shifts = model(batch, displacement)
    finally:
        model.train(was_training)
    logits = logits[:, 0, :h, :w]
    boundary = torch.sigmoid(0.5 * logits[0] + 0.5 * logits[1].flip(-1))
    return boundary, None if shifts is None else shifts[0, :, :h, :w]


# ----------------------------------------------------------------------------------------------
# Losses


def affinity_labels(labels: Tensor, index: PathIndex, n_classes: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pair classes over (B, n_offsets, n_src) from stride-4 seed labels (B, Hf, Wf).

    Returns boolean masks (bg_pos, fg_pos, neg): both ends background, both the same class, or
    two different valid labels. 255, and any value above `n_classes` when given, is invalid.
    """
    if labels.dim() != 3 or tuple(labels.shape[1:]) != index.grid_size:
        raise ValueError(f"labels must be (B, {index.grid_size[0]}, {index.grid_size[1]}), got {tuple(labels.shape)}")
    src = index.sources(labels).unsqueeze(1)                                   # (B, 1, n_src)
    dst = index.destinations(labels)                                            # (B, n_off, n_src)
    limit = IGNORE_INDEX if n_classes is None else min(IGNORE_INDEX, n_classes + 1)
    valid = (src < limit) & (dst < limit)
    same = valid & (src == dst)
    return same & (src == 0), same & (src > 0), valid & (src != dst)


PairCounts = tuple[Tensor, Tensor, Tensor]
"""The normalisers of the (bg_pos, fg_pos, neg) means; by default each mask's own count."""


def _masked_mean(values: Tensor, mask: Tensor, scale: float = 1.0, count: Tensor | None = None) -> Tensor:
    """Sum over the pairs in `mask`, divided by scale * their count (+ EPS, so empty masks give 0)."""
    count = mask.sum() if count is None else count
    return (values * mask).sum() / (scale * count.to(values.dtype) + EPS)


def affinity_loss(affinity: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor,
                  counts: PairCounts | None = None) -> tuple[Tensor, Tensor]:
    """(L_pos, L_neg): -log a on positives (bg and fg halves weighted equally), -log(1 - a) on negatives."""
    n_bg, n_fg, n_neg = counts or (None, None, None)
    pos = -torch.log(affinity + EPS)
    loss_pos = 0.5 * _masked_mean(pos, bg_pos, count=n_bg) + 0.5 * _masked_mean(pos, fg_pos, count=n_fg)
    loss_neg = _masked_mean(-torch.log(1.0 + EPS - affinity), neg, count=n_neg)
    return loss_pos, loss_neg


def displacement_loss(displacement: Tensor, index: PathIndex, bg_pos: Tensor, fg_pos: Tensor,
                      counts: PairCounts | None = None) -> tuple[Tensor, Tensor]:
    """(L_dfg, L_dbg): L1 of D(src) - D(dst) against the offset on fg pairs, against 0 on bg pairs.

    Pixels of one instance point at one centroid, so x_i + D_i = x_j + D_j, i.e. D_i - D_j = x_j - x_i.
    """
    n_bg, n_fg, _ = counts or (None, None, None)
    delta = index.sources(displacement).unsqueeze(2) - index.destinations(displacement)  # (B, 2, n_off, n_src)
    target = index.offsets.t().to(delta).unsqueeze(-1)                          # (2, n_off, 1)
    loss_fg = _masked_mean((delta - target).abs().sum(dim=1), fg_pos, scale=2.0, count=n_fg)
    loss_bg = _masked_mean(delta.abs().sum(dim=1), bg_pos, scale=2.0, count=n_bg)
    return loss_fg, loss_bg


def irn_losses(outputs: tuple[Tensor, Tensor | None], labels: Tensor, index: PathIndex,
               n_classes: int | None = None,
               pair_counts: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """All IRN losses for one batch: model outputs at stride 4 and seed labels (B, Hf, Wf) at stride 4.

    `index` must be built for the output grid (training uses radius 10). "total" is
    (L_pos + L_neg) / 2 + (L_dfg + L_dbg) / 2, the affinity half alone when the displacement
    output is None. Losses are computed in float32 whatever the
    autocast dtype: -log(a + 1e-5) needs more precision than bf16 has.

    Each loss is a mean over the batch's pairs. `pair_counts` maps the batch's (bg_pos, fg_pos,
    neg) pair counts to the normalisers; under DDP, their mean over the ranks, so the gradients
    DDP averages are those of one process holding the whole batch (each rank's own counts would
    weight its pairs by how few it has).
    """
    boundary_logits, displacement = (None if t is None else t.float() for t in outputs)
    if tuple(boundary_logits.shape[-2:]) != index.grid_size or (
            displacement is not None and tuple(displacement.shape[-2:]) != index.grid_size):
        raise ValueError(f"outputs are {tuple(boundary_logits.shape[-2:])} but the path index is for {index.grid_size}")
    bg_pos, fg_pos, neg = affinity_labels(labels, index, n_classes)
    counts = None
    if pair_counts is not None:
        counts = tuple(pair_counts(torch.stack([bg_pos.sum(), fg_pos.sum(), neg.sum()])))
    affinity = path_affinity(torch.sigmoid(boundary_logits[:, 0]), index)
    pos, neg_loss = affinity_loss(affinity, bg_pos, fg_pos, neg, counts)
    losses = {"affinity_pos": pos, "affinity_neg": neg_loss, "total": (pos + neg_loss) / 2}
    if displacement is not None:
        dfg, dbg = displacement_loss(displacement, index, bg_pos, fg_pos, counts)
        losses.update(displacement_fg=dfg, displacement_bg=dbg, total=losses["total"] + (dfg + dbg) / 2)
    return losses
