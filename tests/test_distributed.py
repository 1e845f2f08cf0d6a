"""Several processes give what one process gives: DDP training with the configured effective batch
(CAM classifier, IRN, DeepLab), BatchNorm synchronised over the processes (DeepLab v3+), sharded
inference (one output per image), all-reduced scores, and the `--devices` launcher.

The three end-to-end tests start real process groups (Gloo on the CPU) through torchrun on
127.0.0.1 with a port torchrun picks (--standalone); the rest checks the helpers in one process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import conta
from conta.config import load_config
from conta.data.build import build_dataset, ensure_dataset
from conta.engine import distributed
from conta.engine.inference import BackgroundWriter, pending
from conta.engine.precision import Precision
from conta.errors import ConfigError
from conta.io import load_json, load_label_png, load_npz
from conta.stages import cam
from conta.stages.paths import round_paths
from conta.stages.seg import micro_batches
from conta.stages.round_context import RoundContext

from _distributed_worker import run_stages
from _sync_bn_worker import batch, one_step

REPO = Path(conta.__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("_distributed_worker.py")
SYNC_BN_WORKER = Path(__file__).with_name("_sync_bn_worker.py")
LAUNCH_TIMEOUT = 180  # seconds; a hung rendezvous fails the test instead of the suite

TINY = {
    "run": {"device": "cpu"},
    "data": {"dataset": "synthetic", "val_splits": ["val"],
             "synth": {"image_size": 64, "n_train": 8, "n_val": 4, "n_val_deconfounded": 0}},
    "cam": {"backbone": {"arch": "resnet18", "width": 4}, "batch_size": 4, "epochs": 2, "crop_size": 64,
            "resize_long": [48, 80], "scales": [1.0, 0.5], "sweep": [0.1, 0.2]},
    "ir_label": {"crf": {"enabled": False}, "workers": 1},
    "irn": {"backbone": {"arch": "resnet18", "width": 8}, "batch_size": 4, "epochs": 1, "crop_size": 64, "radius": 5},
    "pseudo_mask": {"radius": 5, "workers": 1},
    "seg": {"arch": "resnet18", "width": 8, "crop_size": 65, "batch_size": 2, "iter_size": 2, "iterations": 4,
            "lr": 0.002, "label_source": "gt", "scales": [0.75, 1.0, 1.25], "log_every": 100, "image_log_every": 100,
            "save_every": 100},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """(config file, overrides): the tiny synthetic dataset, made once."""
    folder = tmp_path_factory.mktemp("distributed")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    overrides = [f"data.root={folder / 'data'}", f"run.out_dir={folder / 'runs'}"]
    ensure_dataset(load_config(config, overrides).data, log=lambda _: None)
    return config, overrides


@pytest.fixture(scope="module")
def one_process(setup: tuple[Path, list[str]]) -> Path:
    """The reference: stages 1-5 in this process."""
    config, overrides = setup
    cfg = load_config(config, [*overrides, "run.name=one"])
    run_stages(cfg, log=lambda _: None)
    return round_paths(cfg, 0).root


def _launch(command: list[str]) -> subprocess.CompletedProcess:
    """Run a torchrun command on the loopback interface; on timeout kill its whole process group."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "GLOO_SOCKET_IFNAME": "lo", "CONTA_PROGRESS": "0",
           "OMP_NUM_THREADS": "1"}
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"{' '.join(command)} did not finish in {LAUNCH_TIMEOUT} s:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    return subprocess.CompletedProcess(command, proc.returncode, out)


def _only_outputs(folder: Path, ids: list[str], suffix: str) -> None:
    """Exactly one output per image and nothing else (no temporary files, no strays) but the
    stage's completion marker and the record of the model that made the outputs."""
    records = ("DONE.json", "MODEL.json")
    assert sorted(p.name for p in folder.iterdir() if p.name not in records) == sorted(f"{i}{suffix}" for i in ids)


def _same_weights(a: Path, b: Path, rtol: float, atol: float) -> None:
    one, two = (torch.load(path, weights_only=True)["model"] for path in (a, b))
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=rtol, atol=atol, msg=key)


