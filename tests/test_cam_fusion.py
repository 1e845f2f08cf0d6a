"""Multi-scale + flip CAM fusion: sizes, flip handling of image and context, class selection,
max normalisation, upsampling alignment, and PIL-equivalent rescaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from conta.models.cam_net import CamNet
from conta.models.resnet import resnet
from conta.ops.cam_fusion import (multiscale_cam, normalize_max, rescale_image, select_classes,
                                  strided_size, upsample_cam)


class Pointwise(nn.Module):
    """A flip-equivariant 'CAM model': a 1x1 conv + ReLU at full resolution (plus M when given)."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, n_classes, 1)
        self.calls: list[tuple[int, ...]] = []

    def cam(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        self.calls.append(tuple(x.shape))
        out = F.relu(self.conv(x))
        if context is not None:
            out = out + F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("h", "w"), [(64, 64), (37, 50), (1, 5)])
def test_strided_size_is_ceil_quarter(h: int, w: int) -> None:
    assert strided_size(h, w) == (-(-h // 4), -(-w // 4))


def test_shapes_and_one_batched_forward_per_scale() -> None:
    model = Pointwise()
    cam = multiscale_cam(model, torch.randn(3, 37, 50), scales=(1.0, 0.5, 1.5, 2.0))
    assert cam.shape == (3, 10, 13)
    assert model.calls == [(2, 3, 37, 50), (2, 3, 18, 25), (2, 3, 56, 75), (2, 3, 74, 100)]


def test_flip_of_an_equivariant_model_doubles_the_cam() -> None:
    model, image = Pointwise(), torch.randn(3, 40, 52)
    with_flip = multiscale_cam(model, image, scales=(1.0, 0.5), flip=True)
    without = multiscale_cam(model, image, scales=(1.0, 0.5), flip=False)
    assert torch.allclose(with_flip, 2 * without, atol=1e-5)


def test_symmetric_input_gives_a_symmetric_cam() -> None:
    half = torch.randn(3, 32, 16)
    image = torch.cat([half, half.flip(-1)], dim=-1)
    model = CamNet(resnet("resnet18", width=4), 3).eval()
    # stride-2 convs are not flip-equivariant, but summing out[0] with the unflipped out[1]
    # makes the fused CAM of a mirror-symmetric image exactly symmetric
    cam = multiscale_cam(model, image, scales=(1.0, 0.5))
    assert torch.allclose(cam, cam.flip(-1), atol=1e-5)


def test_context_is_flipped_with_the_image() -> None:
    model, image = Pointwise(), torch.zeros(3, 32, 32)
    with torch.no_grad():
        model.conv.bias.fill_(-1.0)  # the image contributes nothing; only M shows
    context = torch.linspace(0, 1, 8).expand(1, 8, 8).contiguous()  # a left-to-right ramp
    fused = multiscale_cam(model, image, scales=(1.0,), flip=True, context=context)
    single = multiscale_cam(model, image, scales=(1.0,), flip=False, context=context)
    assert torch.allclose(fused, 2 * single, atol=1e-5)  # a flipped image saw a flipped M
    assert fused[0, 0, -1] > fused[0, 0, 0]


def test_select_classes_keeps_tagged_maps_with_max_one() -> None:
    cam = torch.rand(5, 6, 7) * 3
    cam[3] = 0  # a class that never fires stays zero, not NaN
    kept = select_classes(cam, np.array([1, 3, 4]))
    assert kept.shape == (3, 6, 7)
    assert torch.allclose(kept[0], cam[1] / (cam[1].max() + 1e-5))
    assert torch.allclose(kept.amax(dim=(1, 2)), torch.tensor([1.0, 0.0, 1.0]), atol=1e-4)
    assert select_classes(cam, np.array([], np.int64)).shape == (0, 6, 7)
    assert torch.equal(normalize_max(cam)[3], cam[3])


def test_upsample_is_aligned_to_the_stride4_grid() -> None:
    cam = torch.rand(2, 10, 13)
    up = upsample_cam(cam, (37, 50))
    assert up.shape == (2, 37, 50)
    full = F.interpolate(cam[None], size=(40, 52), mode="bilinear", align_corners=False)[0]
    assert torch.equal(up, full[:, :37, :50])
    assert torch.allclose(upsample_cam(torch.full((1, 3, 3), 0.5), (12, 12)), torch.full((1, 12, 12), 0.5))


@pytest.mark.parametrize("scale", [0.5, 1.5, 2.0])
def test_rescale_matches_pil_bicubic(scale: float) -> None:
    plane = np.random.default_rng(0).random((30, 41)).astype(np.float32)
    h, w = round(30 * scale), round(41 * scale)
    pil = np.asarray(Image.fromarray(plane).resize((w, h), Image.BICUBIC))
    ours = rescale_image(torch.from_numpy(plane)[None, None], scale)[0, 0].numpy()
    assert ours.shape == (h, w)
    assert np.abs(ours - pil).max() < 1e-4


def test_no_scales_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one scale"):
        multiscale_cam(Pointwise(), torch.randn(3, 8, 8), scales=())
