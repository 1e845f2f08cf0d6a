"""Segmentation stage: MSC loss, optimiser groups and poly schedule, frozen BN, iter_size,
exact resume, TensorBoard, test (PNGs, logits, mIoU, no-GT splits), dense CRF, Predictor; and the
same path for DeepLab v3+ (trainable BN, its loss, its weights, its model files, SyncBN's switch)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _seg_tiny import IMAGE_SIZE, N_CLASSES, seg_config, untrained_model
from PIL import Image

from conta.config import Config, load_config, replace
from conta.data.palette import IGNORE_INDEX
from conta.data.voc import VOC_CLASSES
from conta.engine import trainer
from conta.engine.precision import Precision
from conta.engine.sync_bn import GlooSyncBatchNorm
from conta.engine.trainer import take_step
from conta.errors import ConfigError, ContaError
from conta.eval.metrics import ConfusionMatrix
from conta.io import load_json, load_label_png, load_npz, save_label_png, save_rgb
from conta.models.resnet import resnet
from conta.models.deeplab import DeepLabV2, DeepLabV3
from conta.seg_predictor import Predictor, architecture_note, build_seg_model, load_seg_model, logits_to_probs, model_meta
from conta.stages import seg
from conta.stages.paths import round_paths
from conta.stages.provenance import claim, model_identity
from conta.stages.round_context import RoundContext


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The config of a tiny synthetic run whose model was trained on ground truth (shared)."""
    cfg = seg_config(tmp_path_factory.mktemp("seg"))
    seg.train(RoundContext.of(cfg, 0), log=lambda s: None)
    return cfg


def _tiny_model(n_classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = seg_config(Path("unused"))
    return build_seg_model(model_meta(cfg.seg, [f"c{i}" for i in range(n_classes)]))


# -- loss ---------------------------------------------------------------------------------------


def test_resize_labels_matches_pil_nearest() -> None:
    labels = np.random.default_rng(0).integers(0, 6, (13, 17)).astype(np.uint8)
    for h, w in [(5, 7), (9, 9), (26, 34)]:
        ours = seg.resize_labels(torch.from_numpy(labels).long()[None], (h, w))[0].numpy()
        pil = np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
        assert np.array_equal(ours, pil)


def test_msc_loss_is_sum_of_per_output_ce_on_resized_labels() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([[[0, 0, 1, 1], [0, 255, 1, 1], [2, 2, 255, 1], [2, 2, 1, 1]]])
    big, small = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2)
    # by hand: the 2x2 labels are PIL's nearest picks (rows/cols 1 and 3); mean over non-ignored pixels
    small_labels = torch.tensor([[255, 1], [2, 1]])
    expected = 0.0
    for logits, target in [(big[0], labels[0]), (small[0], small_labels)]:
        logp = logits.log_softmax(0)
        picks = [logp[target[y, x], y, x] for y in range(target.shape[0]) for x in range(target.shape[1])
                 if target[y, x] != IGNORE_INDEX]
        expected += -torch.stack(picks).mean()
    assert torch.allclose(seg.msc_loss([big, small], labels), expected, atol=1e-6)


def test_msc_loss_output_with_only_ignored_pixels_adds_zero() -> None:
    labels = torch.full((1, 4, 4), IGNORE_INDEX)
    labels[0, 0, 0] = 1
    out = [torch.randn(1, 3, 4, 4), torch.randn(1, 3, 1, 1)]  # the 1x1 output only sees (2, 2): ignored
    loss = seg.msc_loss(out, labels)
    assert torch.isfinite(loss)
    assert torch.allclose(loss, F.cross_entropy(out[0], labels, ignore_index=IGNORE_INDEX))


# -- optimiser, schedule, BN, accumulation ------------------------------------------------------


