"""The CONTA round driver (the paper's algorithm) and its two controls.

Round 0 is the plain IRNet baseline: classifier, CAMs, seeds, IRN, pseudo-masks, DeepLab, and the
DeepLab's predictions on the training images. Round t >= 1 builds the confounder set from round
t-1's predictions, retrains the classifier with the intervention (mode "conta"), with the
previous mask itself in place of M (control "mask") or without anything (control "baseline"),
and reruns the later stages. Every stage skips work it finds complete, so an interrupted run
resumes where it stopped.

Under torchrun every rank runs every stage (each stage is collective and ends at a barrier once
its outputs are complete); the files that sum up a run (config, confounder set, round-0 copy,
report) are written by rank 0 while the others wait.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import TYPE_CHECKING

import torch

from conta.config import Config, replace
from conta.data.build import ensure_dataset
from conta.engine.device import cores_per_process
from conta.engine.distributed import barrier, is_main, main_only, world_size
from conta.errors import ConfigError, ContaError
from conta.io import atomic_path
from conta.models.intervention import ConfounderAttention
from conta.stages.confounder import ConfounderSet, build_confounder_set
from conta.stages.paths import round_paths, write_run_config
from conta.stages.round_context import RoundContext

if TYPE_CHECKING:
    from conta.stages.cam import Intervention

CONTROL_MODES = {None: "conta", "baseline": "baseline", "mask": "mask"}


def control_config(cfg: Config, control: str | None) -> Config:
    """The config of the main run (control None) or of a control run, in its own run directory."""
    if control is None:
        return cfg
    return replace(cfg, [f"conta.mode={CONTROL_MODES[control]}", f"run.name={cfg.run.name}-{control}"])


def context_for_round(rnd: RoundContext) -> Intervention | None:
    """What round t's classifier adds (None in round 0 and the baseline control): the previous
    round's X_m per image, entering at conta.inject_at, through the confounder attention (mode
    "conta") or as M itself (the "mask" control)."""
    from conta.stages.cam import Intervention

    if rnd.t == 0 or rnd.cfg.conta.mode == "baseline":
        return None
    confounders = ConfounderSet(round_paths(rnd.cfg, rnd.t - 1).confounder)
    if rnd.cfg.conta.mode == "mask":
        return Intervention(confounders.mask_input, rnd.cfg.conta.inject_at)
    module = ConfounderAttention(torch.from_numpy(confounders.confounders), torch.from_numpy(confounders.prior),
                                 unit_prior=rnd.cfg.conta.unit_prior)
    return Intervention(confounders.mask_input, rnd.cfg.conta.inject_at, module)


def run_round(cfg: Config, t: int, log: Callable[[str], None] = print) -> None:
    from conta.stages import cam, seg
    from conta.stages.pseudo_mask import run_pseudo_mask_stages

    log = main_only(log)
    rnd = RoundContext.of(cfg, t)
    log(f"== {cfg.run.name}: round {t} ({'baseline' if t == 0 else cfg.conta.mode}) ==")
    intervention = context_for_round(rnd)
    cam.train(rnd, intervention, log=log)
    cam.infer(rnd, intervention, log=log)
    cam.evaluate(rnd, log=log)
    run_pseudo_mask_stages(rnd, log=log)
    seg.train(rnd, log=log)
    for split in cfg.data.val_splits:
        seg.test(rnd, split, keep_logits=cfg.seg.crf.enabled, log=log)
        if cfg.seg.crf.enabled:
            seg.crf(rnd, split, log=log)
    if t < cfg.conta.rounds:
        seg.test(rnd, cfg.data.infer_split, log=log)
        if is_main():
            build_confounder_set(rnd, log=log)
        barrier()


def share_round_zero(source: Config, target: Config, log: Callable[[str], None] = print) -> None:
    """Round 0 does not depend on the mode: a control run starts from a copy of the main run's."""
    src, dst = round_paths(source, 0), round_paths(target, 0)
    finished = src.confounder if target.conta.rounds > 0 else src.metrics
    if dst.root.exists():
        # copied by an earlier run with conta.rounds = 0, which made no confounder set yet
        if target.conta.rounds > 0 and src.confounder.is_file() and not dst.confounder.is_file():
            with atomic_path(dst.confounder) as tmp:
                shutil.copyfile(src.confounder, tmp)
            log(f"{target.run.name}: round 0's confounder set copied from {src.confounder}")
        return
    if not finished.is_file():
        return
    shutil.copytree(src.root, dst.root)
    log(f"{target.run.name}: round 0 copied from {src.root}")


