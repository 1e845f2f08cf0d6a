"""CONTA's image-specific context M: attention over the confounder set (the paper's Eq. 3).

    alpha_i = softmax_i( (W1 x_m) . (W2 c_i) / sqrt(n) )       x_m, c_i in R^{hw}; W1, W2 in R^{n x hw}
    M       = sum_i alpha_i * c_i * P(c_i)                      an h x w map

The confounder set C (class-average masks) and the prior P are fixed for a round and stored as
buffers, so they travel inside the classifier's checkpoint; W1 and W2 are trained by the
classification loss because M is computed inside the classifier's forward pass.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ConfounderAttention(nn.Module):
    """Maps a batch of previous-round masks X_m (B, 1, h, w) to the context M (B, 1, h, w)."""

    def __init__(self, confounders: Tensor, prior: Tensor, embed_dim: int | None = None,
                 unit_prior: bool = False) -> None:
        super().__init__()
        if confounders.dim() != 3:
            raise ValueError(f"confounders must be n x h x w, got shape {tuple(confounders.shape)}")
        n, h, w = confounders.shape
        if prior.shape != (n,):
            raise ValueError(f"prior must have {n} entries, got shape {tuple(prior.shape)}")
        self.size = (h, w)
        dim = embed_dim or n  # the authors: the embedding size is n (issue 13 of their tracker)
        self.register_buffer("confounders", confounders.reshape(n, h * w).float().clone())
        self.register_buffer("prior", prior.float().clone())
        self.query = nn.Linear(h * w, dim, bias=False)   # W1
        self.key = nn.Linear(h * w, dim, bias=False)     # W2
        self.reset_parameters()
        self.scale = 1.0 / math.sqrt(n)
        # With a uniform prior M is at most 1/n of a mask; `unit_prior` divides the prior by its
        # mean so M has the range of a mask, which the zero-initialised filters reading it need
        # to learn at all at the backbone's learning rate (docs/conta.md, "Results").
        self.prior_gain = float(n / prior.sum()) if unit_prior else 1.0

    def reset_parameters(self) -> None:
        """W1, W2 ~ N(0, 0.02): small, so the first attention is nearly uniform."""
        nn.init.normal_(self.query.weight, std=0.02)
        nn.init.normal_(self.key.weight, std=0.02)

    @property
    def n_confounders(self) -> int:
        return self.confounders.shape[0]

    def attention(self, xm: Tensor) -> Tensor:
        """(B, 1, h, w) or (B, hw) masks -> (B, n) weights that sum to one."""
        q = self.query(xm.reshape(xm.shape[0], -1).float())        # B x d
        k = self.key(self.confounders)                              # n x d
        return torch.softmax(q @ k.t() * self.scale, dim=1)

    def forward(self, xm: Tensor) -> Tensor:
        alpha = self.attention(xm)                                  # B x n
        weighted = self.confounders * (self.prior * self.prior_gain)[:, None]  # n x hw: c_i P(c_i)
        m = alpha @ weighted                                        # B x hw
        return m.reshape(xm.shape[0], 1, *self.size)

