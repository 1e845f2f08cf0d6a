"""The epoch-based training loop of the classifier and the IRN, with whole-state resume.

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

from conta.data.transforms import sample_rng
from conta.engine.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from conta.engine.distributed import RankSlices, all_reduce_sum, is_main, world_size, wrap_ddp
from conta.engine.precision import Precision
from conta.engine.schedule import PolySchedule
from conta.errors import ContaError
from conta.progress import progress

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
ValidateFn = Callable[[torch.nn.Module], dict[str, float]]


class LossBuffer:
    """The loss tensors of the last steps, read back to the host only when `flush`ed.

    Reading a loss every step (`.item()`, or an all-reduce of it as a number) makes the host wait
    for the device to finish that step, so it cannot queue the next one meanwhile; the loops
    flush every `log_every` steps: one synchronisation and one all-reduce for all of them. The
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


class EpochAugmented(Dataset):
    """Base of the training sets: each sample's random choices come from (seed, epoch, index),
    the epoch set by the loop, so a resumed run draws exactly the samples it would have drawn."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def sample_rng(self, index: int) -> np.random.Generator:
        return sample_rng(self.seed, self.epoch, index)

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


def train_epochs(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: PolySchedule,
    dataset: Dataset,
    loss_fn: LossFn,
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
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    precision = plan.precision
    scaler = precision.scaler()
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # empty when saved without fp16 loss scaling
            scaler.load_state_dict(state["scaler"])
        restore_rng(state)
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        history = list(state.get("history", []))
        if start_epoch < plan.epochs:
            log(f"{desc}: resuming after epoch {start_epoch} (step {step}) from {checkpoint_path}")
    if world_size() > 1 and not plan.drop_last:
        raise ContaError(f"{desc}: a last partial batch cannot be split over {world_size()} processes (drop_last)")
    n_steps = steps_per_epoch(len(dataset), plan.batch_size, plan.drop_last)
    net = wrap_ddp(precision.model(model), device)
    samples, loader = _EpochSamples(len(dataset)), None
    for epoch in range(start_epoch, plan.epochs):
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(plan.seed * 1000 + epoch))
        samples.use(epoch, RankSlices(order.tolist(), plan.batch_size, range(n_steps), f"{desc}: batch size"))
        if loader is None:  # one loader for all epochs: its workers start once
            loader = DataLoader(_EpochIndexed(dataset), batch_size=samples.slices.local, sampler=samples,
                                num_workers=plan.num_workers, pin_memory=device.type == "cuda",
                                persistent_workers=plan.num_workers > 0,
                                generator=torch.Generator().manual_seed(plan.seed))  # not the global RNG
        net.train()
        totals: dict[str, float] = {}
        seen, started = 0, time.perf_counter()
        pending = LossBuffer()

        def read_back() -> None:  # every rank sees the same means, so all stop together on NaN
            flushed = pending.flush(head=lambda values: values[0],
                                    error=lambda at, loss: f"{desc}: loss is {loss} at step {at} (epoch {epoch + 1}); "
                                                           "lower the learning rate or check the data")
            for _, values, (names, n), _ in flushed:
                for key, value in zip(names, values):
                    totals[key] = totals.get(key, 0.0) + value * n
            if flushed:
                rate = seen * world_size() / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{flushed[-1][3]:.4f}", img_s=f"{rate:.1f}")

        bar = progress(loader, total=n_steps, desc=f"{desc} {epoch + 1}/{plan.epochs}")
        for batch in bar:
            batch = {k: precision.input(v.to(device, non_blocking=True)) if torch.is_tensor(v) else v
                     for k, v in batch.items()}
            schedule.apply(step)
            with precision.autocast():
                loss, parts = loss_fn(net, batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
            seen += n
            pending.add(step, [loss, *parts.values()], (["loss", *parts], n))
            step += 1
            if step % plan.log_every == 0:
                read_back()
        read_back()
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        summed = all_reduce_sum(np.array([seen, *totals.values()], dtype=np.float64))
        record.update({f"train_{k}": float(v / max(summed[0], 1)) for k, v in zip(totals, summed[1:])})
        if validate is not None:
            model.eval()
            with torch.no_grad(), precision.autocast():
                record.update({f"val_{k}": v for k, v in validate(model).items()})
            model.train()
        history.append(record)
        log(f"{desc}: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if is_main():
            save_checkpoint(checkpoint_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                            scaler=scaler.state_dict(), epoch=epoch, step=step, history=history)
    return history
