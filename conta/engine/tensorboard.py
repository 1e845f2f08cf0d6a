"""A small TensorBoard logger for training loops, and the trainer's hook that drives it (replaces deeplab-pytorch's torchnet meter).

It logs what deeplab-pytorch logs: a moving-average training loss, the learning rate of every
optimizer group, and image panels, and it can be resumed (the loss window is part of its state,
and events past the resume step are purged so a crash leaves no duplicate curve segments).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from conta.engine.distributed import is_main
from conta.engine.trainer import Hook, Trainer
from conta.progress import rate


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


class TensorBoard(Hook):
    """Rank 0's TensorBoard and text log of a run: each read-back loss into the moving average
    (shown on the progress bar), the average and the learning rates every `log_every` steps (also
    as a log line when there is no bar), and `image()` every `image_every` steps. The average's
    window is part of the checkpoint, so a resumed run logs the curve an uninterrupted one would."""

    def __init__(self, log_dir: Path, average_window: int, log_every: int, image_every: int, desc: str,
                 image: Callable[[], np.ndarray], log: Callable[[str], None]) -> None:
        self.log_dir, self.window, self.log_every, self.image_every = log_dir, average_window, log_every, image_every
        self.desc, self.image, self.log = desc, image, log
        self.logger: TrainLogger | None = None
        self.loaded: list[float] | None = None
        self.average = float("nan")
        self.start, self.started = 0, 0.0

    def before_train(self, trainer: Trainer) -> None:
        if is_main():  # ranks > 0 only train
            self.logger = TrainLogger(self.log_dir, self.window, trainer.step, self.loaded)
        self.start, self.started = trainer.step, time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        if self.logger is None:
            return
        for *_, loss in trainer.flushed:
            self.average = self.logger.add_loss(loss)
        if trainer.flushed:
            trainer.bar.set_postfix(loss=f"{self.average:.4f}")
        done = trainer.step
        if done % self.log_every == 0:
            self.logger.log_scalars(done, trainer.optimizer)
            if trainer.bar.disable:
                self.log(f"{self.desc}: iteration {done}/{trainer.max_steps} loss {self.average:.4f} "
                         f"lr {trainer.optimizer.param_groups[0]['lr']:.3g} "
                         f"({rate(done - self.start, time.perf_counter() - self.started, 'iteration')})")
        if done % self.image_every == 0:
            self.logger.log_image("train/image_pred_target", self.image(), done)

    def after_train(self, trainer: Trainer) -> None:
        if self.logger is not None:
            self.logger.close()

    def state_dict(self) -> dict[str, Any]:
        return {"loss_window": list(self.logger.loss.values)} if self.logger is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded = state.get("loss_window")