def test_param_groups_and_poly_schedule_every_10_iterations() -> None:
    model = _tiny_model()
    cfg = seg_config(Path("unused"), "seg.iterations=100", "seg.lr=0.01", "seg.lr_decay_every=10")
    optimizer, schedule = seg.build_optimizer(model, cfg.seg)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert {n: g["lr_mult"] for n, g in groups.items()} == {"backbone": 1.0, "aspp_weight": 10.0, "aspp_bias": 20.0}
    assert groups["aspp_bias"]["weight_decay"] == 0 and groups["backbone"]["weight_decay"] == cfg.seg.weight_decay
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    assert not bn_params & {id(p) for g in optimizer.param_groups for p in g["params"]}
    for it, base in [(0, 0.01), (9, 0.01), (10, 0.01 * 0.9**0.9), (19, 0.01 * 0.9**0.9), (25, 0.01 * 0.8**0.9)]:
        schedule.apply(it)
        for g in optimizer.param_groups:
            assert g["lr"] == pytest.approx(base * g["lr_mult"])


def _step(model: torch.nn.Module, batches: list, optimizer: torch.optim.Optimizer | None = None,
          upsample: bool = False) -> tuple[list[torch.Tensor], seg.SegStep]:
    """One trainer step of the DeepLab step function (lr 0 unless an optimizer is given: gradients only)."""
    optimizer = optimizer or torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    step = seg.SegStep(upsample)
    losses, _ = take_step(model, optimizer, Precision().scaler(), step, batches, torch.device("cpu"))
    return losses, step


def test_bn_stays_frozen_through_a_training_step() -> None:
    model = _tiny_model().train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = copy.deepcopy([m.state_dict() for m in bns])
    cfg = seg_config(Path("unused"), "seg.lr=0.1")
    optimizer, _ = seg.build_optimizer(model, cfg.seg)
    batch = (torch.randn(2, 3, 33, 33), torch.randint(0, 4, (2, 33, 33)))
    _step(model, [batch], optimizer)
    assert all(not m.training for m in bns)
    for m, state in zip(bns, before):
        for key, value in m.state_dict().items():
            assert torch.equal(value, state[key]), key
    assert model.base.aspp.branches[0].weight.grad is not None


def test_iter_size_accumulation_equals_one_big_batch() -> None:
    torch.manual_seed(1)
    images, labels = torch.randn(4, 3, 33, 33), torch.randint(0, 4, (4, 33, 33))  # no ignored pixels
    small, big = _tiny_model().train(), _tiny_model().train()
    _step(small, [(images[:2], labels[:2]), (images[2:], labels[2:])])
    _step(big, [(images, labels)])
    for (name, a), b in zip(small.named_parameters(), big.parameters()):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-7), name


# -- training -----------------------------------------------------------------------------------


def test_training_stream_is_a_function_of_seed_and_sample_number(trained: Config) -> None:
    dataset = seg.build_dataset(trained.data, "train")
    a = seg.SegTrainStream(dataset, dataset.ids, dataset.mask_dir, trained.seg, seed=3)
    b = seg.SegTrainStream(dataset, dataset.ids, dataset.mask_dir, trained.seg, seed=3)
    for k in (0, 7, 13):
        assert all(torch.equal(x, y) for x, y in zip(a[k], b[k]))
    image, label = a[7]
    assert image.shape == (3, 65, 65) and label.shape == (65, 65) and label.dtype == torch.int64
    epoch = [a.locate(k)[0] for k in range(len(dataset.ids))]
    assert sorted(epoch) == sorted(dataset.ids)  # one epoch visits every image once


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    straight = seg_config(tmp_path / "a")
    resumed = seg_config(tmp_path / "b")
    seg.train(RoundContext.of(straight, 0), log=lambda s: None)

    real_save = trainer.save_checkpoint

    def save_then_crash(path, **state):
        real_save(path, **state)
        if state["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        seg.train(RoundContext.of(resumed, 0), log=lambda s: None)
    assert not (round_paths(resumed, 0).seg / "model.pt").exists()
    ckpt = round_paths(resumed, 0).seg / "checkpoint.pt"  # rewritten as the previous layout counted: "iteration"
    state = torch.load(ckpt, weights_only=True)
    torch.save({**{k: v for k, v in state.items() if k != "step"}, "iteration": state["step"]}, ckpt)
    messages: list[str] = []
    seg.train(RoundContext.of(resumed, 0), log=messages.append)
    assert any("resuming at iteration 3" in m for m in messages)
    a = torch.load(round_paths(straight, 0).seg / "model.pt", weights_only=True)["model"]
    b = torch.load(round_paths(resumed, 0).seg / "model.pt", weights_only=True)["model"]
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), key
    # the last checkpoints agree too, down to the RNG state a further resume would restore
    a = torch.load(round_paths(straight, 0).seg / "checkpoint.pt", weights_only=True)
    b = torch.load(round_paths(resumed, 0).seg / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    assert torch.equal(a["torch_rng"], b["torch_rng"])


def test_tensorboard_events_hold_loss_lr_and_image(trained: Config) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(round_paths(trained, 0).seg / "tb")).Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss/train", "lr/backbone", "lr/aspp_weight", "lr/aspp_bias"} <= set(scalars)
    assert [e.step for e in events.Scalars("loss/train")] == [2, 4, 6]
    assert events.Tags()["images"] == ["train/image_pred_target"]


