"""Engine: poly LR schedule, pickle-free checkpoints and resume, device selection, seeding."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conta.engine import loop, trainer
from conta.engine.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from conta.engine.loop import EpochTraining, train_epochs
from conta.engine.sampling import EpochAugmented
from conta.engine.trainer import Checkpointer, Hook, Trainer
from conta.engine.device import loader_workers, resolve_device, seed_everything
from conta.engine.schedule import PolySchedule, poly_factor
from conta.errors import ConfigError, ContaError
from conta.progress import rate


class NotATensor:
    """An arbitrary object: loading it needs pickle, which weights_only=True refuses."""

    def __init__(self) -> None:
        self.payload = "rm -rf"


def two_group_optimizer() -> torch.optim.SGD:
    backbone, head = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    return torch.optim.SGD([{"params": [backbone]}, {"params": [head], "lr_mult": 10.0}], lr=123.0)


def lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


# -- PolySchedule ------------------------------------------------------------------------------


def test_poly_factor() -> None:
    assert poly_factor(0, 10, 0.9) == 1.0
    assert poly_factor(5, 10, 1.0) == 0.5
    assert poly_factor(5, 10, 2.0) == 0.25
    assert poly_factor(10, 10, 0.9) == 0.0
    assert poly_factor(12, 10, 0.9) == 0.0  # past the end: clamped, not a complex number


def test_linear_decay_period_1_with_group_multipliers() -> None:
    opt = two_group_optimizer()
    sched = PolySchedule(opt, base_lr=0.1, max_step=100, power=1.0)
    assert lrs(opt) == pytest.approx([0.1, 1.0])  # applied at construction, replacing the optimizer's lr
    sched.apply(25)
    assert lrs(opt) == pytest.approx([0.075, 0.75])
    sched.apply(99)
    assert lrs(opt) == pytest.approx([0.001, 0.01])
    sched.apply(100)
    assert lrs(opt) == [0.0, 0.0]
    sched.apply(150)
    assert lrs(opt) == [0.0, 0.0]


def test_power_0_9() -> None:
    sched = PolySchedule(two_group_optimizer(), base_lr=0.1, max_step=100, power=0.9)
    assert sched.lr_at(50) == pytest.approx(0.1 * 0.535887, rel=1e-6)   # 0.5 ** 0.9
    assert sched.lr_at(90) == pytest.approx(0.1 * 0.125893, rel=1e-5)   # 0.1 ** 0.9


def test_period_10_holds_the_rate_between_updates() -> None:
    # deeplab-pytorch refreshes the rate every 10 iterations
    opt = two_group_optimizer()
    sched = PolySchedule(opt, base_lr=0.1, max_step=100, power=1.0, period=10)
    assert [sched.lr_at(s) for s in (0, 1, 9)] == [0.1, 0.1, 0.1]
    assert [sched.lr_at(s) for s in (10, 15, 19)] == pytest.approx([0.09] * 3)
    assert sched.lr_at(20) == pytest.approx(0.08)
    assert sched.lr_at(99) == pytest.approx(0.01)
    sched.apply(37)
    assert lrs(opt) == pytest.approx([0.07, 0.7])


def test_zero_max_step_does_not_divide_by_zero() -> None:
    sched = PolySchedule(two_group_optimizer(), base_lr=0.1, max_step=0, power=0.9)
    assert sched.lr_at(0) == 0.1 and sched.lr_at(1) == 0.0


def test_the_optimizer_steps_with_the_scheduled_rate() -> None:
    opt = two_group_optimizer()
    sched = PolySchedule(opt, base_lr=0.1, max_step=100, power=1.0)
    sched.apply(25)
    for group in opt.param_groups:
        group["params"][0].grad = torch.ones(2)
    opt.step()
    backbone, head = (g["params"][0].detach() for g in opt.param_groups)
    assert torch.allclose(backbone, torch.full((2,), 1 - 0.075))
    assert torch.allclose(head, torch.full((2,), 1 - 0.75))


# -- checkpoints -------------------------------------------------------------------------------


def _train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(4, 3)  # drawn from the global RNG, so resuming must restore it
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def _model_and_opt() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt = _model_and_opt()
    _train_step(model, opt)
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(path, model=model.state_dict(), optimizer=opt.state_dict(), step=7, epoch=2,
                    meta={"name": "cam", "scores": [0.5, 0.25], "done": False})
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left

    state = load_checkpoint(path)
    assert state["step"] == 7 and state["epoch"] == 2
    assert state["meta"] == {"name": "cam", "scores": [0.5, 0.25], "done": False}
    assert isinstance(state["torch_rng"], torch.Tensor)
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value)
    momentum = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(state["optimizer"]["state"][0]["momentum_buffer"], momentum)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, opt = _model_and_opt()
    _train_step(model, opt)
    save_checkpoint(tmp_path / "c.pt", model=model.state_dict(), optimizer=opt.state_dict(), step=1)
    _train_step(model, opt)
    _train_step(model, opt)  # the uninterrupted run: two more steps

    torch.manual_seed(123)  # a fresh process: different RNG, freshly built model
    resumed, resumed_opt = _model_and_opt()
    state = load_checkpoint(tmp_path / "c.pt")
    resumed.load_state_dict(state["model"])
    resumed_opt.load_state_dict(state["optimizer"])
    restore_rng(state)
    _train_step(resumed, resumed_opt)
    _train_step(resumed, resumed_opt)
    for key, value in model.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


class _Points(EpochAugmented):
    """Ten seeded (x, y) samples; the epoch's noise comes from (seed, epoch, index)."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.sample_rng(index).normal(size=3).astype(np.float32))
        return {"x": x, "y": x.sum(dim=0, keepdim=True)}


