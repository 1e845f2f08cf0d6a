"""The one training loop of every stage (CAM, IRN, DeepLab, pretraining), after detectron2's engine.

A stage supplies a step function, `(net, batch) -> (loss, parts)`, and the trainer does the rest
of an optimizer step: device transfer, autocast, backward (with fp16 loss scaling), gradient
accumulation over micro-batches (one DDP all-reduce, with the last) and the optimizer step.
Everything around the step is a `Hook`: the LR schedule, the loss read-back and NaN guard, the
progress bar, logging and TensorBoard, the per-epoch record with validation, and checkpoints.
`Trainer.state_dict` is the whole training state (model, optimizer, loss scaler, step count and
every hook's state), so one `Checkpointer` resumes any stage exactly where it stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conta.engine.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from conta.engine.distributed import all_reduce_sum, grad_sync, is_main, world_size, wrap_ddp
from conta.engine.precision import Precision
from conta.engine.schedule import PolySchedule
from conta.errors import ContaError
from conta.progress import progress

StepFn = Callable[[torch.nn.Module, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(net, one micro-batch on the device) -> (loss, named extra losses to log); run under autocast."""
Batches = Callable[[int], Iterator[Any]]
"""start step -> the micro-batches from there on, `accumulate` of them per step."""


class LossBuffer:
    """The loss tensors of the last steps, read back to the host only when `flush`ed.

    Reading a loss every step (`.item()`, or an all-reduce of it as a number) makes the host wait
    for the device to finish that step, so it cannot queue the next one meanwhile; the trainer
    flushes every `log_every` steps: one synchronisation and one all-reduce for all of them. The
    values are the floats `.item()` gives, so logs and histories do not change.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[int, list[torch.Tensor], Any]] = []

    def add(self, step: int, values: list[torch.Tensor], meta: Any = None) -> None:
        """Keep one step's 0-d tensors (and anything the caller needs back with them)."""
        self._steps.append((step, [v.detach() for v in values], meta))

    def flush(self, head: Callable[[list[float]], float],
              error: Callable[[int, float], str]) -> list[tuple[int, list[float], Any, float]]:
        """(step, values, meta, mean over ranks of head(values)) for every kept step, in order.

        Collective under torchrun (every rank flushes at the same steps); raises
        ContaError(error(step, mean)) at the first step whose mean is not finite, on every rank.
        """
        steps, self._steps = self._steps, []
        if not steps:
            return []
        flat = torch.stack([v.to(torch.float64) for _, values, _ in steps for v in values]).tolist()
        floats, start = [], 0
        for _, values, _ in steps:
            floats.append(flat[start: start + len(values)])
            start += len(values)
        means = all_reduce_sum(np.array([head(v) for v in floats], dtype=np.float64)) / world_size()
        for (step, _, _), mean in zip(steps, means):
            if not math.isfinite(mean):
                raise ContaError(error(step, float(mean)))
        return [(step, v, meta, float(mean)) for (step, _, meta), v, mean in zip(steps, floats, means)]


def to_device(batch: Any, device: torch.device, precision: Precision) -> Any:
    """Every tensor of a batch (a dict, tuple or list of them) on `device`, images in `precision`'s layout."""
    if torch.is_tensor(batch):
        return precision.input(batch.to(device, non_blocking=True))
    if isinstance(batch, dict):
        return {k: to_device(v, device, precision) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device, precision) for v in batch)
    return batch


def batch_size(batch: Any) -> int:
    """Samples in a batch: the first dimension of its first tensor."""
    values = batch.values() if isinstance(batch, dict) else batch
    return next(v for v in values if torch.is_tensor(v)).shape[0]


def take_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              step_fn: StepFn, batches: list[Any], device: torch.device,
              precision: Precision = Precision()) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One optimizer step over `batches`, accumulated: with several, each loss is divided by their
    number (one effective batch) and under DDP the gradients are all-reduced once, with the last
    backward pass. Returns the (divided) micro-batch losses, detached on the device (no host
    synchronisation), and the last micro-batch's parts."""
    net.zero_grad(set_to_none=True)
    losses: list[torch.Tensor] = []
    parts: dict[str, torch.Tensor] = {}
    for j, batch in enumerate(batches):
        batch = to_device(batch, device, precision)
        with grad_sync(net, now=j == len(batches) - 1):
            with precision.autocast():
                loss, parts = step_fn(net, batch)
            if len(batches) > 1:
                loss = loss / len(batches)
            scaler.scale(loss).backward()
        losses.append(loss.detach())
    scaler.step(optimizer)
    scaler.update()
    return losses, parts