def test_init_from_scratch_torchvision_or_conta_weights(trained: Config, tmp_path: Path) -> None:
    trained_file = round_paths(trained, 0).seg / "model.pt"
    scratch = torch.load(trained_file, weights_only=True)["model"]
    assert not torch.allclose(scratch["base.backbone.bn1.running_var"], torch.ones(8))  # calibrated from data

    torchvision_file = tmp_path / "resnet18.pth"
    imagenet = resnet("resnet18", 8)
    torch.save({**imagenet.state_dict(), "fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}, torchvision_file)
    for source, expected, source_of in [(torchvision_file, "ASPP randomly initialised", imagenet.state_dict()),
                                        (trained_file, "trunk and ASPP", None)]:
        cfg = replace(trained, [f"seg.pretrained={source}"])
        model = _tiny_model(N_CLASSES)
        message = seg.init_weights(model, cfg.seg, seg.pretrained_meta(str(source)), lambda: pytest.fail("calibrated"))
        assert expected in message
        reference = source_of or {k.removeprefix("base.backbone."): v for k, v in scratch.items()}
        for key, value in model.base.backbone.state_dict().items():
            assert torch.equal(value, reference[key]), key
    assert torch.equal(model.base.aspp.branches[0].weight, scratch["base.aspp.branches.0.weight"])


def test_nan_loss_stops_with_the_iteration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = seg_config(tmp_path)
    monkeypatch.setattr(seg, "msc_loss", lambda outputs, labels: outputs[0].sum() * float("nan"))
    with pytest.raises(ContaError, match="iteration 1"):
        seg.train(RoundContext.of(cfg, 0), log=lambda s: None)


def test_training_without_labels_says_where_it_looked(tmp_path: Path) -> None:
    cfg = seg_config(tmp_path, "seg.label_source=pseudo_mask")
    with pytest.raises(ContaError, match="pseudo_mask"):
        seg.train(RoundContext.of(cfg, 0), log=lambda s: None)


# -- test ---------------------------------------------------------------------------------------


def test_test_writes_palette_pngs_logits_and_scores(trained: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = seg.test(RoundContext.of(trained, 0), "val", keep_logits=True, log=lambda s: None)
    paths = round_paths(trained, 0)
    assert np.isfinite(scores["miou"]) and 0 <= scores["miou"] <= 1
    assert load_json(paths.metrics)["seg_val"]["miou"] == scores["miou"]
    ids = seg.build_dataset(trained.data, "val").ids
    for image_id in ids:
        with Image.open(paths.seg_pred("val") / f"{image_id}.png") as png:
            assert png.mode == "P" and png.size == (IMAGE_SIZE, IMAGE_SIZE)
        saved = load_npz(paths.seg_logits("val") / f"{image_id}.npz")
        assert saved["logits"].dtype == np.float16
        assert saved["logits"].shape == (N_CLASSES, IMAGE_SIZE // 8 + 1, IMAGE_SIZE // 8 + 1)
        assert tuple(saved["size"]) == (IMAGE_SIZE, IMAGE_SIZE)
    # a second call finds every output and loads no model
    monkeypatch.setattr(seg, "write_predictions", lambda *a, **k: pytest.fail("recomputed"))
    monkeypatch.setattr(seg, "load_seg_model", lambda *a, **k: pytest.fail("loaded"))
    assert seg.test(RoundContext.of(trained, 0), "val", keep_logits=True, log=lambda s: None)["miou"] == scores["miou"]


def test_test_on_images_without_ground_truth(trained: Config, tmp_path: Path) -> None:
    """The next round's training images: predictions, no scores."""
    shutil.copytree(trained.data.root, tmp_path / "data")
    for mask in (tmp_path / "data" / "SegmentationClass").glob("val_*.png"):
        mask.unlink()
    other = replace(trained, [f"data.root={tmp_path / 'data'}", f"run.out_dir={tmp_path / 'runs'}"])
    model_path = round_paths(trained, 0).seg / "model.pt"
    assert seg.test(RoundContext.of(other, 0), "val", model_path=model_path, log=lambda s: None) == {}
    for image_id in seg.build_dataset(other.data, "val").ids:
        labels = load_label_png(round_paths(other, 0).seg_pred("val") / f"{image_id}.png")
        assert labels.shape == (IMAGE_SIZE, IMAGE_SIZE) and labels.max() < N_CLASSES
    assert not round_paths(other, 0).metrics.exists()


def test_test_with_another_model_recomputes_and_a_bad_model_path_fails(trained: Config, tmp_path: Path) -> None:
    cfg = replace(trained, [f"run.out_dir={tmp_path / 'runs'}"])
    shutil.copytree(trained.run_dir, cfg.run_dir)
    pred, logits = round_paths(cfg, 0).seg_pred("val"), round_paths(cfg, 0).seg_logits("val")
    dataset = seg.build_dataset(cfg.data, "val")
    first = seg.test(RoundContext.of(cfg, 0), "val", keep_logits=True, log=lambda s: None)
    own = {p.name: p.read_bytes() for p in pred.glob("*.png")}
    assert len(own) == len(dataset)

    other = untrained_model(cfg, tmp_path / "other.pt", dataset.class_names)
    messages: list[str] = []
    second = seg.test(RoundContext.of(cfg, 0), "val", model_path=other, keep_logits=True, log=messages.append)
    assert any(f"{len(dataset)} outputs of another model removed" in m for m in messages)
    for folder in (pred, logits):
        assert load_json(folder / "MODEL.json")["sha256"] == model_identity(other)["sha256"]
    predictor = Predictor(cfg, other)  # the predictions are now that file's, pixel for pixel
    for image_id in dataset.ids:
        assert np.array_equal(load_label_png(pred / f"{image_id}.png"), predictor.predict(dataset.image(image_id))[0])
    assert second["miou"] != first["miou"]

    # a bad path fails in one line and leaves the predictions as they are, even with all of them made
    kept = {p.name: p.read_bytes() for p in pred.iterdir()}
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(2048))
    for bad, problem in ((tmp_path / "missing.pt", "model file not found"),
                         (tmp_path / "random.pt", "not a readable conta checkpoint")):
        with pytest.raises(ContaError, match=f"{bad.name}: {problem}"):
            seg.test(RoundContext.of(cfg, 0), "val", model_path=bad, log=lambda s: None)
        assert {p.name: p.read_bytes() for p in pred.iterdir()} == kept

    # back to the round's own model: its predictions and scores again
    assert seg.test(RoundContext.of(cfg, 0), "val", log=lambda s: None) == first
    assert {p.name: p.read_bytes() for p in pred.glob("*.png")} == own


# -- CRF ----------------------------------------------------------------------------------------


def test_crf_snaps_a_blurred_prediction_to_the_colour_edge(tmp_path: Path) -> None:
    root, size = tmp_path / "two", (36, 44)
    gt = np.zeros(size, np.uint8)
    gt[:, 20:] = 1
    image = np.where(gt[..., None] == 1, np.array([30, 60, 220], np.uint8), np.array([220, 60, 30], np.uint8))
    for image_id in ("a", "b"):
        save_rgb(root / "JPEGImages" / f"{image_id}.jpg", image.astype(np.uint8), quality=100)
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", gt)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\n")
    cfg = seg_config(tmp_path, "data.dataset=voc12", f"data.root={root}")
    # blurred logits: a soft ramp whose 50% point sits 6 pixels right of the true edge
    xs = (np.arange(size[1] // 8 + 1) * 8.0)[None, :].repeat(size[0] // 8 + 1, 0)
    fg = (xs - 26.0) / 6.0
    logits = torch.from_numpy(np.stack([-fg, fg]).astype(np.float32))
    paths = round_paths(cfg, 0)
    # the logits stand for those of the round's model: the folder records that model file
    model = untrained_model(cfg, paths.seg / "model.pt", list(VOC_CLASSES))
    claim(paths.seg_logits("val"), model_identity(model), log=lambda s: None)
    for image_id in ("a", "b"):
        seg.save_logits(paths.seg_logits("val") / f"{image_id}.npz", logits, size)
    before = ConfusionMatrix(["background", "thing"])
    blurred = logits_to_probs(logits.half().float(), size).argmax(0).numpy()
    before.update(blurred, gt)
    after = seg.crf(RoundContext.of(cfg, 0), "val", workers=2, log=lambda s: None)
    assert after["miou"] > before.scores()["miou"] + 0.1
    assert load_json(paths.metrics)["seg_val_crf"]["miou"] == after["miou"]
    assert load_label_png(paths.seg_pred("val_crf") / "a.png").shape == size


# -- Predictor ----------------------------------------------------------------------------------


def test_predictor_labels_at_the_input_size(trained: Config) -> None:
    predictor = Predictor(trained, round_paths(trained, 0).seg / "model.pt")
    dataset = seg.build_dataset(trained.data, "val")
    assert predictor.class_names == ["background", *dataset.class_names]
    image_id = dataset.ids[0]
    image = dataset.image(image_id)
    labels, probs = predictor.predict(image)
    assert labels.shape == image.shape[:2] and labels.dtype == np.uint8
    assert probs.shape == (N_CLASSES, *image.shape[:2]) and np.allclose(probs.sum(0), 1, atol=1e-4)
    seg.test(RoundContext.of(trained, 0), "val", log=lambda s: None)  # the stage and the Predictor agree pixel for pixel
    assert np.array_equal(labels, load_label_png(round_paths(trained, 0).seg_pred("val") / f"{image_id}.png"))
    labels_resized, probs_crf = predictor.predict(image, resize=True, crf=True)
    assert labels_resized.shape == image.shape[:2] and probs_crf.shape == probs.shape
    with pytest.raises(ContaError, match="uint8"):
        predictor.predict(image.astype(np.float32))


# -- DeepLab v3 / v3+ ---------------------------------------------------------------------------

V3PLUS = ("seg.model=deeplabv3plus", "seg.lr=0.01", "seg.lr_decay_every=1")


@pytest.fixture(scope="module")
def trained_v3plus(tmp_path_factory: pytest.TempPathFactory) -> Config:
    cfg = seg_config(tmp_path_factory.mktemp("seg_v3plus"), *V3PLUS)
    seg.train(RoundContext.of(cfg, 0), log=lambda s: None)
    return cfg


def test_v3plus_trains_tests_refines_and_predicts(trained_v3plus: Config) -> None:
    cfg, paths = trained_v3plus, round_paths(trained_v3plus, 0)
    saved = torch.load(paths.seg / "model.pt", weights_only=True)
    assert saved["meta"]["kind"] == "deeplab_v3plus" and saved["meta"]["output_stride"] == 16
    # BN trained: 6 iterations x 2 micro-batches moved every BN's statistics
    assert saved["model"]["base.backbone.bn1.num_batches_tracked"] == 12
    assert saved["model"]["base.decoder.reduce.1.num_batches_tracked"] == 12
    model, meta = load_seg_model(paths.seg / "model.pt")
    assert isinstance(model.base, DeepLabV3) and model.base.decoder is not None and meta == saved["meta"]

    scores = seg.test(RoundContext.of(cfg, 0), "val", keep_logits=True, log=lambda s: None)
    assert np.isfinite(scores["miou"])
    for image_id in seg.build_dataset(cfg.data, "val").ids:
        logits = load_npz(paths.seg_logits("val") / f"{image_id}.npz")
        assert logits["logits"].shape == (N_CLASSES, IMAGE_SIZE // 4, IMAGE_SIZE // 4)  # v3+ decodes at /4
    assert np.isfinite(seg.crf(RoundContext.of(cfg, 0), "val", workers=1, log=lambda s: None)["miou"])
    dataset = seg.build_dataset(cfg.data, "val")
    labels, _ = Predictor(cfg, paths.seg / "model.pt").predict(dataset.image(dataset.ids[0]))
    assert np.array_equal(labels, load_label_png(paths.seg_pred("val") / f"{dataset.ids[0]}.png"))


def test_model_files_without_a_newer_kind_load_as_v2(tmp_path: Path) -> None:
    cfg = seg_config(tmp_path)
    meta = model_meta(cfg.seg, ["background", "a"])
    # the keys every model file had before v3 existed: nothing new is written for v2
    assert set(meta) == {"kind", "arch", "width", "n_classes", "atrous_rates", "msc_scales", "stride_in_1x1",
                         "normalization", "class_names"} and meta["kind"] == "deeplab_v2"
    seg.save_seg_model(tmp_path / "old.pt", build_seg_model(meta), meta)
    assert isinstance(load_seg_model(tmp_path / "old.pt")[0].base, DeepLabV2)
    # logits files written before v3 existed still refine
    logits = torch.randn(2, 7, 7)
    np.savez(tmp_path / "old.npz", logits=logits.numpy().astype(np.float16), size=np.array([50, 52]))
    image = np.zeros((50, 52, 3), np.uint8)
    save_rgb(tmp_path / "old.png", image)
    seg._crf_job((tmp_path / "old.png", tmp_path / "old.npz", tmp_path / "crf.png", cfg.seg.crf))
    assert load_label_png(tmp_path / "crf.png").shape == (50, 52)


def test_v3_loss_compares_logits_upsampled_to_the_crop() -> None:
    model = build_seg_model(model_meta(seg_config(Path("unused"), "seg.model=deeplabv3").seg, ["a", "b", "c"])).train()
    images, labels = torch.randn(2, 3, 33, 33), torch.randint(0, 3, (2, 33, 33))
    labels[0, :5] = IGNORE_INDEX
    torch.manual_seed(5)  # the same dropout masks in both passes
    losses, step = _step(model, [(images, labels)], upsample=True)
    _, _, outputs = step.last
    assert outputs[0].shape[-1] == 3  # logits at /16
    torch.manual_seed(5)
    logits = F.interpolate(model(images)[0], size=(33, 33), mode="bilinear", align_corners=False)
    assert sum(losses).item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX).item(), rel=1e-5)


def test_sync_bn_switch_and_the_two_image_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = seg_config(Path("unused"), "seg.model=deeplabv3plus")
    meta = model_meta(cfg.seg, ["a", "b"])
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="at least 2 images per micro-batch.*seg.batch_size"):
        seg.synchronise_bn(build_seg_model(meta), meta, cfg.seg, 1, cpu)
    assert not seg.synchronise_bn(build_seg_model(meta), meta, cfg.seg, 2, cpu)  # one process: plain BN
    monkeypatch.setattr(seg, "world_size", lambda: 2)
    model = build_seg_model(meta)
    assert seg.synchronise_bn(model, meta, cfg.seg, 1, cpu)  # two processes share the statistics
    assert all(type(m) is GlooSyncBatchNorm for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    off = replace(cfg, ["seg.sync_bn=false"]).seg
    with pytest.raises(ConfigError, match="seg.sync_bn=true"):
        seg.synchronise_bn(build_seg_model(meta), meta, off, 1, cpu)
    v2_meta = model_meta(seg_config(Path("unused")).seg, ["a", "b"])
    v2 = build_seg_model(v2_meta)
    assert not seg.synchronise_bn(v2, v2_meta, cfg.seg, 1, cpu)
    assert not any(type(m) is GlooSyncBatchNorm for m in v2.modules())


def test_v3plus_init_from_scratch_torchvision_or_segmenters(trained: Config, trained_v3plus: Config,
                                                             tmp_path: Path) -> None:
    def fresh() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_seg_model(model_meta(trained_v3plus.seg, ["background", *seg.build_dataset(trained.data, "train").class_names]))

    assert "BN trains" in seg.init_weights(fresh(), trained_v3plus.seg, None, lambda: pytest.fail("calibrated"))
    torchvision_file = tmp_path / "resnet18.pth"
    imagenet = resnet("resnet18", 8)
    torch.save({**imagenet.state_dict(), "fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}, torchvision_file)
    v3plus_file, v2_file = (round_paths(c, 0).seg / "model.pt" for c in (trained_v3plus, trained))
    v3plus_state = torch.load(v3plus_file, weights_only=True)["model"]
    for source, expected in [(torchvision_file, "backbone: loaded"), (v3plus_file, "loaded trunk and ASPP and decoder"),
                             (v2_file, "the file's is a deeplab_v2 head")]:
        model = fresh()
        cfg = replace(trained_v3plus, [f"seg.pretrained={source}"])
        message = seg.init_weights(model, cfg.seg, seg.pretrained_meta(str(source)), lambda: pytest.fail("calibrated"))
        assert expected in message
        head_loaded = source == v3plus_file
        assert ("ASPP and decoder randomly initialised" in message) != head_loaded
        assert torch.equal(model.base.classifier.weight, v3plus_state["base.classifier.weight"]) == head_loaded
        if source == torchvision_file:  # strictly, every trunk tensor, into the trainable-BN trunk
            for key, value in model.base.backbone.state_dict().items():
                assert torch.equal(value, imagenet.state_dict()[key]), key


def test_v3_config_checks() -> None:
    with pytest.raises(ConfigError, match="seg.output_stride: must be 8 or 16"):
        seg_config(Path("unused"), "seg.model=deeplabv3", "seg.output_stride=32")
    cfg = seg_config(Path("unused"), "seg.model=deeplabv3", "seg.multi_grid=[1,2,4]")  # resnet18: 2 blocks
    with pytest.raises(ConfigError, match="seg.multi_grid: resnet18 has 2 blocks"):
        model_meta(cfg.seg, ["a"])
    assert model_meta(replace(cfg, ["seg.multi_grid=[1,2]"]).seg, ["a"])["multi_grid"] == [1, 2]


def test_voc12_deeplabv3plus_config_builds_the_documented_network() -> None:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "voc12_deeplabv3plus.yaml")
    meta = model_meta(cfg.seg, [f"c{i}" for i in range(21)])
    with torch.device("meta"):
        model = build_seg_model(meta)
    assert sum(p.numel() for p in model.parameters()) == 59_344_309  # docs/segmentation.md
    assert [b.conv2.dilation[0] for b in model.base.backbone.layer4] == [2, 4, 8]
    assert (cfg.seg.batch_size * cfg.seg.iter_size, cfg.seg.crop_size, cfg.seg.iterations) == (16, 513, 30000)


def test_architecture_note_only_when_the_file_and_the_config_differ() -> None:
    v3 = seg_config(Path("unused"), "seg.model=deeplabv3", "seg.output_stride=16").seg
    meta = model_meta(v3, ["background", "a", "b"])
    assert architecture_note("m.pt", meta, v3) is None  # v3 records the rates its stride implies
    note = architecture_note("m.pt", meta, seg_config(Path("unused")).seg)
    assert note is not None and note.startswith("m.pt was built with kind ") and "output_stride 16 (config: None)" in note