def _fit(tmp_path: Path, log_every: int, loss_fn=None, workers: int = 0) -> tuple[list[dict], nn.Module]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def mse(net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        error = net(batch["x"]) - batch["y"]
        return error.pow(2).mean(), {"abs": error.abs().mean()}

    plan = EpochTraining(epochs=2, batch_size=2, log_every=log_every, num_workers=workers)
    history = train_epochs(model, opt, PolySchedule(opt, 0.05, 10), _Points(seed=1), loss_fn or mse, plan,
                           tmp_path / f"every{log_every}_{workers}.pt", torch.device("cpu"), "fit", log=lambda _: None)
    return history, model


def test_losses_read_back_every_log_every_steps_change_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferring the per-step read-back (a host sync on a GPU) must leave history and weights as
    they were, and reduce the collectives to one per log_every steps (+ one per epoch)."""
    every_step, stepwise = _fit(tmp_path, log_every=1)
    calls = []
    for module in (loop, trainer):
        monkeypatch.setattr(module, "all_reduce_sum", lambda array: calls.append(len(array)) or array)
    every_five, deferred = _fit(tmp_path, log_every=5)
    assert every_five == every_step and set(every_step[0]) == {"epoch", "step", "train_loss", "train_abs"}
    assert all(torch.equal(a, b) for a, b in zip(stepwise.parameters(), deferred.parameters()))
    assert calls == [5, 3] * 2                      # 5 steps' losses, then the epoch's (count, loss, abs)


def test_persistent_workers_draw_each_epochs_samples(tmp_path: Path) -> None:
    """One loader with persistent workers serves both epochs: the workers' dataset copies must
    still augment with the right epoch, so the run equals the one without workers."""
    in_process, _ = _fit(tmp_path, log_every=1)
    in_workers, _ = _fit(tmp_path, log_every=1, workers=2)
    assert in_workers == in_process and in_process[0]["train_loss"] != in_process[1]["train_loss"]


def test_loader_workers_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers("auto", torch.device("cpu")) == 0
    assert loader_workers("auto", torch.device("cuda", 0)) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert loader_workers("auto", torch.device("cuda", 3)) == 1
    assert loader_workers(3, torch.device("cpu")) == 3


def test_a_non_finite_loss_names_its_step(tmp_path: Path) -> None:
    calls = []

    def blows_up(net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        calls.append(1)
        loss = net(batch["x"]).pow(2).mean()
        return (loss * float("nan") if len(calls) == 3 else loss), {}

    with pytest.raises(ContaError, match=r"fit: loss is nan at step 2 \(epoch 1\)"):
        _fit(tmp_path, log_every=4, loss_fn=blows_up)
    assert len(calls) == 4                          # found at the read-back after step 4


def test_restore_rng_replays_the_random_stream(tmp_path: Path) -> None:
    torch.manual_seed(5)
    save_checkpoint(tmp_path / "c.pt", step=0)
    expected = torch.rand(4)
    torch.rand(10)
    restore_rng(load_checkpoint(tmp_path / "c.pt"))
    assert torch.equal(torch.rand(4), expected)


def test_checkpoint_needing_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"model": {}, "extra": NotATensor()}, path)
    with pytest.raises(ContaError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_checkpoint(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, model=nn.Linear(3, 2).state_dict(), step=3)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00not a checkpoint" * 50, "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(ContaError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "not a readable" in str(info.value)
    assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)  # one line, no unsafe advice


def test_rates_below_one_per_second_are_seconds_each() -> None:
    assert rate(30, 2.0) == "15.0 images/s"
    assert rate(3, 20.0) == "6.7 s/image"  # not "0.1 images/s", let alone "0.0"
    assert rate(2, 1000.0, "iteration") == "500.0 s/iteration"


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ContaError, match="checkpoint not found") as info:
        load_checkpoint(tmp_path / "none.pt")
    assert str(tmp_path / "none.pt") in str(info.value)


# -- device and seeding ------------------------------------------------------------------------


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.usefixtures("no_cuda")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError) as info:
            resolve_device(spec)
        assert "run.device" in str(info.value) and spec in str(info.value)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", ""])
def test_unknown_device_is_a_config_error(spec: str) -> None:
    with pytest.raises(ConfigError, match="run.device"):
        resolve_device(spec)


def test_seed_everything_repeats_all_generators() -> None:
    def draw() -> tuple[float, float, list[float]]:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    seed_everything(11)
    first = draw()
    seed_everything(11)
    assert draw() == first
    seed_everything(12)
    assert draw() != first


def test_trainer_accumulates_runs_hooks_in_order_and_refuses_another_models_checkpoint(tmp_path: Path) -> None:
    """Two micro-batches per step (each loss halved), hooks around every step, the checkpointer
    last (it sees the step the others saw); a checkpoint of another meta is refused on resume."""
    events: list[tuple[str, int]] = []

    class Spy(Hook):
        def before_step(self, t: Trainer) -> None:
            events.append(("before", t.step))

        def after_step(self, t: Trainer) -> None:
            events.append(("after", t.step))

    def run(meta: dict) -> tuple[Trainer, list[list[float]]]:
        torch.manual_seed(0)
        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        checkpointer = Checkpointer(tmp_path / "c.pt", lambda step: step == 2, meta)
        trainer = Trainer(model, opt, lambda net, b: (net(b[0]).pow(2).mean(), {}), 2, torch.device("cpu"),
                          [Spy()], accumulate=2, checkpointer=checkpointer)
        trainer.losses.add = lambda step, values, meta=None: seen.append([v.item() for v in values])
        seen: list[list[float]] = []
        trainer.train(lambda start: iter([(torch.ones(2, 3),)] * 4))
        return trainer, seen

    trainer, seen = run({"kind": "a"})
    assert events == [("before", 0), ("after", 1), ("before", 1), ("after", 2)]
    assert trainer.step == 2 and len(seen) == 2 and len(seen[0]) == 2 and seen[0][0] == seen[0][1]
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 2
    with pytest.raises(ContaError, match="made with another model"):
        run({"kind": "b"})
