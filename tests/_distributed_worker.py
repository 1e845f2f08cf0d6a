"""What tests/test_distributed.py starts under torchrun: stages 1-5 in every process.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_distributed_worker.py CONFIG [KEY=VALUE ...]

CAM train (DDP), infer (sharded), evaluate (confusion counts all-reduced), seed labels
(sharded), IRN training (DDP), the random walk (sharded), DeepLab training (DDP) and test
(sharded, scores all-reduced), as the `conta` stage commands would, but in one launch, so the
test starts processes once.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from conta.config import Config, load_config
from conta.engine.device import resolve_device
from conta.engine.distributed import barrier, init_distributed, teardown
from conta.stages import cam, seg
from conta.stages.pseudo_mask import run_pseudo_mask_stages
from conta.stages.round_context import RoundContext


def run_stages(cfg: Config, log: Callable[[str], None] = print) -> None:
    """Stages 1-5 of round 0; the test runs the same in one process for reference."""
    rnd = RoundContext.of(cfg, 0)
    cam.train(rnd, log=log)
    cam.infer(rnd, log=log)
    cam.evaluate(rnd, log=log)
    run_pseudo_mask_stages(rnd, log=log)
    seg.train(rnd, log=log)
    seg.test(rnd, "val", log=log)


def main(config: str, *overrides: str) -> None:
    cfg = load_config(config, overrides)
    init_distributed(resolve_device(cfg.run.device))
    try:
        run_stages(cfg)
        barrier()  # as conta.cli does: no rank tears the group down while another is still working
    finally:
        teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
