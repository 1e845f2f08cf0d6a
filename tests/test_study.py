"""`conta study`: the statistics on hand-made numbers, study.md/json from fake metrics, and the
seed plumbing, pool order and resume with the round driver faked (nothing trains)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conta.config import Config, load_config
from conta.errors import ContaError
from conta.eval import study_stats
from conta.eval.study_stats import paired_difference, sample_sd, spread, summarise, t_quantile
from conta.io import save_json
from conta.stages import report, rounds, study
from conta.stages.paths import round_paths
from conta.stages.rounds import with_control_runs
from conta.stages.study import run_study, seed_config, study_dir
from conta.stages.study_report import write_study


# -- arithmetic ------------------------------------------------------------------------------


def test_t_quantiles_match_the_published_table():
    # two-sided 95 % (0.975 quantile) values of Student's t, as printed in statistics tables
    for df, expected in {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 10: 2.2281, 30: 2.0423}.items():
        assert t_quantile(df) == pytest.approx(expected, abs=1e-4)
    assert study_stats.t_two_sided_tail(t_quantile(5), 5) == pytest.approx(0.05, abs=1e-9)
    with pytest.raises(ValueError):
        t_quantile(0)


def test_mean_and_sample_sd_on_hand_computed_values():
    sp = spread({2: 4.0, 0: 1.0, 1: 2.0, 3: 3.0})
    assert sp.mean == 2.5
    assert sp.sd == pytest.approx(math.sqrt(5 / 3))          # squares 2.25 + 0.25 + 0.25 + 2.25, / (n - 1)
    assert list(sp.values) == [0, 1, 2, 3]
    assert sample_sd([7.0]) is None and spread({0: 7.0}).sd is None


def test_paired_interval_on_a_hand_made_table():
    conta = {0: 0.50, 1: 0.55, 2: 0.60}
    baseline = {0: 0.48, 1: 0.50, 2: 0.58}                     # differences 0.02, 0.05, 0.02
    d = paired_difference(conta, baseline)
    assert d.per_seed == pytest.approx({0: 0.02, 1: 0.05, 2: 0.02})
    assert d.mean == pytest.approx(0.03)
    assert d.sd == pytest.approx(math.sqrt(0.0003))           # so sd / sqrt(3) = 0.01
    assert d.t == pytest.approx(4.302653, abs=1e-6)
    assert (d.low, d.high) == pytest.approx((0.03 - 0.04302653, 0.03 + 0.04302653), abs=1e-8)
    assert not d.excludes_zero
    above = paired_difference({0: 5.0, 1: 7.0, 2: 9.0}, {0: 3.0, 1: 4.0, 2: 5.0})   # differences 2, 3, 4
    assert (above.low, above.high) == pytest.approx((3 - 4.302653 / math.sqrt(3), 3 + 4.302653 / math.sqrt(3)), abs=1e-6)
    assert above.excludes_zero and above.low > 0
    below = paired_difference({0: 3.0, 1: 4.0, 2: 5.0}, {0: 5.0, 1: 7.0, 2: 9.0})
    assert below.excludes_zero and below.high < 0
    same = paired_difference({0: 0.3, 1: 0.4}, {0: 0.3, 1: 0.4})  # a shared round 0: no difference at all
    assert (same.mean, same.low, same.high, same.excludes_zero) == (0.0, 0.0, 0.0, False)
    alone = paired_difference({0: 0.5, 1: 0.6}, {1: 0.4, 2: 0.1})   # one shared seed: no interval
    assert alone.per_seed == pytest.approx({1: 0.2}) and alone.low is None and not alone.excludes_zero
    assert paired_difference({0: 1.0}, {1: 1.0}) is None


def test_summarise_orders_metric_by_metric_and_pairs_only_shared_seeds():
    table = {
        "conta": {("cam", 0): {0: 0.3, 1: 0.4, 2: 0.5}, ("cam", 1): {0: 0.4, 1: 0.5, 2: 0.7},
                  ("seg_val", 0): {0: 0.2, 1: 0.2, 2: 0.2}},
        "baseline": {("cam", 0): {0: 0.3, 1: 0.4, 2: 0.5}, ("cam", 1): {0: 0.3, 1: 0.4}},
    }
    entries = summarise(table, "conta")
    assert [(e.metric, e.round) for e in entries] == [("cam", 0), ("cam", 1), ("seg_val", 0)]
    cam1 = entries[1]
    assert cam1.runs["conta"].mean == pytest.approx(1.6 / 3) and cam1.runs["baseline"].mean == pytest.approx(0.35)
    assert cam1.differences["conta - baseline"].per_seed == pytest.approx({0: 0.1, 1: 0.1})
    assert entries[2].differences == {} and list(entries[2].runs) == ["conta"]


# -- study.md and study.json from fake metrics -----------------------------------------------


def base_config(tmp: Path, *overrides: str) -> Config:
    return load_config(None, [f"run.out_dir={tmp / 'runs'}", "run.name=exp", f"data.root={tmp / 'data'}",
                              "data.val_splits=[val]", "seg.crf.enabled=false", "conta.rounds=1", "conta.vary_seed=false", *overrides])


def fake_numbers(seed: int, mode: str, t: int) -> dict:
    """Round 0 shared; CONTA gains 2 + seed points of CAM in round 1, the mask control 1, the
    baseline repeats round 0."""
    gain = {"conta": 0.02 + 0.01 * seed, "mask": 0.01, "baseline": 0.0}[mode] if t else 0.0
    return {"cam": {"miou": 0.30 + 0.01 * seed + gain, "leakage": {"boat -> water": {"share": 0.45 - gain}}},
            "ir_label": {"precision": 0.9}, "pseudo_mask": {"miou": 0.40 + 0.02 * seed},
            "seg_val": {"miou": 0.20 + 0.05 * seed + gain / 2}}


def write_fake_round(cfg: Config, t: int) -> None:
    paths = round_paths(cfg, t)
    save_json(paths.metrics, fake_numbers(cfg.run.seed, cfg.conta.mode, t))
    if t < cfg.conta.rounds:
        paths.confounder.write_bytes(b"fake confounder set")


def test_study_files_from_fake_metrics(tmp_path):
    cfg = base_config(tmp_path)
    groups = {s: with_control_runs(seed_config(cfg, s)) for s in (0, 1, 2)}
    for runs in groups.values():
        for run in runs:
            for t in (0, 1):
                write_fake_round(run, t)
    md, json_path = write_study(study_dir(cfg), cfg, groups)
    assert md == tmp_path / "runs" / "exp-study" / "study.md"
    data = json.loads(json_path.read_text())
    assert data["seeds"] == [0, 1, 2] and data["runs"]["1"]["mask"].endswith("exp-study/s1-mask")
    entries = {(e["metric"], e["round"]): e for e in data["entries"]}
    assert list(entries) == [(m, t) for m in ("cam", "seeds_precision", "pseudo_mask", "seg_val", "leak boat -> water")
                             for t in (0, 1)]
    cam1 = entries[("cam", 1)]
    assert cam1["runs"]["conta"]["values"] == pytest.approx({"0": 0.32, "1": 0.34, "2": 0.36})
    assert cam1["runs"]["conta"]["mean"] == pytest.approx(0.34) and cam1["runs"]["conta"]["sd"] == pytest.approx(0.02)
    vs_baseline = cam1["differences"]["conta - baseline"]      # differences 0.02, 0.03, 0.04
    assert vs_baseline["mean"] == pytest.approx(0.03) and vs_baseline["sd"] == pytest.approx(0.01)
    half = 4.302653 * 0.01 / math.sqrt(3)
    assert (vs_baseline["low"], vs_baseline["high"]) == pytest.approx((0.03 - half, 0.03 + half), abs=1e-8)
    assert vs_baseline["excludes_zero"] is True
    assert entries[("cam", 0)]["differences"]["conta - mask"]["excludes_zero"] is False
    assert entries[("leak boat -> water", 1)]["differences"]["conta - mask"]["mean"] == pytest.approx(-0.02)
    text = md.read_text()
    assert "| cam | 1 | 34.0 ± 2.0 | 31.0 ± 1.0 | 32.0 ± 1.0 | +3.00 [+0.52, +5.48] * | +2.00 [-0.48, +4.48] |" in text
    assert "| cam | 1 | +2.00 | +3.00 | +4.00 | +1.00 | +2.00 | +3.00 |" in text   # the per-seed table
    assert "Seeds s0, s1, s2" in text


# -- the stage, with the round driver faked --------------------------------------------------


@pytest.fixture
def fake_rounds(monkeypatch):
    """run_round records (run name, run.seed, mode, t, whether the round was there already) and,
    like the stages, writes the round's (fake) outputs only where they are missing."""
    calls: list[tuple[str, int, str, int, bool]] = []

    def fake_round(cfg: Config, t: int, log=print) -> None:
        found = round_paths(cfg, t).metrics.is_file()
        calls.append((cfg.run.name, cfg.run.seed, cfg.conta.mode, t, found))
        if not found:
            write_fake_round(cfg, t)

    monkeypatch.setattr(rounds, "run_round", fake_round)
    monkeypatch.setattr(study, "ensure_dataset", lambda data, log=print: Path(data.root))
    monkeypatch.setattr(report, "write_report", lambda runs: runs[0].run_dir / "report.md")
    return calls


