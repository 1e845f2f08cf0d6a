"""What tests/test_distributed.py's SyncBN test starts under torchrun: one DeepLab v3+ training step.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_sync_bn_worker.py OUT_DIR

Each of the two processes takes two of the four crops of `batch()`, makes the model's BN
cross-process as `conta seg train` does (seg.sync_bn), takes one step of the stage's own step
function (`SegStep`, through the trainer's `take_step`) and writes its weights and BN statistics
to OUT_DIR/rank<r>.pt. The test runs `one_step` in one process on all four crops with plain BN
and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from conta.config import load_config
from conta.engine.distributed import barrier, init_distributed, rank, teardown, world_size, wrap_ddp
from conta.engine.precision import Precision
from conta.engine.sync_bn import GlooSyncBatchNorm
from conta.seg_predictor import build_seg_model, model_meta
from conta.engine.trainer import take_step
from conta.stages.seg import SegStep, build_optimizer, synchronise_bn

N_CLASSES, SIZE = 3, 33
OVERRIDES = ["seg.model=deeplabv3plus", "seg.arch=resnet18", "seg.width=4", "seg.lr=0.01", "seg.msc_scales=[]"]


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four crops and their labels (no ignored pixels, so every rank's loss has the same normaliser)."""
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(4, 3, SIZE, SIZE, generator=generator),
            torch.randint(0, N_CLASSES, (4, SIZE, SIZE), generator=generator))


def one_step(images: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """A seeded v3+ after one SGD step on (images, labels), as `conta seg train` takes it; returns its
    state dict and the number of BN layers made cross-process (0 in one process)."""
    seg = load_config(None, OVERRIDES).seg
    meta = model_meta(seg, [f"c{i}" for i in range(N_CLASSES)])
    torch.manual_seed(0)
    model = build_seg_model(meta).train()
    for m in model.modules():
        if isinstance(m, nn.Dropout):  # each process draws its own masks: no dropout, so only BN can differ
            m.p = 0.0
    device = torch.device("cpu")
    synchronise_bn(model, meta, seg, len(images), device)
    net = wrap_ddp(model, device)
    optimizer, schedule = build_optimizer(model, seg)
    schedule.apply(0)
    take_step(net, optimizer, Precision().scaler(), SegStep(upsample=True), [(images, labels)], device)
    return model.state_dict(), sum(isinstance(m, GlooSyncBatchNorm) for m in model.modules())


def main(out: str) -> None:
    init_distributed(torch.device("cpu"))
    try:
        images, labels = batch()
        share = slice(rank() * 4 // world_size(), (rank() + 1) * 4 // world_size())
        state, synced = one_step(images[share], labels[share])
        torch.save({"state": state, "synced": synced}, Path(out) / f"rank{rank()}.pt")
        barrier()
    finally:
        teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
