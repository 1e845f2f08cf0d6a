"""The round driver end to end on a tiny synthetic dataset: CONTA rounds, controls, resume, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conta.config import Config, load_config, replace
from conta.errors import ContaError
from conta.ops.crf import crf_available
from conta.stages.paths import round_paths
from conta.stages import rounds
from conta.stages.rounds import control_config, run_pipeline

TINY = [
    "data.synth.image_size=48", "data.synth.n_train=8", "data.synth.n_val=4", "data.synth.n_val_deconfounded=2",
    "run.device=cpu", "run.seed=1",
    "cam.backbone.arch=resnet18", "cam.backbone.width=8", "cam.batch_size=4", "cam.epochs=1",
    "cam.crop_size=48", "cam.resize_long=[40,56]", "cam.scales=[1.0]",
    "ir_label.crf.enabled=false", "ir_label.workers=1",
    "irn.backbone.arch=resnet18", "irn.backbone.width=8", "irn.batch_size=4", "irn.epochs=1", "irn.crop_size=48",
    "irn.radius=3", "irn.displacement=false", "pseudo_mask.radius=3", "pseudo_mask.exp_times=3", "pseudo_mask.workers=1",
    "seg.arch=resnet18", "seg.width=8", "seg.msc_scales=[]", "seg.crop_size=41", "seg.batch_size=2",
    "seg.iter_size=1", "seg.iterations=4", "seg.lr=0.001", "seg.log_every=2", "seg.image_log_every=4",
    "seg.save_every=4", "seg.average_loss=2",
    "conta.rounds=1", "conta.confounder_size=[8,8]", "seg.crf.enabled=false",
]


def tiny_config(tmp: Path, *overrides: str) -> Config:
    return load_config(None, [f"data.root={tmp / 'data'}", f"run.out_dir={tmp / 'runs'}", "run.name=tiny",
                              *TINY, *overrides])


def metrics(cfg: Config, t: int) -> dict:
    return json.loads(round_paths(cfg, t).metrics.read_text())


def headline(m: dict) -> tuple:
    return (m["cam"]["miou"], m["pseudo_mask"]["miou"], m["seg_val"]["miou"])


@pytest.fixture(scope="module")
def conta_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rounds")
    cfg = tiny_config(tmp, f"seg.crf.enabled={str(crf_available()).lower()}")
    assert run_pipeline(cfg, log=lambda _: None) == 0
    return cfg


def test_conta_round_uses_the_confounder_set_and_reports(conta_run):
    cfg = conta_run
    r0, r1 = round_paths(cfg, 0), round_paths(cfg, 1)
    assert r0.confounder.is_file()
    # the intervened classifier carries the attention over the confounder set in its weights
    state = torch.load(r1.cam / "model.pt", weights_only=True)["model"]
    assert any(k.endswith("confounders") for k in state) and any("query" in k for k in state)
    for t in (0, 1):
        m = metrics(cfg, t)
        assert all(0.0 <= v <= 1.0 for v in headline(m))
    report = (cfg.run_dir / "report.md").read_text()
    assert "| 0 |" in report and "| 1 |" in report
    # each stage's mIoU follows its reference's definition, and the report says which
    m = metrics(cfg, 0)
    assert [m[s]["miou_over"] for s in ("cam", "pseudo_mask", "seg_val")] == ["gt_or_pred", "gt_or_pred", "gt"]
    assert m["seg_val"]["miou"] == m["seg_val"]["miou_gt"]
    assert "classes in the ground truth (deeplab-pytorch) for `seg_val`" in report
    if cfg.seg.crf.enabled:  # seg.crf.enabled: every round also scores the CRF-refined predictions
        assert all(0.0 <= metrics(cfg, t)[f"seg_{s}_crf"]["miou"] <= 1.0 for t in (0, 1) for s in cfg.data.val_splits)
        assert "seg_val_crf" in report
    assert (cfg.run_dir / "report.png").is_file()
    assert (cfg.run_dir / "config.yaml").is_file()


def test_single_stage_commands_of_round_1_repeat_conta_run(conta_run, tmp_path):
    """`conta cam train --round 1` and the other stage commands seed round 1 as `conta run` does
    (run.seed + 1), so from the same round 0 they write the same round 1."""
    from conta.cli import main

    run_dir = tmp_path / "stages"
    shutil.copytree(round_paths(conta_run, 0).root, run_dir / "round_0")
    common = ["--run-dir", str(run_dir), "--round", "1"]
    overrides = [f"data.root={conta_run.data.root}", *TINY, f"seg.crf.enabled={str(conta_run.seg.crf.enabled).lower()}"]
    for command in (["cam", "train"], ["cam", "infer"], ["cam", "eval"], ["pseudo-mask"], ["seg", "train"],
                    ["seg", "test", "--split", "val"]):
        assert main([*command, *common, *overrides]) == 0, command
    stages = replace(conta_run, [f"run.out_dir={tmp_path}", "run.name=stages"])
    ours, theirs = round_paths(stages, 1), round_paths(conta_run, 1)
    for model in (ours.cam / "model.pt", ours.irn / "model.pt", ours.seg / "model.pt"):
        mine, run = (torch.load(p, weights_only=True)["model"] for p in (model, theirs.root / model.relative_to(ours.root)))
        assert mine.keys() == run.keys() and all(torch.equal(mine[k], run[k]) for k in mine), model
    masks = sorted(p.name for p in theirs.pseudo_mask.glob("*.png"))
    assert masks and masks == sorted(p.name for p in ours.pseudo_mask.glob("*.png"))
    assert all((ours.pseudo_mask / n).read_bytes() == (theirs.pseudo_mask / n).read_bytes() for n in masks)
    assert [metrics(stages, 1)[s] for s in ("cam", "pseudo_mask", "seg_val")] == \
           [metrics(conta_run, 1)[s] for s in ("cam", "pseudo_mask", "seg_val")]


def test_rerun_resumes_and_recomputes_only_what_is_missing(conta_run):
    cfg = conta_run
    r1 = round_paths(cfg, 1)
    victim = sorted(r1.pseudo_mask.glob("*.png"))[0]
    kept = sorted(r1.pseudo_mask.glob("*.png"))[1]
    kept_mtime = kept.stat().st_mtime_ns
    cam_model_mtime = (r1.cam / "model.pt").stat().st_mtime_ns
    victim.unlink()
    assert run_pipeline(cfg, log=lambda _: None) == 0
    assert victim.is_file()
    assert kept.stat().st_mtime_ns == kept_mtime
    assert (r1.cam / "model.pt").stat().st_mtime_ns == cam_model_mtime


def test_baseline_control_shares_round_zero_and_reproduces_it(conta_run):
    cfg = load_config(None, [f"data.root={conta_run.data.root}", f"run.out_dir={conta_run.run.out_dir}",
                             "run.name=tiny", *TINY, "conta.vary_seed=false"])
    assert run_pipeline(cfg, control="baseline", log=lambda _: None) == 0
    baseline = control_config(cfg, "baseline")
    assert baseline.run_dir.name == "tiny-baseline" and baseline.conta.mode == "baseline"
    # round 0 was copied from the main run, and with the same seed round 1 repeats it exactly
    assert headline(metrics(baseline, 0)) == headline(metrics(conta_run, 0))
    assert headline(metrics(baseline, 1)) == headline(metrics(baseline, 0))


def test_runs_side_by_side_match_runs_one_after_another(tmp_path_factory, monkeypatch):
    """--jobs only changes where the rounds run: same seeds and threads, same numbers, one log each;
    with one seed for every round, the side-by-side baseline control repeats round 0 exactly."""
    monkeypatch.setattr(rounds.os, "cpu_count", lambda: 3)   # one thread per run, as this test process has
    scores = {}
    real_round = rounds.run_round
    for jobs in (1, 3):
        tmp = tmp_path_factory.mktemp(f"jobs{jobs}")
        cfg = tiny_config(tmp, "seg.iterations=2", "seg.save_every=2", "seg.image_log_every=2", "conta.vary_seed=false")
        threads_in_round_0 = []

        def recording_round(run_cfg, t, log=print):
            threads_in_round_0.extend([torch.get_num_threads()] if t == 0 else [])
            return real_round(run_cfg, t, log=log)

        monkeypatch.setattr(rounds, "run_round", recording_round)
        previous = torch.get_num_threads()
        torch.set_num_threads(2 if jobs > 1 else 1)   # with --jobs, the caller's setting must not reach round 0
        try:
            assert run_pipeline(cfg, with_controls=True, jobs=jobs, log=lambda _: None) == 0
        finally:
            torch.set_num_threads(previous)
        assert threads_in_round_0[0] == 1
        runs = [control_config(cfg, c) for c in (None, "baseline", "mask")]
        scores[jobs] = [headline(metrics(r, t)) for r in runs for t in (0, 1)]
        assert (cfg.run_dir / "report.md").is_file()
        if jobs > 1:
            assert all("round 1" in (r.run_dir / "log.txt").read_text() for r in runs)
            assert headline(metrics(runs[1], 1)) == headline(metrics(runs[1], 0))
    assert scores[1] == scores[3]


def test_more_rounds_after_a_round_0_only_run(tmp_path_factory, monkeypatch):
    """conta.rounds=0 first (no confounder set yet), then rounds=1 side by side: the controls get
    round 0's confounder set too, and every run finishes round 1."""
    monkeypatch.setattr(rounds.os, "cpu_count", lambda: 3)
    tmp = tmp_path_factory.mktemp("grow")
    short = ["seg.iterations=2", "seg.save_every=2", "seg.image_log_every=2"]
    assert run_pipeline(tiny_config(tmp, *short, "conta.rounds=0"), with_controls=True, jobs=3, log=lambda _: None) == 0
    cfg = tiny_config(tmp, *short)
    assert not round_paths(control_config(cfg, "mask"), 0).confounder.exists()
    assert run_pipeline(cfg, with_controls=True, jobs=3, log=lambda _: None) == 0
    main_set = round_paths(cfg, 0).confounder.read_bytes()
    for control in ("baseline", "mask"):
        run = control_config(cfg, control)
        assert round_paths(run, 0).confounder.read_bytes() == main_set
        assert (round_paths(run, 1).seg / "model.pt").is_file()


