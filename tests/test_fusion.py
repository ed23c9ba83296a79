"""Mid and late fusion on tiny hand-computed tensors and arrays."""

import numpy as np
import pytest
import torch

from reslstm.errors import ConfigError
from reslstm.fusion import (
    FUSIONS,
    align_clips,
    late_fuse,
    make_fusion,
    mid_fuse,
    streams_of,
)

XC = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
XF = torch.tensor([[0.5, -2.0], [2.0, 4.0]])
P_RGB = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
P_FLOW = torch.tensor([[0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])


def test_mid_sum_and_product():
    torch.testing.assert_close(mid_fuse(XC, XF, "sum"), torch.tensor([[1.5, 0.0], [5.0, 3.0]]))
    torch.testing.assert_close(mid_fuse(XC, XF, "product"), torch.tensor([[0.5, -4.0], [6.0, -4.0]]))
    torch.testing.assert_close(mid_fuse(XC, XF), mid_fuse(XC, XF, "sum"))  # the default op


def test_mid_fuse_rejects_mismatched_shapes_and_ops():
    with pytest.raises(ValueError) as err:
        mid_fuse(XC, XF[:1], "sum")
    assert str(err.value) == ("mid fusion needs inputs of the same shape, got (2, 2) and (1, 2) "
                              "(align_clips truncates two clip sequences to the shorter)")
    with pytest.raises(ValueError, match="sum, product"):
        mid_fuse(XC, XF, "max")


def test_late_product_is_the_normalised_product():
    # row 0: 0.10, 0.12, 0.05 (sum 0.27); row 1: 0.06, 0.03, 0.08 (sum 0.17)
    expected = torch.tensor([[0.10, 0.12, 0.05], [0.06, 0.03, 0.08]])
    expected = expected / expected.sum(dim=1, keepdim=True)
    got = late_fuse(P_RGB, P_FLOW, "product")
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(late_fuse(P_RGB, P_FLOW), got)  # the default op
    torch.testing.assert_close(got.sum(dim=1), torch.ones(2))
    assert got.argmax(dim=1).tolist() == (P_RGB * P_FLOW).argmax(dim=1).tolist() == [1, 2]


def test_late_product_normalises_over_the_class_axis_whatever_the_rank():
    """The normalisation runs over the last axis (the classes), for any rank.

    One video's (C,) distribution: 0.2*0.5, 0.3*0.4, 0.5*0.1 = 0.10, 0.12, 0.05 over 0.27.
    A (B=2, K=1, C=3) batch of clip scores: each row over its own sum, as in the 2-D case.
    """
    got = late_fuse(P_RGB[0], P_FLOW[0], "product")
    torch.testing.assert_close(got, torch.tensor([0.10, 0.12, 0.05]) / 0.27)
    expected = late_fuse(P_RGB, P_FLOW, "product").reshape(2, 1, 3)
    got3 = late_fuse(P_RGB.reshape(2, 1, 3), P_FLOW.reshape(2, 1, 3), "product")
    torch.testing.assert_close(got3, expected)
    torch.testing.assert_close(got3.sum(dim=-1), torch.ones(2, 1))


def test_late_product_survives_tiny_probabilities():
    # 101 classes with probabilities ~1e-30: the raw float32 product underflows to 0.
    p = torch.full((1, 101), 1e-30)
    p[0, 7] = 1.0
    q = torch.full((1, 101), 1e-30)
    q[0, 7] = 1e-20
    q[0, 3] = 1.0
    got = late_fuse(p, q, "product")
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.sum(), torch.tensor(1.0))
    assert got.argmax().item() == 7  # 1e-20 beats 1e-30


def test_late_sum():
    expected = torch.tensor([[0.35, 0.35, 0.30], [0.35, 0.20, 0.45]])
    torch.testing.assert_close(late_fuse(P_RGB, P_FLOW, "sum"), expected)


def test_late_weighted_uses_tsn_weights_by_default():
    # (1.0 * rgb + 1.5 * flow) / 2.5
    expected = torch.tensor([[(0.2 + 0.75) / 2.5, (0.3 + 0.6) / 2.5, (0.5 + 0.15) / 2.5],
                             [(0.6 + 0.15) / 2.5, (0.3 + 0.15) / 2.5, (0.1 + 1.2) / 2.5]])
    torch.testing.assert_close(late_fuse(P_RGB, P_FLOW, "weighted"), expected)
    torch.testing.assert_close(make_fusion("late-weighted")(P_RGB, P_FLOW), expected)
    # other weights are honoured: 3 * rgb + 1 * flow, over 4
    torch.testing.assert_close(
        late_fuse(P_RGB, P_FLOW, "weighted", w_rgb=3.0, w_flow=1.0), (3 * P_RGB + P_FLOW) / 4
    )
    with pytest.raises(ValueError, match="weights"):
        late_fuse(P_RGB, P_FLOW, "weighted", w_rgb=0.0, w_flow=0.0)
    # a zero weight leaves one stream; a negative one is refused even if the sum is positive
    torch.testing.assert_close(late_fuse(P_RGB, P_FLOW, "weighted", w_rgb=0.0, w_flow=1.0), P_FLOW)
    torch.testing.assert_close(late_fuse(P_RGB, P_FLOW, "weighted", w_rgb=1.0, w_flow=0.0), P_RGB)
    torch.testing.assert_close(late_fuse(P_RGB, P_FLOW, "weighted", w_rgb=0.5, w_flow=0.5),
                               (P_RGB + P_FLOW) / 2)
    for w_rgb, w_flow in ((-1.0, 2.0), (2.0, -1.0)):
        with pytest.raises(ValueError, match="weights"):
            late_fuse(P_RGB, P_FLOW, "weighted", w_rgb=w_rgb, w_flow=w_flow)


