"""A small TensorBoard logger for training loops (replaces deeplab-pytorch's torchnet meter).

It logs what deeplab-pytorch logs: a moving-average training loss, the learning rate of every
optimizer group, and image panels, and it can be resumed (the loss window is part of its state,
and events past the resume step are purged so a crash leaves no duplicate curve segments).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter


class MovingAverage:
    """Mean of the last `window` values (torchnet's MovingAverageValueMeter, without torchnet)."""

    def __init__(self, window: int, values: list[float] | None = None) -> None:
        self.values: deque[float] = deque(values or [], maxlen=window)

    def add(self, value: float) -> float:
        self.values.append(float(value))
        return self.value

    @property
    def value(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")


class TrainLogger:
    """TensorBoard events under `log_dir`; `start_step` > 0 drops stale events of an interrupted run."""

    def __init__(self, log_dir: str | Path, average_window: int, start_step: int = 0,
                 loss_history: list[float] | None = None) -> None:
        self.writer = SummaryWriter(str(log_dir), purge_step=start_step or None)
        self.loss = MovingAverage(average_window, loss_history)

    def add_loss(self, value: float) -> float:
        """Record one iteration's loss; returns the moving average."""
        return self.loss.add(value)

    def log_scalars(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        """The moving-average loss and each group's lr (named by the group's "name" when present)."""
        self.writer.add_scalar("loss/train", self.loss.value, step)
        for i, group in enumerate(optimizer.param_groups):
            self.writer.add_scalar(f"lr/{group.get('name', f'group_{i}')}", group["lr"], step)

    def log_image(self, tag: str, panel: np.ndarray, step: int) -> None:
        """An H x W x 3 uint8 image."""
        self.writer.add_image(tag, panel, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
