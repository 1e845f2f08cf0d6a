"""What tests/test_distributed.py starts under torchrun: the CAM stage in every process.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/_distributed_worker.py CONFIG [KEY=VALUE ...]

Train (DDP), infer (sharded) and evaluate (confusion counts all-reduced), as `conta cam train`,
`cam infer` and `cam eval` would, but in one launch, so the test pays for starting the processes once.
"""

from __future__ import annotations

import sys

from conta.config import load_config
from conta.engine.device import resolve_device
from conta.engine.distributed import init_distributed, teardown
from conta.stages import cam


def main(config: str, *overrides: str) -> None:
    cfg = load_config(config, overrides)
    init_distributed(resolve_device(cfg.run.device))
    try:
        cam.train(cfg, 0)
        cam.infer(cfg, 0)
        cam.evaluate(cfg, 0)
    finally:
        teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
