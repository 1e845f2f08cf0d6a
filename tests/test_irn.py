"""IRN network and its losses on a narrow backbone and tiny cases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from conta.models.irn import (IRN, affinity_labels, affinity_loss, displacement_loss, infer_boundary_displacement,
                              inference_size, irn_losses)
from conta.models.resnet import resnet
from conta.ops.path_index import PathIndex


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convs gain nothing from threads, and on a shared CPU each OpenMP barrier can stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def model() -> IRN:
    torch.manual_seed(0)
    return IRN(resnet("resnet18", width=8))


def test_forward_shapes_and_frozen_backbone(model: IRN) -> None:
    model.train()
    assert not model.backbone.training and model.boundary_head.training
    boundary, displacement = model(torch.randn(2, 3, 48, 64))
    assert boundary.shape == (2, 1, 12, 16) and displacement.shape == (2, 2, 12, 16)
    index = PathIndex(5, (12, 16))
    labels = torch.randint(0, 3, (2, 12, 16), generator=torch.Generator().manual_seed(1))
    irn_losses((boundary, displacement), labels, index)["total"].backward()
    assert all(not p.requires_grad and p.grad is None for p in model.backbone.parameters())
    heads = list(model.boundary_head.parameters()) + list(model.displacement_head.parameters())
    assert all(p.grad is not None for p in heads)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in heads}


def test_boundary_branch_trains_the_same_without_the_displacement_branch() -> None:
    """irn.displacement=false may only save time: the boundary branch must learn exactly as before."""
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 3, (2, 8, 12), generator=torch.Generator().manual_seed(3))
    index = PathIndex(3, (8, 12))
    trained = []
    for displacement in (True, False):
        torch.manual_seed(0)
        net = IRN(resnet("resnet18", width=8), displacement=displacement).train()
        optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
        for _ in range(2):
            losses = irn_losses(net(x), labels, index)
            optimizer.zero_grad()
            losses["total"].backward()
            optimizer.step()
        trained.append((net, losses))
    (full, full_losses), (lean, lean_losses) = trained
    assert lean.displacement_head is None and lean(x)[1] is None
    assert set(lean_losses) == {"affinity_pos", "affinity_neg", "total"}
    assert torch.equal(lean_losses["total"], (lean_losses["affinity_pos"] + lean_losses["affinity_neg"]) / 2)
    for a, b in zip(full.boundary_head.parameters(), lean.boundary_head.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert infer_boundary_displacement(lean, x[0], 32)[1] is None


def test_displacement_mean_is_subtracted_in_eval_only(model: IRN) -> None:
    x = torch.randn(1, 3, 32, 32)
    model.train()
    _, raw = model(x)
    model.displacement_mean.copy_(torch.tensor([0.5, -2.0]))
    _, still_raw = model(x)
    model.eval()
    _, shifted = model(x)
    assert torch.allclose(raw, still_raw)
    assert torch.allclose(shifted, raw - torch.tensor([0.5, -2.0]).view(1, 2, 1, 1), atol=1e-6)


@pytest.mark.parametrize(("size", "crop", "padded"), [((375, 500), 512, (512, 512)), ((600, 300), 512, (608, 512)),
                                                   ((37, 45), 64, (64, 64)), ((37, 45), 32, (48, 48))])
def test_inference_size_is_the_training_crop_or_the_next_multiple_of_16(size, crop, padded) -> None:
    assert inference_size(*size, crop) == padded


def test_inference_pads_to_the_crop_flips_and_crops(model: IRN) -> None:
    # IRNet's EdgeDisplacement: the image and its mirror, zero-padded right/bottom to the 512
    # training crop (here 64), so GroupNorm pools over the padding as in training
    model.train()
    image = torch.randn(3, 37, 45)
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    boundary, displacement = infer_boundary_displacement(model, image, crop_size=64)
    hook.remove()
    (batch,) = seen
    assert batch.shape == (2, 3, 64, 64)
    assert torch.equal(batch[0, :, :37, :45], image) and torch.equal(batch[1, :, :37, :45], image.flip(-1))
    assert not batch[:, :, 37:].any() and not batch[:, :, :, 45:].any()
    assert boundary.shape == (10, 12) and displacement.shape == (2, 10, 12)
    assert torch.all((boundary >= 0) & (boundary <= 1))
    assert model.training                                              # mode restored
    tighter, _ = infer_boundary_displacement(model, image, crop_size=48)
    assert not torch.allclose(tighter, boundary, atol=1e-4)            # the padding reaches GroupNorm
    symmetric = torch.cat([image[:, :32, :16], image[:, :32, :16].flip(-1)], dim=-1)  # 32 x 32: no padding
    boundary, _ = infer_boundary_displacement(model, symmetric, crop_size=32)
    assert torch.allclose(boundary, boundary.flip(-1), atol=1e-5)     # flip averaging is symmetric


def test_inference_without_displacement_skips_the_branch(model: IRN) -> None:
    """The random walk reads only boundaries: displacement=False must not run that branch."""
    calls = []
    model.displacement_head.register_forward_hook(lambda *_: calls.append(1))
    image = torch.randn(3, 37, 45)
    boundary, displacement = infer_boundary_displacement(model, image, crop_size=48)
    assert len(calls) == 1 and displacement is not None
    lean, none = infer_boundary_displacement(model, image, crop_size=48, displacement=False)
    assert len(calls) == 1 and none is None and torch.equal(lean, boundary)


def test_pair_labels() -> None:
    index = PathIndex(5, (8, 12))
    labels = torch.zeros(1, 8, 12, dtype=torch.long)
    bg, fg, neg = affinity_labels(labels, index)
    assert bg.all() and not fg.any() and not neg.any()                 # all background: no negatives
    labels[0, :, 6:] = 2
    labels[0, 0, :] = 255
    bg, fg, neg = affinity_labels(labels, index)
    width = 12
    src = index.src.expand_as(index.dst)
    valid = (src >= width) & (index.dst >= width)                       # row 0 is ignored
    left_src, left_dst = src % width < 6, index.dst % width < 6
    assert torch.equal(bg[0], valid & left_src & left_dst)
    assert torch.equal(fg[0], valid & ~left_src & ~left_dst)
    assert torch.equal(neg[0], valid & (left_src != left_dst))
    _, fg_capped, _ = affinity_labels(labels, index, n_classes=1)      # class 2 > n_classes: invalid
    assert not fg_capped.any()


def test_perfect_boundaries_give_near_zero_affinity_loss() -> None:
    index = PathIndex(5, (10, 16))
    labels = torch.zeros(1, 10, 16, dtype=torch.long)
    labels[0, :, 9:] = 1
    labels[0, :, 8] = 255                                               # the seed's ignore band
    logits = torch.full((1, 1, 10, 16), -20.0)
    logits[0, 0, :, 8] = 20.0                                           # the boundary sits on the band
    losses = irn_losses((logits, torch.zeros(1, 2, 10, 16)), labels, index)
    assert losses["affinity_pos"] < 1e-4 and losses["affinity_neg"] < 1e-4
    assert losses["displacement_bg"] == 0.0 and losses["displacement_fg"] > 0.5   # no centroid yet


def test_affinity_loss_values() -> None:
    torch.manual_seed(0)
    pos = torch.rand(1, 4, 6) > 0.5
    aff = torch.where(pos, 1.0, 0.0)
    loss_pos, loss_neg = affinity_loss(aff, pos, torch.zeros_like(pos), ~pos)
    assert abs(loss_pos) < 1e-4 and abs(loss_neg) < 1e-4
    loss_pos, loss_neg = affinity_loss(torch.full((1, 4, 6), 0.5), pos, pos, ~pos)
    assert torch.allclose(loss_pos, torch.tensor(0.6931), atol=1e-3)
    assert torch.allclose(loss_neg, torch.tensor(0.6931), atol=1e-3)


def test_displacement_towards_one_centroid_costs_nothing() -> None:
    index = PathIndex(5, (10, 14))
    ys, xs = torch.meshgrid(torch.arange(10.0), torch.arange(14.0), indexing="ij")
    displacement = torch.stack([4.5 - ys, 6.5 - xs])[None]              # every pixel points at (4.5, 6.5)
    labels = torch.ones(1, 10, 14, dtype=torch.long)
    bg, fg, _ = affinity_labels(labels, index)
    loss_fg, loss_bg = displacement_loss(displacement, index, bg, fg)
    assert loss_fg.abs() < 1e-6 and loss_bg == 0.0
    loss_fg, _ = displacement_loss(torch.zeros_like(displacement), index, bg, fg)
    expected = index.offsets.abs().sum(dim=1).float().mean() / 2        # mean |offset|_1 over the 2 coordinates
    assert torch.allclose(loss_fg, expected, atol=1e-4)


def test_all_same_labels_train_finite(model: IRN) -> None:
    model.train()
    outputs = model(torch.randn(1, 3, 32, 32))
    losses = irn_losses(outputs, torch.full((1, 8, 8), 3), PathIndex(3, (8, 8)))
    assert losses["affinity_neg"] == 0.0 and losses["displacement_bg"] == 0.0
    assert all(torch.isfinite(v) for v in losses.values())
