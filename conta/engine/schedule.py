"""Polynomial learning-rate decay with per-group multipliers and an update period."""

from __future__ import annotations

import torch


def poly_factor(step: int, max_step: int, power: float) -> float:
    return max(0.0, 1.0 - step / max_step) ** power


class PolySchedule:
    """lr_g = base_lr * lr_mult_g * (1 - step/max_step)^power, refreshed every `period` steps.

    `period=1` is IRNet's per-step decay; deeplab-pytorch refreshes every 10 iterations.
    Groups carry their multiplier in `group["lr_mult"]` (1 when absent).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, max_step: int,
                 power: float = 0.9, period: int = 1) -> None:
        self.optimizer = optimizer
        self.base_lr = base_lr
        self.max_step = max(1, max_step)
        self.power = power
        self.period = period
        self.apply(0)

    def lr_at(self, step: int) -> float:
        """The base learning rate in force for the update after `step` completed updates."""
        step = (step // self.period) * self.period
        return self.base_lr * poly_factor(step, self.max_step, self.power)

    def apply(self, step: int) -> None:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
