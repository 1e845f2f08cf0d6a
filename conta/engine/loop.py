"""Epoch-based training (the classifier, the IRN, pretraining) on `conta.engine.trainer.Trainer`.

Batches are drawn in an order that depends only on (seed, epoch) and samples are augmented from
(seed, epoch, index) (datasets expose `set_epoch`), so a run interrupted after any epoch and
resumed from its checkpoint ends with the same weights as an uninterrupted one.

Under torchrun the model is wrapped in DDP and each step's global batch of `batch_size` samples
is split into one slice per rank (`RankSlices`), so N processes train on the samples one process
sees, step for step. Validation is collective (each rank scores its shard); only rank 0 writes the
checkpoint, and every rank resumes from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from conta.engine.distributed import RankSlices, all_reduce_sum, world_size
from conta.engine.precision import Precision
from conta.engine.schedule import PolySchedule
from conta.engine.trainer import Checkpointer, Hook, LossCheck, LRSchedule, ProgressBar, StepFn, Trainer
from conta.errors import ContaError

ValidateFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class EpochTraining:
    epochs: int
    batch_size: int
    seed: int = 0
    num_workers: int = 0
    drop_last: bool = True
    precision: Precision = field(default_factory=Precision)
    history: list[dict[str, Any]] = field(default_factory=list)
    log_every: int = 1                   # steps between loss read-backs (and NaN checks)


class _EpochSamples(Sampler[int]):
    """The current epoch's `RankSlices` as indices epoch * n + i into `_EpochIndexed`, so that one
    DataLoader, with persistent workers, serves every epoch (it re-reads the sampler each epoch)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0
        self.slices: RankSlices | None = None

    def use(self, epoch: int, slices: RankSlices) -> None:
        self.epoch, self.slices = epoch, slices

    def __iter__(self) -> Iterator[int]:
        return (self.epoch * self.n + i for i in self.slices)

    def __len__(self) -> int:
        return len(self.slices)


class _EpochIndexed(Dataset):
    """Item epoch * n + i is sample i of `dataset` in that epoch, in whichever process reads it
    (a persistent worker's copy of the dataset never sees the main process's set_epoch)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> Any:
        epoch, index = divmod(k, len(self.dataset))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[index]


def steps_per_epoch(n_samples: int, batch_size: int, drop_last: bool = True, key: str = "the batch size") -> int:
    steps = n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)
    if steps == 0:
        raise ContaError(f"{n_samples} training images are fewer than one batch of {batch_size}; lower {key}")
    return steps




class EpochBatches:
    """The training batches from a start step on: epoch e visits `dataset` in the permutation drawn
    from (seed, e), each global batch split over the ranks; one DataLoader serves every epoch."""

    def __init__(self, dataset: Dataset, plan: EpochTraining, n_steps: int, device: torch.device, desc: str) -> None:
        self.dataset, self.plan, self.n_steps, self.device, self.desc = dataset, plan, n_steps, device, desc

    def __call__(self, start_step: int) -> Iterator[Any]:
        samples, loader = _EpochSamples(len(self.dataset)), None
        for epoch in range(start_step // self.n_steps, self.plan.epochs):
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.plan.seed * 1000 + epoch))
            samples.use(epoch, RankSlices(order.tolist(), self.plan.batch_size, range(self.n_steps),
                                          f"{self.desc}: batch size"))
            if loader is None:  # one loader for all epochs: its workers start once
                loader = DataLoader(_EpochIndexed(self.dataset), batch_size=samples.slices.local, sampler=samples,
                                    num_workers=self.plan.num_workers, pin_memory=self.device.type == "cuda",
                                    persistent_workers=self.plan.num_workers > 0,
                                    generator=torch.Generator().manual_seed(self.plan.seed))  # not the global RNG
            yield from loader


class EpochRecord(Hook):
    """Per epoch: the mean training losses over all samples and ranks, then `validate` (collective,
    in eval mode under autocast), one history record and one log line. Its state is the history."""

    def __init__(self, n_steps: int, desc: str, validate: ValidateFn | None, log: Callable[[str], None]) -> None:
        self.n_steps, self.desc, self.validate, self.log = n_steps, desc, validate, log
        self.history: list[dict[str, Any]] = []
        self.totals: dict[str, float] = {}
        self.seen, self.started = 0, 0.0

    def before_step(self, trainer: Trainer) -> None:
        if trainer.step % self.n_steps == 0:
            self.totals, self.seen, self.started = {}, 0, time.perf_counter()

    def after_step(self, trainer: Trainer) -> None:
        self.seen += trainer.seen
        for _, values, (names, n), _ in trainer.flushed:
            for key, value in zip(names, values):
                self.totals[key] = self.totals.get(key, 0.0) + value * n
        if trainer.flushed and trainer.bar is not None:
            rate = self.seen * world_size() / max(time.perf_counter() - self.started, 1e-9)
            trainer.bar.set_postfix(loss=f"{trainer.flushed[-1][3]:.4f}", img_s=f"{rate:.1f}")
        if trainer.step % self.n_steps == 0:
            self.end_epoch(trainer)

    def end_epoch(self, trainer: Trainer) -> None:
        record: dict[str, Any] = {"epoch": trainer.step // self.n_steps, "step": trainer.step}
        summed = all_reduce_sum(np.array([self.seen, *self.totals.values()], dtype=np.float64))
        record.update({f"train_{k}": float(v / max(summed[0], 1)) for k, v in zip(self.totals, summed[1:])})
        if self.validate is not None:
            trainer.model.eval()
            with torch.no_grad(), trainer.precision.autocast():
                record.update({f"val_{k}": v for k, v in self.validate(trainer.model).items()})
            trainer.model.train()
        self.history.append(record)
        self.log(f"{self.desc}: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in record.items()))

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": len(self.history) - 1, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = list(state.get("history", []))


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: PolySchedule,
    dataset: Dataset,
    loss_fn: StepFn,
    plan: EpochTraining,
    checkpoint_path: Path,
    device: torch.device,
    desc: str,
    validate: ValidateFn | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train for `plan.epochs`, checkpointing after every epoch; resumes from `checkpoint_path`.

    `plan.batch_size` is the effective batch over all processes; the logged losses are averages
    over all of them, so the history does not depend on the process count.
    """
    if world_size() > 1 and not plan.drop_last:
        raise ContaError(f"{desc}: a last partial batch cannot be split over {world_size()} processes (drop_last)")
    n_steps = steps_per_epoch(len(dataset), plan.batch_size, plan.drop_last)

    def resumed(trainer: Trainer) -> None:
        if trainer.step < trainer.max_steps:
            log(f"{desc}: resuming after epoch {trainer.step // n_steps} (step {trainer.step}) from {checkpoint_path}")

    def nan_error(step: int, loss: float) -> str:
        return (f"{desc}: loss is {loss} at step {step} (epoch {step // n_steps + 1}); "
                "lower the learning rate or check the data")

    record = EpochRecord(n_steps, desc, validate, log)
    trainer = Trainer(model, optimizer, loss_fn, n_steps * plan.epochs, device, precision=plan.precision, hooks=[
        LRSchedule(schedule),
        ProgressBar(lambda step: f"{desc} {step // n_steps + 1}/{plan.epochs}", period=n_steps),
        LossCheck(lambda step: step % plan.log_every == 0 or step % n_steps == 0, nan_error),
        record,
    ], checkpointer=Checkpointer(checkpoint_path, lambda step: step % n_steps == 0, on_resume=resumed))
    trainer.train(EpochBatches(dataset, plan, n_steps, device, desc))
    return record.history
