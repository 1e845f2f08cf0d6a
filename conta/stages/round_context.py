"""What a stage of round t is given: the round's config (seed adjusted), its sections, and the
paths of all its artifacts.

`conta run` and every single-stage command build one `RoundContext` per round and hand it to the
stages, so that a stage neither re-derives the seed or the paths nor looks into the sections of
other stages: it reads the shared `run` and `data` sections of `cfg`, its own section, and the
inputs its caller passes explicitly (e.g. the CAM stage is given where the intervention enters,
rather than reading `conta.inject_at`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from conta.config import Config
from conta.stages.paths import RoundPaths, round_paths


def round_config(cfg: Config, t: int) -> Config:
    """Round t trains with seed run.seed + t when conta.vary_seed (each round is a new training run)."""
    if not cfg.conta.vary_seed or t == 0:
        return cfg
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=cfg.run.seed + t))


@dataclass(frozen=True)
class RoundContext:
    """Round `t` of the run whose (seed-adjusted) config is `cfg`, and the round's paths; build it
    with `of`."""

    cfg: Config
    t: int
    paths: RoundPaths = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", round_paths(self.cfg, self.t))

    @classmethod
    def of(cls, cfg: Config, t: int) -> RoundContext:
        """Round t of the run configured by `cfg` (the run's config, before any round's seed change)."""
        return cls(round_config(cfg, t), t)

    @property
    def seed(self) -> int:
        """The seed of this round's training and augmentation (run.seed, + t with conta.vary_seed)."""
        return self.cfg.run.seed