def test_a_failed_run_side_by_side_is_named_and_the_others_finish(tmp_path_factory, monkeypatch):
    """One run's broken input: the error names that run and its log; the other runs still complete."""
    monkeypatch.setattr(rounds.os, "cpu_count", lambda: 3)
    tmp = tmp_path_factory.mktemp("broken")
    cfg = tiny_config(tmp, "seg.iterations=2", "seg.save_every=2", "seg.image_log_every=2", "conta.rounds=0")
    assert run_pipeline(cfg, with_controls=True, jobs=3, log=lambda _: None) == 0   # round 0 of all three
    cfg = tiny_config(tmp, "seg.iterations=2", "seg.save_every=2", "seg.image_log_every=2")
    mask_run = control_config(cfg, "mask")
    round_paths(mask_run, 0).confounder.write_bytes(b"not an npz")       # the mask control cannot start round 1
    with pytest.raises(ContaError) as err:
        run_pipeline(cfg, with_controls=True, jobs=3, log=lambda _: None)
    message = str(err.value)
    assert "tiny-mask" in message and "confounder.npz" in message and "log.txt" in message
    assert "tiny-baseline" not in message and "tiny:" not in message
    for run in (cfg, control_config(cfg, "baseline")):
        assert (round_paths(run, 1).seg / "model.pt").is_file()               # the others ran to the end
