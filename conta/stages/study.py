"""`conta study`: CONTA and both controls for several seeds, then their spread and paired differences.

    <run.out_dir>/<run.name>-study/study.md, study.json
                                   s<seed>/, s<seed>-baseline/, s<seed>-mask/   (ordinary run directories)

Seed s sets run.seed = s for the whole run; the rounds vary it or not by conta.vary_seed, and the
dataset (data.synth.seed) is the same for every seed, so the study measures training noise on one
world (docs/conta.md, "The multi-seed study"). Each seed's three runs share its round 0 as in
`conta run --with-controls`, and `--jobs N` runs all seeds' rounds in one pool of N processes
(conta.stages.rounds). A seed whose three runs have all their numbers is not rerun; any other
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from conta.config import Config
from conta.data.build import ensure_dataset
from conta.engine.distributed import is_main, main_only
from conta.errors import ConfigError
from conta.stages.paths import read_metrics, round_paths
from conta.stages.rounds import check_side_by_side, run_in_turn, run_side_by_side, with_control_runs


def study_dir(cfg: Config) -> Path:
    return Path(cfg.run.out_dir) / f"{cfg.run.name}-study"


def seed_config(cfg: Config, seed: int) -> Config:
    """The main run of seed `seed`: its own seed and run directory inside the study folder."""
    run = dataclasses.replace(cfg.run, seed=seed, out_dir=str(study_dir(cfg)), name=f"s{seed}")
    return dataclasses.replace(cfg, run=run)


def run_finished(cfg: Config) -> bool:
    """Whether the run's last round holds every number the study reads (its segmentation scores
    are the last thing a run writes). A split without ground truth never scores, so a study
    over such splits reruns its seeds, each stage skipping the work it finds done."""
    metrics = read_metrics(round_paths(cfg, cfg.conta.rounds).metrics)
    splits = [*cfg.data.val_splits, *(f"{s}_crf" for s in cfg.data.val_splits if cfg.seg.crf.enabled)]
    return all(section in metrics for section in ["cam", "pseudo_mask", *(f"seg_{s}" for s in splits)])


def run_study(cfg: Config, seeds: list[int], jobs: int = 1, log: Callable[[str], None] = print) -> int:
    from conta.stages.report import write_report
    from conta.stages.study_report import write_study

    log = main_only(log)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {','.join(map(str, seeds))}: give one or more different seeds")
    if jobs > 1:
        check_side_by_side(jobs)
    ensure_dataset(cfg.data, log=log)
    groups = {seed: with_control_runs(seed_config(cfg, seed)) for seed in seeds}
    todo = {seed: runs for seed, runs in groups.items() if not all(run_finished(r) for r in runs)}
    if len(todo) < len(groups):
        log(f"study {study_dir(cfg)}: seeds {', '.join(str(s) for s in groups if s not in todo)} are finished")
    if len(seeds) < 2:
        log("one seed: the study has no spread and no intervals")
    if todo and jobs > 1:
        run_side_by_side(list(todo.values()), jobs, log, round_zero=True)
    elif todo:
        for runs in todo.values():
            run_in_turn(runs, log)
    if is_main():
        for seed, runs in groups.items():
            if seed in todo or not (runs[0].run_dir / "report.md").is_file():
                write_report(runs)
        md, json_path = write_study(study_dir(cfg), cfg, groups)
        log(md.read_text())
        log(f"study written to {md} and {json_path}")
    return 0
