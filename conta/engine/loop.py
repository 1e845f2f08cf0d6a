"""The epoch-based training loop of the classifier and the IRN, with whole-state resume.

Batches are drawn in an order that depends only on (seed, epoch) and samples are augmented from
(seed, epoch, index) (datasets expose `set_epoch`), so a run interrupted after any epoch and
resumed from its checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from conta.engine.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from conta.engine.schedule import PolySchedule
from conta.errors import ContaError
from conta.progress import progress

LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
ValidateFn = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class EpochTraining:
    epochs: int
    batch_size: int
    seed: int = 0
    num_workers: int = 0
    drop_last: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)


def steps_per_epoch(n_samples: int, batch_size: int, drop_last: bool = True) -> int:
    steps = n_samples // batch_size if drop_last else math.ceil(n_samples / batch_size)
    if steps == 0:
        raise ContaError(f"{n_samples} training images are fewer than one batch of {batch_size}")
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
    """Train for `plan.epochs`, checkpointing after every epoch; resumes from `checkpoint_path`."""
    history: list[dict[str, Any]] = []
    start_epoch, step = 0, 0
    if checkpoint_path.is_file():
        state = load_checkpoint(checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng(state)
        start_epoch, step = int(state["epoch"]) + 1, int(state["step"])
        history = list(state.get("history", []))
        if start_epoch < plan.epochs:
            log(f"{desc}: resuming after epoch {start_epoch} (step {step}) from {checkpoint_path}")
    n_steps = steps_per_epoch(len(dataset), plan.batch_size, plan.drop_last)
    for epoch in range(start_epoch, plan.epochs):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        generator = torch.Generator().manual_seed(plan.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=plan.batch_size, shuffle=True, drop_last=plan.drop_last,
                            generator=generator, num_workers=plan.num_workers)
        model.train()
        totals: dict[str, float] = {}
        seen, started = 0, time.perf_counter()
        bar = progress(loader, total=n_steps, desc=f"{desc} {epoch + 1}/{plan.epochs}")
        for batch in bar:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            schedule.apply(step)
            loss, parts = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise ContaError(f"{desc}: loss is {loss.item()} at step {step} (epoch {epoch + 1}); "
                                 "lower the learning rate or check the data")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            n = next(v for v in batch.values() if torch.is_tensor(v)).shape[0]
            seen += n
            for key, value in {"loss": loss.item(), **parts}.items():
                totals[key] = totals.get(key, 0.0) + value * n
            rate = seen / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{totals['loss'] / seen:.4f}", img_s=f"{rate:.1f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        record.update({f"train_{k}": v / max(seen, 1) for k, v in totals.items()})
        if validate is not None:
            model.eval()
            with torch.no_grad():
                record.update({f"val_{k}": v for k, v in validate(model).items()})
            model.train()
        history.append(record)
        log(f"{desc}: " + "  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        save_checkpoint(checkpoint_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        epoch=epoch, step=step, history=history)
    return history
