"""Multi-scale + flip CAM fusion: sizes, flip handling of image and context, class selection,
max normalisation, IRNet's two fusions (stride 4, and full resolution through the stride-16
padded size), and upsampling alignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _reference import bilinear_1d
from torch import Tensor, nn

from conta.models.cam_net import CamNet
from conta.models.resnet import resnet
from conta.ops.cam_fusion import (fuse_scales, normalize_max, scale_cams, strided_size, strided_up_size,
                                  tagged_cams, upsample_cam)


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


def scaled(image: Tensor, scales: tuple[float, ...]) -> list[Tensor]:
    h, w = image.shape[-2:]
    return [F.interpolate(image[None], size=(round(h * s), round(w * s)), mode="bilinear")[0] for s in scales]


def multiscale_cam(model: nn.Module, image: Tensor, scales: tuple[float, ...], flip: bool = True,
                   context: Tensor | None = None) -> Tensor:
    """The unnormalised stride-4 fusion of all classes."""
    return fuse_scales(scale_cams(model, scaled(image, scales), flip, context), strided_size(*image.shape[-2:]))


def test_shapes_and_one_batched_forward_per_scale() -> None:
    model = Pointwise()
    maps = scale_cams(model, scaled(torch.randn(3, 37, 50), (1.0, 0.5, 1.5, 2.0)))
    assert [tuple(m.shape) for m in maps] == [(3, 37, 50), (3, 18, 25), (3, 56, 75), (3, 74, 100)]
    assert model.calls == [(2, 3, 37, 50), (2, 3, 18, 25), (2, 3, 56, 75), (2, 3, 74, 100)]
    strided, full = tagged_cams(maps, np.array([2, 0]), (37, 50))
    assert strided.shape == (2, 10, 13) and full.shape == (2, 37, 50)
    assert tagged_cams(maps, np.array([1]), (37, 50), high_res=False)[1] is None


def test_scales_of_the_same_size_share_one_forward() -> None:
    """On a 7-pixel side 1.0 and 1.05 both round to 7: one batch of both and their flips, each
    map the one it gets alone, in the scales' order."""
    model, image = Pointwise(), torch.randn(3, 7, 10)
    context = torch.rand(1, 3, 4)
    images = scaled(image, (1.0, 0.5, 1.05))
    maps = scale_cams(model, images, context=context)
    assert model.calls == [(4, 3, 7, 10), (2, 3, 4, 5)]
    for together, alone in zip(maps, (scale_cams(model, [x], context=context)[0] for x in images)):
        assert torch.allclose(together, alone, atol=1e-6)


def test_flip_of_an_equivariant_model_doubles_the_cam() -> None:
    model, image = Pointwise(), torch.randn(3, 40, 52)
    with_flip = multiscale_cam(model, image, scales=(1.0, 0.5), flip=True)
    without = multiscale_cam(model, image, scales=(1.0, 0.5), flip=False)
    assert torch.allclose(with_flip, 2 * without, atol=1e-5)


@pytest.mark.parametrize(("h", "w", "up"), [(37, 50, (48, 64)), (48, 64, (48, 64)), (1, 17, (16, 32))])
def test_strided_up_size_is_the_next_multiple_of_16(h: int, w: int, up: tuple[int, int]) -> None:
    assert strided_up_size(h, w) == up


def test_full_resolution_cam_is_fused_at_the_stride_16_size_then_cropped() -> None:
    # IRNet's make_cam: every scale's map resized to 16 ceil(H/16) x 16 ceil(W/16), summed,
    # cropped to H x W, divided by its maximum + 1e-5 (a 1 x 37 image: fused at 16 x 48)
    row_a, row_b = np.array([0.0, 1.0, 3.0]), np.array([2.0, 0.0, 1.0, 4.0, 0.5])
    maps = [torch.tensor(row_a, dtype=torch.float32).view(1, 1, 3).expand(1, 4, 3),
            torch.tensor(row_b, dtype=torch.float32).view(1, 1, 5).expand(1, 2, 5)]
    _, full = tagged_cams(maps, np.array([0]), (1, 37))
    fused = (bilinear_1d(row_a, 48) + bilinear_1d(row_b, 48))[:37]
    np.testing.assert_allclose(full[0, 0].numpy(), fused / (fused.max() + 1e-5), atol=1e-6)
    # not the stride-4 CAM upsampled: that is resized to 4 ceil(W/4) = 40 columns first
    strided, _ = tagged_cams(maps, np.array([0]), (1, 37))
    assert not torch.allclose(upsample_cam(strided, (1, 37)), full, atol=1e-3)


def test_stride_4_cam_sums_the_scales_at_ceil_quarter_size() -> None:
    maps = [torch.rand(3, 5, 7), torch.rand(3, 9, 13)]
    strided, _ = tagged_cams(maps, np.array([1]), (37, 50))
    expected = sum(F.interpolate(m[None, 1:2], size=(10, 13), mode="bilinear", align_corners=False)[0] for m in maps)
    assert torch.allclose(strided, expected / (expected.amax() + 1e-5), atol=1e-6)


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


def test_tagged_cams_keep_tagged_maps_with_max_one() -> None:
    cam = torch.rand(5, 24, 28) * 3
    cam[3] = 0  # a class that never fires stays zero, not NaN
    kept, full = tagged_cams([cam], np.array([1, 3, 4]), (96, 112))
    assert kept.shape == (3, 24, 28) and full.shape == (3, 96, 112)
    assert torch.allclose(kept[0], cam[1] / (cam[1].max() + 1e-5))
    assert torch.allclose(kept.amax(dim=(1, 2)), torch.tensor([1.0, 0.0, 1.0]), atol=1e-4)
    assert torch.allclose(full.amax(dim=(1, 2)), torch.tensor([1.0, 0.0, 1.0]), atol=1e-4)
    assert tagged_cams([cam], np.array([], np.int64), (96, 112))[0].shape == (0, 24, 28)
    assert torch.equal(normalize_max(cam)[3], cam[3])


def test_upsample_is_aligned_to_the_stride4_grid() -> None:
    cam = torch.rand(2, 10, 13)
    up = upsample_cam(cam, (37, 50))
    assert up.shape == (2, 37, 50)
    full = F.interpolate(cam[None], size=(40, 52), mode="bilinear", align_corners=False)[0]
    assert torch.equal(up, full[:, :37, :50])
    assert torch.allclose(upsample_cam(torch.full((1, 3, 3), 0.5), (12, 12)), torch.full((1, 12, 12), 0.5))


def test_no_scales_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one scale"):
        scale_cams(Pointwise(), [])