def test_late_fuse_on_numpy_arrays():
    got = late_fuse(P_RGB.double().numpy(), P_FLOW.double().numpy(), "sum")
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, [[0.35, 0.35, 0.30], [0.35, 0.20, 0.45]])
    with pytest.raises(TypeError) as err:
        late_fuse(P_RGB.numpy(), P_FLOW, "sum")
    assert str(err.value) == "late_fuse needs two tensors or two NumPy arrays, not one of each"


def test_late_product_on_numpy_arrays_returns_the_normalised_product():
    """Stored predictions fuse without a model: two arrays in, one array out.

    Row 0: 0.10, 0.12, 0.05 over 0.27; row 1: 0.06, 0.03, 0.08 over 0.17 (float64 kept).
    """
    got = late_fuse(P_RGB.double().numpy(), P_FLOW.double().numpy(), "product")
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, [[0.10 / 0.27, 0.12 / 0.27, 0.05 / 0.27],
                                     [0.06 / 0.17, 0.03 / 0.17, 0.08 / 0.17]])


def test_late_fuse_errors_name_the_problem():
    """An unknown op lists the valid ops; mismatched shapes name "late" fusion and both shapes,
    without the align_clips hint that only mid fusion (clip sequences) gets."""
    with pytest.raises(ConfigError) as err:
        late_fuse(P_RGB, P_FLOW, "max")
    assert str(err.value) == "unknown late fusion op 'max'; valid ops: product, sum, weighted"
    with pytest.raises(ValueError) as err:
        late_fuse(P_RGB, P_FLOW[:1], "sum")
    assert str(err.value) == "late fusion needs inputs of the same shape, got (2, 3) and (1, 3)"


def test_align_clips_truncates_to_the_shorter():
    a = np.arange(10).reshape(5, 2)  # (K=5, d=2)
    b = np.arange(8).reshape(4, 2)   # (K=4, d=2)
    a2, b2 = align_clips(a, b)
    np.testing.assert_array_equal(a2, a[:4])
    np.testing.assert_array_equal(b2, b)
    # batched (B, K, d): the clip axis is -2
    ta, tb = torch.zeros(3, 6, 2), torch.ones(3, 7, 2)
    ta2, tb2 = align_clips(ta, tb)
    assert ta2.shape == tb2.shape == (3, 6, 2)
    with pytest.raises(ValueError, match=r"same rank >= 2, got shapes \(3,\) and \(3,\)"):
        align_clips(np.zeros(3), np.zeros(3))


def test_make_fusion_names():
    torch.testing.assert_close(make_fusion("mid-sum")(XC, XF), XC + XF)
    torch.testing.assert_close(make_fusion("mid-product")(XC, XF), XC * XF)
    torch.testing.assert_close(make_fusion("late-sum")(P_RGB, P_FLOW), (P_RGB + P_FLOW) / 2)
    torch.testing.assert_close(make_fusion("late-product")(P_RGB, P_FLOW),
                               late_fuse(P_RGB, P_FLOW, "product"))
    assert set(FUSIONS) == {"mid-sum", "mid-product", "late-product", "late-sum", "late-weighted"}
    # options reach the fusion (here the weights of "late-weighted")
    torch.testing.assert_close(make_fusion("late-weighted", w_rgb=3.0, w_flow=1.0)(P_RGB, P_FLOW),
                               (3 * P_RGB + P_FLOW) / 4)


def test_make_fusion_fails_loudly_listing_valid_names():
    with pytest.raises(ValueError) as err:
        make_fusion("late-max")
    for name in FUSIONS:
        assert name in str(err.value)
    assert str(err.value).endswith(
        "valid fusions: mid-sum, mid-product, late-product, late-sum, late-weighted")


def test_streams_of_names_the_streams_each_setting_reads():
    """A single stream reads itself; every fusion reads both, in the order ("rgb", "flow").
    An unknown name is refused with every valid setting listed, comma-separated."""
    assert streams_of("rgb") == ("rgb",)
    assert streams_of("flow") == ("flow",)
    for name in FUSIONS:
        assert streams_of(name) == ("rgb", "flow")
    with pytest.raises(ConfigError) as err:
        streams_of("depth")
    assert str(err.value) == (
        "unknown stream or fusion 'depth'; valid: rgb, flow, mid-sum, mid-product, "
        "late-product, late-sum, late-weighted")