class Hook:
    """Something done around the steps; `state_dict` entries go into the trainer's checkpoint."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_step(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        """Called when training ends, also by an error (close files here)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Trainer:
    """Run `step_fn` from `step` to `max_steps`, each step over `accumulate` micro-batches.

    After each step `flushed` holds the losses `LossCheck` read back at it (else []), `seen` the
    samples this process trained on in it, and `bar` the progress bar of `ProgressBar` (or None).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step_fn: StepFn, max_steps: int,
                 device: torch.device, hooks: list[Hook], precision: Precision = Precision(), accumulate: int = 1,
                 checkpointer: Checkpointer | None = None) -> None:
        self.model, self.optimizer, self.step_fn, self.max_steps = model, optimizer, step_fn, max_steps
        self.device, self.precision, self.accumulate = device, precision, accumulate
        self.checkpointer = checkpointer
        self.hooks = [*hooks, *([checkpointer] if checkpointer is not None else [])]
        self.scaler = precision.scaler()
        self.net = wrap_ddp(precision.model(model), device)
        self.step = 0
        self.losses = LossBuffer()
        self.flushed: list[tuple[int, list[float], Any, float]] = []
        self.seen = 0
        self.bar: Any = None

    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "step": self.step}
        for hook in self.hooks:
            state.update(hook.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The state of `state_dict`; DeepLab checkpoints of the previous layout count in "iteration"."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # empty when saved without fp16 loss scaling
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"] if "step" in state else state["iteration"])
        for hook in self.hooks:
            hook.load_state_dict(state)

    def train(self, batches: Batches) -> None:
        """Resume from the checkpointer's file if there is one, then train to `max_steps`."""
        if self.checkpointer is not None:
            self.checkpointer.resume(self)
        data = batches(self.step)
        self.net.train()
        try:
            for hook in self.hooks:
                hook.before_train(self)
            while self.step < self.max_steps:
                for hook in self.hooks:
                    hook.before_step(self)
                self.run_step(data)
                for hook in self.hooks:
                    hook.after_step(self)
        finally:
            for hook in self.hooks:
                hook.after_train(self)

    def run_step(self, data: Iterator[Any]) -> None:
        micro = [next(data) for _ in range(self.accumulate)]
        losses, parts = take_step(self.net, self.optimizer, self.scaler, self.step_fn, micro, self.device,
                                  self.precision)
        self.seen = sum(batch_size(b) for b in micro)
        # names: a micro-batch loss counts as "loss" (they sum to the step's loss), then the parts
        self.losses.add(self.step, [*losses, *parts.values()], (["loss"] * len(losses) + list(parts), self.seen))
        self.step += 1
        self.flushed = []


class LRSchedule(Hook):
    """Set the learning rates for each step from a `PolySchedule` (which has its own update period)."""

    def __init__(self, schedule: PolySchedule) -> None:
        self.schedule = schedule

    def before_step(self, trainer: Trainer) -> None:
        self.schedule.apply(trainer.step)


class LossCheck(Hook):
    """Read the kept losses back at the steps `due(step)` says (collectively, into `trainer.flushed`)
    and stop every rank with `error(step, loss)` at the first whose loss (the sum of its
    micro-batch losses, averaged over the ranks) is not finite: the NaN guard."""

    def __init__(self, due: Callable[[int], bool], error: Callable[[int, float], str]) -> None:
        self.due, self.error = due, error

    def after_step(self, trainer: Trainer) -> None:
        if self.due(trainer.step):
            k = trainer.accumulate
            trainer.flushed = trainer.losses.flush(head=lambda values: sum(values[:k]), error=self.error)


class ProgressBar(Hook):
    """A progress bar (`conta.progress`) over the run, or one per `period` steps (an epoch)."""

    def __init__(self, desc: Callable[[int], str], period: int | None = None) -> None:
        self.desc, self.period = desc, period

    def before_step(self, trainer: Trainer) -> None:
        if trainer.bar is None or (self.period and trainer.step % self.period == 0):
            self.after_train(trainer)
            total = self.period or trainer.max_steps
            trainer.bar = progress(None, total=total, initial=0 if self.period else trainer.step,
                                   desc=self.desc(trainer.step))

    def after_step(self, trainer: Trainer) -> None:
        trainer.bar.update()

    def after_train(self, trainer: Trainer) -> None:
        if trainer.bar is not None:
            trainer.bar.close()
            trainer.bar = None


class Checkpointer(Hook):
    """Save the trainer's whole state to `path` after the steps `due(step)` says (rank 0 writes);
    `resume` loads it back, with the RNG state, when the file exists.

    `meta` (how the model was built) is saved with it and must match on resume.
    """

    def __init__(self, path: Path, due: Callable[[int], bool], meta: dict | None = None,
                 on_resume: Callable[[Trainer], None] | None = None) -> None:
        self.path, self.due, self.meta, self.on_resume = Path(path), due, meta, on_resume

    def resume(self, trainer: Trainer) -> bool:
        if not self.path.is_file():
            return False
        state = load_checkpoint(self.path)
        if self.meta is not None and state.get("meta") != self.meta:
            raise ContaError(f"{self.path}: made with another model or dataset; delete it to start over")
        trainer.load_state_dict(state)
        restore_rng(state)
        if self.on_resume is not None:
            self.on_resume(trainer)
        return True

    def after_step(self, trainer: Trainer) -> None:
        if self.due(trainer.step) and is_main():
            save_checkpoint(self.path, **trainer.state_dict(), **({"meta": self.meta} if self.meta is not None else {}))