def test_each_seed_runs_on_its_seed_and_a_finished_seed_is_skipped(tmp_path, fake_rounds):
    cfg = base_config(tmp_path, "run.seed=7", "data.synth.seed=5")
    assert run_study(cfg, [0, 1, 2], log=lambda _: None) == 0
    for seed in (0, 1, 2):
        mine = [c for c in fake_rounds if c[0].startswith(f"s{seed}")]
        assert all(c[1] == seed for c in mine)                 # run.seed = s in every round of every run
        # round 0 made once, by the CONTA run; each control finds its copy there
        assert [(n, m, t, found) for n, _, m, t, found in mine] == [
            (f"s{seed}", "conta", 0, False), (f"s{seed}", "conta", 1, False),
            (f"s{seed}-baseline", "baseline", 0, True), (f"s{seed}-baseline", "baseline", 1, False),
            (f"s{seed}-mask", "mask", 0, True), (f"s{seed}-mask", "mask", 1, False)]
        for control in ("baseline", "mask"):
            run = seed_config(cfg, seed)
            copied = round_paths(rounds.control_config(run, control), 0)
            assert copied.metrics.read_bytes() == round_paths(run, 0).metrics.read_bytes()
        written = load_config(study_dir(cfg) / f"s{seed}-mask" / "config.yaml")
        assert written.run.seed == seed and written.data.synth.seed == 5 and written.conta.mode == "mask"
    assert (study_dir(cfg) / "study.md").is_file()

    # the study was killed while seed 1's mask control ran its last round: only seed 1 reruns
    round_paths(rounds.control_config(seed_config(cfg, 1), "mask"), 1).metrics.unlink()
    fake_rounds.clear()
    assert run_study(cfg, [0, 1, 2], log=lambda _: None) == 0
    assert {c[1] for c in fake_rounds} == {1}
    assert ("s1-mask", 1, "mask", 1, False) in fake_rounds
    assert len(json.loads((study_dir(cfg) / "study.json").read_text())["entries"][0]["runs"]["mask"]["values"]) == 3

    fake_rounds.clear()                                          # everything finished: nothing reruns
    assert run_study(cfg, [0, 1, 2], log=lambda _: None) == 0
    assert fake_rounds == []


