"""CONTA's confounder set and attention (the paper's Eq. 3) on hand-made examples."""

import numpy as np
import pytest
import torch

from conta.models.intervention import ConfounderAttention
from conta.stages.confounder import ConfounderSet, class_average_masks, foreground_map, make_prior
from conta.io import save_npz


def test_class_average_masks_match_hand_computed_means():
    # 4x4 masks, classes 1 and 2; resized to 2x2 by area averaging.
    a = np.zeros((4, 4), np.uint8)
    a[:2, :2] = 1                      # class 1 fills the top-left quarter
    b = np.zeros((4, 4), np.uint8)
    b[:, :2] = 1                       # class 1 fills the left half
    b[2:, 2:] = 2                      # class 2 fills the bottom-right quarter
    b[0, 3] = 255                      # ignore pixels never count as a class
    masks = {"a": a, "b": b}
    tags = {"a": np.array([1, 0], np.float32), "b": np.array([1, 1], np.float32)}
    conf, counts = class_average_masks(masks, tags, n_classes=2, size=(2, 2))
    # class 1: mean of [[1,0],[0,0]] and [[1,0],[1,0]] = [[1,0],[0.5,0]]
    np.testing.assert_allclose(conf[0], [[1.0, 0.0], [0.5, 0.0]])
    # class 2: only image b is tagged with it: [[0,0],[0,1]]
    np.testing.assert_allclose(conf[1], [[0.0, 0.0], [0.0, 1.0]])
    assert counts.tolist() == [2, 1]


def test_background_entry_and_untagged_class():
    mask = np.zeros((2, 2), np.uint8)
    mask[0, 0] = 1
    conf, counts = class_average_masks({"x": mask}, {"x": np.array([1, 0], np.float32)}, 2, (2, 2),
                                       include_background=True)
    assert conf.shape == (3, 2, 2)
    np.testing.assert_allclose(conf[0], [[0, 1], [1, 1]])   # background first
    np.testing.assert_allclose(conf[1], [[1, 0], [0, 0]])
    assert counts.tolist() == [1, 1, 0] and not conf[2].any()


def test_prior_uniform_and_frequency():
    counts = np.array([3, 1, 0])
    np.testing.assert_allclose(make_prior(counts, "uniform"), [1 / 3] * 3)
    np.testing.assert_allclose(make_prior(counts, "frequency"), [0.75, 0.25, 0.0])


def test_foreground_map_excludes_background_and_ignore():
    mask = np.array([[0, 1], [255, 2]], np.uint8)
    np.testing.assert_allclose(foreground_map(mask, (1, 1)), [[0.5]])


def _attention(n=5, h=4, w=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(n, h, w, generator=g)
    prior = torch.full((n,), 1.0 / n)
    torch.manual_seed(seed)
    return ConfounderAttention(conf, prior), conf, prior


def test_attention_weights_sum_to_one_and_m_is_their_mixture():
    module, conf, prior = _attention()
    xm = torch.rand(3, 1, 4, 4)
    alpha = module.attention(xm)
    assert alpha.shape == (3, 5)
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    m = module(xm)
    assert m.shape == (3, 1, 4, 4)
    expected = torch.einsum("bn,nhw->bhw", alpha, conf * prior[:, None, None])
    torch.testing.assert_close(m[:, 0], expected)


def test_m_changes_with_the_image_and_zero_mask_gives_uniform_attention():
    module, conf, prior = _attention()
    with torch.no_grad():
        module.query.weight.mul_(50)  # sharpen so different inputs clearly differ
    xm = torch.zeros(2, 1, 4, 4)
    xm[0, 0, :2] = 1
    xm[1, 0, 2:] = 1
    m = module(xm)
    assert not torch.allclose(m[0], m[1])
    uniform = module.attention(torch.zeros(1, 1, 4, 4))
    torch.testing.assert_close(uniform, torch.full((1, 5), 0.2))


def test_attention_projections_receive_gradient_and_buffers_do_not():
    module, _, _ = _attention()
    module(torch.rand(2, 1, 4, 4)).sum().backward()
    assert module.query.weight.grad is not None and module.query.weight.grad.abs().sum() > 0
    assert module.key.weight.grad is not None
    names = {n for n, _ in module.named_parameters()}
    assert names == {"query.weight", "key.weight"}
    assert {"confounders", "prior"} <= set(module.state_dict())


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="n x h x w"):
        ConfounderAttention(torch.rand(5, 16), torch.rand(5))
    with pytest.raises(ValueError, match="prior"):
        ConfounderAttention(torch.rand(5, 4, 4), torch.rand(4))


def test_confounder_set_file_lookup(tmp_path):
    path = tmp_path / "confounder.npz"
    xm = np.arange(2 * 2 * 2, dtype=np.float16).reshape(2, 2, 2)
    save_npz(path, confounders=np.zeros((3, 2, 2), np.float32), prior=np.full(3, 1 / 3, np.float32),
             counts=np.array([1, 1, 1]), class_names=np.array(["a", "b", "c"]), ids=np.array(["i0", "i1"]), xm=xm)
    cs = ConfounderSet(path)
    assert cs.size == (2, 2) and cs.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(cs.mask_input("i1"), xm[1].astype(np.float32))
    np.testing.assert_array_equal(cs.mask_input("unknown"), np.zeros((2, 2), np.float32))


def test_unit_prior_rescales_m_to_a_mask_range():
    conf = torch.ones(4, 2, 2)
    prior = torch.full((4,), 0.25)
    plain = ConfounderAttention(conf, prior)
    unit = ConfounderAttention(conf, prior, unit_prior=True)
    unit.load_state_dict(plain.state_dict())
    xm = torch.rand(1, 1, 2, 2)
    torch.testing.assert_close(plain(xm), torch.full((1, 1, 2, 2), 0.25))  # sum_i alpha_i * 1 * 1/4
    torch.testing.assert_close(unit(xm), torch.ones(1, 1, 2, 2))