def test_two_processes_run_stages_1_to_5_like_one(setup: tuple[Path, list[str]], one_process: Path) -> None:
    config, overrides = setup
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(WORKER), str(config), *overrides, "run.name=two"])
    cfg = load_config(config, [*overrides, "run.name=two"])
    two = round_paths(cfg, 0)

    # training: the same steps on the same samples; frozen BN makes it exact up to float rounding
    _same_weights(one_process / "cam" / "model.pt", two.cam / "model.pt", rtol=1e-5, atol=1e-6)
    epochs_one = load_json(one_process / "metrics.json")["cam_train"]["epochs"]
    epochs_two = load_json(two.metrics)["cam_train"]["epochs"]
    for e1, e2 in zip(epochs_one, epochs_two, strict=True):  # losses averaged, validation sharded
        for key in ("train_loss", "val_loss", "val_mAP"):
            assert e2[key] == pytest.approx(e1[key], rel=1e-5), key

    # inference: every image exactly once, over both shards
    ids = build_dataset(cfg.data, cfg.data.infer_split).ids
    _only_outputs(two.cam_maps, ids, ".npz")

    # evaluation: counts summed over ranks equal the counts of one process scoring the same maps
    distributed_scores = load_json(two.metrics)["cam"]
    rescored = cam.evaluate(RoundContext.of(cfg, 0), log=lambda _: None)
    assert distributed_scores["per_class"] == rescored["per_class"] and distributed_scores["sweep"] == rescored["sweep"]
    for name, leak in rescored["leakage"].items():  # float sums, added in another order
        got = distributed_scores["leakage"][name]
        assert got["images"] == leak["images"]
        assert got["share"] == pytest.approx(leak["share"]) and got["area"] == pytest.approx(leak["area"])

    # stages 2-4: sharded seeds and random walk, and an IRN whose pair-mean losses share one
    # normaliser over the ranks, so it too trains like one process (its lr is 10x on displacement)
    _same_weights(one_process / "irn" / "model.pt", two.irn / "model.pt", rtol=1e-4, atol=5e-5)
    for folder, one_folder in ((two.ir_label, one_process / "ir_label"), (two.pseudo_mask, one_process / "pseudo_mask")):
        _only_outputs(folder, ids, ".png")
        agree = np.mean([np.mean(load_label_png(folder / f"{i}.png") == load_label_png(one_folder / f"{i}.png"))
                         for i in ids])
        assert agree > 0.999, folder
    assert load_json(two.metrics)["pseudo_mask"]["miou"] == pytest.approx(
        load_json(one_process / "metrics.json")["pseudo_mask"]["miou"], abs=1e-3)

    # DeepLab: 2 processes split each iteration's 2 x 2 crops into one micro-batch each, the very
    # micro-batches one process accumulates, so the steps are the same; test predictions sharded
    _same_weights(one_process / "seg" / "model.pt", two.seg / "model.pt", rtol=1e-4, atol=1e-5)
    val_ids = build_dataset(cfg.data, "val").ids
    _only_outputs(two.seg_pred("val"), val_ids, ".png")
    assert load_json(two.metrics)["seg_val"]["miou"] == pytest.approx(
        load_json(one_process / "metrics.json")["seg_val"]["miou"], abs=1e-3)


def test_devices_flag_shards_inference_over_torchrun(setup: tuple[Path, list[str]], one_process: Path,
                                                     tmp_path: Path) -> None:
    """`conta cam infer --devices 2` re-runs itself under torchrun; the maps equal one process's."""
    config, overrides = setup
    cfg = load_config(config, [*overrides, f"run.out_dir={tmp_path}", "run.name=cli"])
    paths = round_paths(cfg, 0)
    paths.cam.mkdir(parents=True)
    (paths.cam / "model.pt").write_bytes((one_process / "cam" / "model.pt").read_bytes())
    done = build_dataset(cfg.data, cfg.data.infer_split).ids[0]  # an existing map is kept, not redone
    paths.cam_maps.mkdir()
    (paths.cam_maps / f"{done}.npz").write_bytes((one_process / "cam" / "maps" / f"{done}.npz").read_bytes())

    result = _launch([sys.executable, "-m", "conta", "cam", "infer", "--devices", "2", "--config", str(config),
                      *overrides, f"run.out_dir={tmp_path}", "run.name=cli"])
    # one log, rank 0's: its shard is ids[0::2], whose first map existed
    assert "cam infer: 3 to make, 1 already done in process 0 of 2" in result.stdout
    assert "process 1 of 2" not in result.stdout
    ids = build_dataset(cfg.data, cfg.data.infer_split).ids
    _only_outputs(paths.cam_maps, ids, ".npz")
    for image_id in ids:
        ours, reference = load_npz(paths.cam_maps / f"{image_id}.npz"), load_npz(one_process / "cam" / "maps" / f"{image_id}.npz")
        np.testing.assert_array_equal(ours["keys"], reference["keys"])
        np.testing.assert_array_equal(ours["cam"], reference["cam"])