def run_pipeline(cfg: Config, control: str | None = None, with_controls: bool = False, jobs: int = 1,
                 log: Callable[[str], None] = print) -> int:
    """Run every round of the main run (or of one control); optionally both controls after it.

    With `jobs` > 1 and the controls, round 0 runs here first, then the three runs' rounds 1..T
    run side by side in `jobs` processes (one machine, no torchrun).
    """
    from conta.stages.report import write_report

    log = main_only(log)
    ensure_dataset(cfg.data, log=log)
    runs = with_control_runs(cfg) if with_controls and control is None else [control_config(cfg, control)]
    if jobs > 1 and len(runs) == 1:
        log(f"--jobs {jobs}: one run (no --with-controls), so its rounds run here one after another")
    if jobs > 1 and len(runs) > 1:
        check_side_by_side(jobs)
        write_run_config(runs[0])
        # round 0 on the thread count the later rounds get: float sums depend on it, and with a
        # fixed seed the baseline control then repeats round 0 to the last bit
        previous = torch.get_num_threads()
        torch.set_num_threads(threads_per_run(jobs))
        try:
            run_round(runs[0], 0, log=log)
        finally:
            torch.set_num_threads(previous)
        run_side_by_side([runs], jobs, log)
    else:
        run_in_turn(runs, log)
    if is_main():
        report = write_report(runs)
        log(report.read_text())
        log(f"report written to {report}")
    return 0


def with_control_runs(cfg: Config) -> list[Config]:
    """The main run and its two controls, in that order (round 0 is the first one's)."""
    return [cfg, control_config(cfg, "baseline"), control_config(cfg, "mask")]


def check_side_by_side(jobs: int) -> None:
    if world_size() > 1:
        raise ConfigError(f"--jobs {jobs}: runs side by side are for one process per machine; under torchrun use --jobs 1")


def run_in_turn(runs: list[Config], log: Callable[[str], None] = print) -> None:
    """Every round of each run, one run after another in this process (collective under torchrun);
    the runs after the first start from a copy of its round 0."""
    for run_cfg in runs:
        if is_main():
            write_run_config(run_cfg)
            if run_cfg is not runs[0]:
                share_round_zero(runs[0], run_cfg, log=log)
        barrier()
        for t in range(run_cfg.conta.rounds + 1):
            run_round(run_cfg, t, log=log)


def run_side_by_side(groups: list[list[Config]], jobs: int, log: Callable[[str], None] = print,
                     round_zero: bool = False) -> None:
    """Rounds 1..T of every run in its own process, `jobs` at a time, each with its share of the
    cores. Each group is a main run and the controls that share its round 0; with `round_zero`,
    that round 0 first runs in the pool too, and the group's rounds 1..T are queued once it is
    done and copied (so `conta study` keeps the cores busy across seeds).

    Small CPU networks gain ~1.3x from a second torch thread but 2x from a second process, so on
    the demo's 2 cores three single-threaded runs finish well before the same runs one after
    another. Each process logs to <run dir>/log.txt and echoes its lines prefixed with the run's
    name. A failed run does not stop the others (a failed round 0 only its own group); the errors
    are raised once all have ended.
    """
    threads = threads_per_run(jobs)
    n_tasks = sum(len(group) + round_zero for group in groups)
    processes = min(jobs, n_tasks)
    names = ", ".join(r.run.name for group in groups for r in group)
    first = f"round 0 of {', '.join(g[0].run.name for g in groups)}, then " if round_zero else ""
    log(f"{first}rounds 1..{groups[0][0].conta.rounds} of {names}: "
        f"{processes} processes side by side, {threads} thread(s) each; logs in <run dir>/log.txt")
    failures = []
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: dict[Future, tuple[Config, list[Config] | None]] = {}

        def start_later_rounds(group: list[Config]) -> None:
            for run_cfg in group[1:]:
                write_run_config(run_cfg)
                share_round_zero(group[0], run_cfg, log=log)
            for run_cfg in group:
                rounds = range(1, run_cfg.conta.rounds + 1)
                pending[pool.submit(_run_rounds_alone, run_cfg, threads, rounds)] = (run_cfg, None)

        for group in groups:
            if round_zero:
                write_run_config(group[0])
                pending[pool.submit(_run_rounds_alone, group[0], threads, range(1))] = (group[0], group)
            else:
                start_later_rounds(group)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                run_cfg, waiting = pending.pop(future)
                try:
                    future.result()
                except Exception as exc:  # reported with the run it belongs to, after the others finish
                    later = "; its controls did not start" if waiting else ""
                    failures.append(f"{run_cfg.run.name}: {exc} (log: {run_cfg.run_dir / 'log.txt'}){later}")
                    continue
                if waiting:
                    start_later_rounds(waiting)
    if failures:
        raise ContaError("runs side by side failed:\n  " + "\n  ".join(failures))


def threads_per_run(jobs: int) -> int:
    """Torch threads of each of `jobs` processes sharing this machine's cores (at least one)."""
    return cores_per_process(jobs)


def _run_rounds_alone(cfg: Config, threads: int, rounds: range) -> None:
    """The body of one side-by-side process: some rounds of `cfg` (finished work is skipped)."""
    torch.set_num_threads(threads)
    os.environ["CONTA_PROGRESS"] = "0"        # bars from several processes would overwrite each other
    workers = [f"{section}.workers={threads}" for section in ("ir_label", "pseudo_mask")
               if getattr(cfg, section).workers == 0]
    cfg = replace(cfg, workers) if workers else cfg
    with open(cfg.run_dir / "log.txt", "a", encoding="utf-8") as log_file:
        def log(message: str) -> None:
            log_file.write(message + "\n")
            log_file.flush()
            print("\n".join(f"[{cfg.run.name}] {line}" for line in str(message).splitlines()), flush=True)

        for t in rounds:
            run_round(cfg, t, log=log)