def test_the_pool_runs_each_seeds_round_0_before_its_later_rounds(tmp_path, fake_rounds, monkeypatch):
    """--jobs 3 with threads in place of processes (so the fake driver is seen): every seed's round
    0 comes before its three runs' later rounds; the numbers equal those of --jobs 1."""
    monkeypatch.setattr(rounds, "ProcessPoolExecutor", lambda n, mp_context: ThreadPoolExecutor(n))
    monkeypatch.setattr(rounds.os, "cpu_count", lambda: 3)
    monkeypatch.setenv("CONTA_PROGRESS", "1")                    # restored after the workers set it to 0
    previous = torch.get_num_threads()
    try:
        assert run_study(base_config(tmp_path / "pool"), [0, 1, 2], jobs=3, log=lambda _: None) == 0
    finally:
        torch.set_num_threads(previous)
    assert len(fake_rounds) == 12 and not any(c[4] for c in fake_rounds)   # controls' round 0: copied
    for seed in (0, 1, 2):
        order = [i for i, c in enumerate(fake_rounds) if c[1] == seed]
        assert fake_rounds[order[0]][2:4] == ("conta", 0) and len(order) == 4
    assert run_study(base_config(tmp_path / "serial"), [0, 1, 2], log=lambda _: None) == 0
    pool, serial = (json.loads((study_dir(base_config(tmp_path / d)) / "study.json").read_text())["entries"]
                    for d in ("pool", "serial"))
    assert pool == serial


def test_a_failed_round_0_stops_only_its_seed(tmp_path, fake_rounds, monkeypatch):
    monkeypatch.setattr(rounds, "ProcessPoolExecutor", lambda n, mp_context: ThreadPoolExecutor(n))
    monkeypatch.setenv("CONTA_PROGRESS", "1")
    recording = rounds.run_round

    def broken_seed_1(cfg: Config, t: int, log=print) -> None:
        if cfg.run.seed == 1:
            raise ContaError("round 0 broke")
        recording(cfg, t, log)

    monkeypatch.setattr(rounds, "run_round", broken_seed_1)
    previous = torch.get_num_threads()
    cfg = base_config(tmp_path)
    try:
        with pytest.raises(ContaError) as err:
            run_study(cfg, [0, 1, 2], jobs=2, log=lambda _: None)
    finally:
        torch.set_num_threads(previous)
    assert "s1: round 0 broke" in str(err.value) and "its controls did not start" in str(err.value)
    assert {c[1] for c in fake_rounds} == {0, 2} and len(fake_rounds) == 8
    assert not (study_dir(cfg) / "s1-mask").exists()


def test_the_command_line_passes_seeds_jobs_and_overrides(monkeypatch, capsys):
    from conta.cli import main

    seen = {}
    monkeypatch.setattr(study, "run_study", lambda cfg, seeds, jobs: seen.update(cfg=cfg, seeds=seeds, jobs=jobs) or 0)
    assert main(["study", "--seeds", "3,5", "--jobs", "2", "run.device=cpu", "conta.rounds=2"]) == 0
    assert seen["seeds"] == [3, 5] and seen["jobs"] == 2 and seen["cfg"].conta.rounds == 2
    for bad in ("1,1", "a,b", "-1"):
        with pytest.raises(SystemExit):
            main(["study", "--seeds", bad])
        assert "--seeds" in capsys.readouterr().err