def test_sync_bn_over_two_processes_equals_bn_over_their_whole_batch(tmp_path: Path) -> None:
    """Two Gloo processes with 2 crops each and synchronised BN end one DeepLab v3+ step with the
    weights and BN statistics of one process with plain BN on all 4 crops (float rounding apart:
    sums in another order; measured max difference ~1e-7, asserted within rtol 1e-4, atol 1e-5)."""
    _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             str(SYNC_BN_WORKER), str(tmp_path)])
    images, labels = batch()
    reference, synced = one_step(images, labels)
    assert synced == 0
    for r in range(2):
        result = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert result["synced"] == sum(k.endswith("running_mean") for k in reference)  # every BN layer
        assert result["state"].keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(result["state"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # the comparison can fail: plain BN on one process's half of the batch ends elsewhere
    half, _ = one_step(images[:2], labels[:2])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(half["base.backbone.bn1.running_mean"], reference["base.backbone.bn1.running_mean"],
                                   rtol=1e-4, atol=1e-5)


# -- helpers, in one process ------------------------------------------------------------------


def _as_rank(monkeypatch: pytest.MonkeyPatch, r: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: r)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_rank_slices_split_each_global_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    order = list(np.random.default_rng(0).permutation(24))
    single = list(distributed.RankSlices(order, 8, range(1, 3)))
    parts = []
    for r in range(4):
        _as_rank(monkeypatch, r, 4)
        sampler = distributed.RankSlices(order, 8, range(1, 3))
        parts.append(list(sampler))
        assert len(sampler) == 4 and sampler.local == 2
    # step by step, the ranks' slices put back together are the single process's batch
    rebuilt = [i for step in range(2) for part in parts for i in part[2 * step:2 * step + 2]]
    assert rebuilt == single == order[8:24]


def test_effective_batch_must_divide_over_the_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    _as_rank(monkeypatch, 0, 3)
    with pytest.raises(ConfigError, match="cam.batch_size = 16 .* divisible by their number \\(3\\)"):
        distributed.local_batch(16, "cam.batch_size")
    assert distributed.local_batch(15, "cam.batch_size") == 5


def test_shards_cover_every_id_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ids = [f"im{i}" for i in range(7)]
    (tmp_path / "im4.out").touch()
    shards = []
    for r in range(3):
        _as_rank(monkeypatch, r, 3)
        shards.append(distributed.shard(ids))
        assert pending(ids, lambda i: (tmp_path / f"{i}.out").is_file()) == [i for i in shards[-1] if i != "im4"]
    assert sorted(i for s in shards for i in s) == ids


def test_single_process_fallback() -> None:
    counts = np.arange(6).reshape(2, 3)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.all_reduce_sum(counts) is counts
    distributed.barrier()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, torch.device("cpu")) is model


def test_main_only_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    distributed.main_only(lines.append)("rank 0")
    _as_rank(monkeypatch, 1, 2)
    distributed.main_only(lines.append)("rank 1")
    assert lines == ["rank 0"]


@pytest.mark.parametrize("argv", [["run", "--devices", "4", "cam.lr=0.1"], ["run", "--devices=4", "cam.lr=0.1"]])
def test_devices_becomes_a_torchrun_command(argv: list[str]) -> None:
    command = distributed.torchrun_command(4, argv)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc_per_node=4" in command and "--standalone" in command
    assert command[-4:] == ["-m", "conta", "run", "cam.lr=0.1"]


def test_micro_batches_keep_the_memory_bound() -> None:
    assert micro_batches(10, 5) == (5, 2)    # one process: seg.batch_size x seg.iter_size
    assert micro_batches(5, 5) == (5, 1)     # two processes share 10
    assert micro_batches(6, 4) == (3, 2)     # never more than seg.batch_size at once
    assert micro_batches(7, 4) == (1, 7)


def test_background_writer_keeps_order_and_raises() -> None:
    done: list[int] = []
    with BackgroundWriter(depth=2) as writer:
        for i in range(10):
            writer.submit(lambda i=i: done.append(i))
    assert done == list(range(10))

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with BackgroundWriter() as writer:
            writer.submit(fail)
            writer.submit(lambda: done.append(-1))  # dropped after the failure
    assert -1 not in done


def test_auto_precision_is_fp32_on_the_cpu_and_bf16_nhwc_on_recent_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_config(None).run
    assert (run.amp, run.channels_last) == ("auto", "auto")
    assert Precision.from_run(run, torch.device("cpu")) == Precision("cpu", None, False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert Precision.from_run(run, torch.device("cuda", 0)) == Precision("cuda", torch.bfloat16, True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 0))   # V100: no bf16 units
    assert Precision.from_run(run, torch.device("cuda", 0)) == Precision("cuda", None, False)
    explicit = load_config(None, ["run.amp=fp16", "run.channels_last=false"]).run
    assert Precision.from_run(explicit, torch.device("cuda", 0)) == Precision("cuda", torch.float16, False)


def test_precision_switches_on_the_cpu() -> None:
    run = load_config(None, ["run.amp=bf16", "run.channels_last=true"]).run
    precision = Precision.from_run(run, torch.device("cpu"))
    conv = precision.model(torch.nn.Conv2d(3, 4, 3))
    x = precision.input(torch.randn(1, 3, 8, 8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    with precision.autocast():
        assert conv(x).dtype == torch.bfloat16
    assert not precision.scaler().is_enabled()  # bf16 needs no loss scaling
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        Precision.from_run(load_config(None, ["run.amp=fp16"]).run, torch.device("cpu"))
