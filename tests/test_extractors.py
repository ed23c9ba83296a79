"""Tests for reslstm.extractors: every registered model, weight loading, clip_features, goldens.

Every model here is random-init (or loads a state_dict the test builds itself): the values say
nothing about pretrained features. Golden outputs pin the random-init features of a fixed seed
on a fixed input so a refactor cannot change them silently. After an intended change, rewrite
tests/data/extractor_golden.json with

    python tests/test_extractors.py --regenerate-golden

and say why in the commit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from reslstm.extractors import (
    WeightsError,
    available_extractors,
    clip_features,
    create_extractor,
)
from reslstm.extractors.i3d import same_padding

GOLDEN = Path(__file__).parent / "data" / "extractor_golden.json"
STREAMS = ("rgb", "flow")
ALL = [(name, stream) for name in available_extractors() for stream in STREAMS]
# Small clips (s, side) per model, where the model allows them: keeps the sweep in seconds.
SMALL = {"c3d": (16, 112), "tiny3d": (16, 64)}
SMALL_DEFAULT = (8, 32)
# Golden tolerances for CPU fp32 across machines (BLAS / oneDNN kernels differ in summation order).
RTOL, ATOL = 1e-4, 1e-5


def test_registry_lists_every_model():
    expected = {"tiny3d", "i3d", "c3d", "r3d_18", "mc3_18", "r2plus1d_18", "s3d", "swin3d_t"}
    assert set(available_extractors()) == expected


# ---------------------------------------------------------------------------------------------
# The sweep: every extractor, both streams, random init
# ---------------------------------------------------------------------------------------------

def golden_input(name: str, channels: int) -> np.ndarray:
    """Fixed uint8 clips (B, s, H, W, C) for model ``name`` (numpy's PCG64 is stable across versions)."""
    s, side = SMALL.get(name, SMALL_DEFAULT)
    batch = 1 if name == "c3d" else 2
    return np.random.default_rng(7).integers(0, 256, size=(batch, s, side, side, channels), dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def sweep(name: str, stream: str) -> dict:
    """Two seed-0 instances on the golden input; kept as numbers, not models (memory)."""
    rng_before = torch.get_rng_state()
    a = create_extractor(name, stream)
    b = create_extractor(name, stream)
    assert torch.equal(torch.get_rng_state(), rng_before), "random init must not move the global RNG"
    clips = torch.from_numpy(golden_input(name, a.in_channels))
    with torch.inference_mode():
        x = a.normalize(clips)
        out = {
            "x_shape": tuple(x.shape), "x_dtype": x.dtype,
            "a": a(x), "b": b(b.normalize(clips)),
            "attrs": {k: getattr(a, k) for k in ("feature_dim", "in_channels", "input_size", "resize_short",
                                                 "clip_len", "min_clip_len", "max_clip_len", "weights_id",
                                                 "flow_pretrained", "stream")},
            "training": a.training,
        }
    return out


@pytest.mark.parametrize("name,stream", ALL)
def test_forward_shape_no_nan_and_determinism(name, stream):
    r = sweep(name, stream)
    attrs = r["attrs"]
    s, side = SMALL.get(name, SMALL_DEFAULT)
    batch = 1 if name == "c3d" else 2
    assert attrs["in_channels"] == (3 if stream == "rgb" else 2) and attrs["stream"] == stream
    assert r["x_shape"] == (batch, attrs["in_channels"], s, side, side) and r["x_dtype"] == torch.float32
    assert r["a"].shape == (batch, attrs["feature_dim"]) and r["a"].dtype == torch.float32
    assert torch.isfinite(r["a"]).all()
    assert r["a"].abs().max() > 0, "features collapsed to zero"
    assert torch.equal(r["a"], r["b"]), "two seed-0 instances must give identical outputs"
    assert not r["training"]
    assert attrs["weights_id"] == "random-init" and attrs["flow_pretrained"] is False
    assert attrs["input_size"] <= attrs["resize_short"]
    assert attrs["min_clip_len"] <= attrs["clip_len"] <= (attrs["max_clip_len"] or attrs["clip_len"])


@pytest.mark.parametrize("name,stream", ALL)
def test_golden_outputs(name, stream):
    golden = json.loads(GOLDEN.read_text())
    key = f"{name}/{stream}"
    assert key in golden, f"no golden values for {key}: run python tests/test_extractors.py --regenerate-golden"
    ref = golden[key]
    out = sweep(name, stream)["a"].double()
    assert list(out.shape) == ref["shape"]
    scale = max(1.0, ref["absmax"])
    np.testing.assert_allclose(out[0, :8].numpy(), ref["first8"], rtol=RTOL, atol=ATOL * scale)
    np.testing.assert_allclose(float(out.sum()), ref["sum"], rtol=RTOL, atol=ATOL * scale * out.numel() ** 0.5)
    # A weighted sum too: Swin3D's final LayerNorm makes plain sums ~0 whatever the weights.
    np.testing.assert_allclose(float((out.flatten() * _weights(out.numel())).sum()), ref["wsum"],
                               rtol=RTOL, atol=ATOL * scale * out.numel() ** 0.5)
    np.testing.assert_allclose(float(out.abs().max()), ref["absmax"], rtol=RTOL)


def _weights(n: int) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.float64) % 7) - 3.0


def test_seed_option_changes_random_weights():
    clips = torch.from_numpy(golden_input("tiny3d", 3))
    a, b = create_extractor("tiny3d", "rgb", seed=0), create_extractor("tiny3d", "rgb", seed=1)
    with torch.inference_mode():
        assert not torch.allclose(a(a.normalize(clips)), b(b.normalize(clips)))


def test_unknown_names_streams_and_options_fail_loudly():
    with pytest.raises(ValueError, match="unknown extractor 'resnet50'.*c3d.*i3d.*tiny3d"):
        create_extractor("resnet50", "rgb")
    with pytest.raises(ValueError, match="unknown stream 'depth'.*rgb, flow"):
        create_extractor("tiny3d", "depth")
    with pytest.raises(ValueError, match="no option.*colour.*valid options: seed"):
        create_extractor("tiny3d", "rgb", colour=1)
    with pytest.raises(ValueError, match="layer 'fc8'.*fc6, fc7"):
        create_extractor("c3d", "rgb", layer="fc8")
    with pytest.raises(WeightsError, match="not a file"):
        create_extractor("i3d", "rgb", weights="no/such/file.pt")
    with pytest.raises(WeightsError, match="neither a file nor a torchvision weights name.*KINETICS400_V1"):
        create_extractor("r3d_18", "rgb", weights="IMAGENET1K_V1")


# ---------------------------------------------------------------------------------------------
# normalize: tiny exact tensors
# ---------------------------------------------------------------------------------------------

def _one_pixel(values, channels):
    return torch.tensor(values, dtype=torch.uint8).view(1, 1, 1, 1, channels)


def test_normalize_rgb_ranges_and_bgr():
    tiny = create_extractor("tiny3d", "rgb")  # the [-1, 1] convention of I3D
    y = tiny.normalize(_one_pixel([0, 255, 51], 3)).flatten()
    torch.testing.assert_close(y, torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    c3d = create_extractor("c3d", "rgb")
    y = c3d.normalize(_one_pixel([200, 100, 0], 3)).flatten()  # R, G, B in; B, G, R out, minus means
    torch.testing.assert_close(y, torch.tensor([0.0 - 90, 100.0 - 98, 200.0 - 102]))
    r3d = create_extractor("r3d_18", "rgb")
    y = r3d.normalize(_one_pixel([255, 0, 128], 3)).flatten()
    mean, std = [0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]
    expected = torch.tensor([(1 - mean[0]) / std[0], (0 - mean[1]) / std[1], (128 / 255 - mean[2]) / std[2]])
    torch.testing.assert_close(y, expected)


def test_normalize_layout_is_b_c_s_h_w():
    ext = create_extractor("tiny3d", "rgb")
    clips = torch.zeros(2, 4, 5, 6, 3, dtype=torch.uint8)
    clips[1, 2, 3, 4, 0] = 255
    y = ext.normalize(clips)
    assert y.shape == (2, 3, 4, 5, 6) and y.is_contiguous()
    assert y[1, 0, 2, 3, 4] == 1.0 and (y == 1.0).sum() == 1


def test_normalize_flow_dequantises_like_flow_module():
    from reslstm.flow.methods import dequantize_flow, quantize_flow, to_i3d_range

    q = np.arange(256, dtype=np.uint8)[:, None].repeat(2, 1)  # (256, 2): every code, both channels
    clips = torch.from_numpy(q).view(1, 1, 16, 16, 2)
    for name, flow_range in (("tiny3d", 1.0), ("c3d", 128.0)):
        y = create_extractor(name, "flow").normalize(clips)  # (1, 2, 1, 16, 16)
        expected = to_i3d_range(dequantize_flow(q)) * flow_range  # (256, 2)
        torch.testing.assert_close(y.permute(0, 2, 3, 4, 1).reshape(256, 2), torch.from_numpy(expected),
                                   rtol=0, atol=1e-6 * flow_range)
    y = create_extractor("i3d", "flow").normalize(torch.from_numpy(quantize_flow(np.array([0.0, 20.0, -30.0]))).view(1, 1, 1, 3, 1).expand(1, 1, 1, 3, 2))
    torch.testing.assert_close(y[0, 0, 0, 0], torch.tensor([0.0, 1.0, -1.0]), rtol=0, atol=0.005)


def test_normalize_rejects_wrong_input():
    ext = create_extractor("tiny3d", "flow")
    with pytest.raises(ValueError, match="wants 2 channels, got 3"):
        ext.normalize(torch.zeros(1, 4, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ext.normalize(torch.zeros(1, 4, 8, 8, 2))


# ---------------------------------------------------------------------------------------------
# I3D and C3D: the published checkpoint layouts
# ---------------------------------------------------------------------------------------------

# Key names and shapes of the PyTorch port of the Kinetics I3D checkpoints (rgb_imagenet.pt /
# flow_imagenet.pt), written out by hand: C is 3 (RGB) or 2 (flow).
I3D_PUBLISHED = {
    "Conv3d_1a_7x7.conv3d.weight": (64, "C", 7, 7, 7),
    "Conv3d_1a_7x7.bn.weight": (64,),
    "Conv3d_1a_7x7.bn.running_mean": (64,),
    "Conv3d_1a_7x7.bn.running_var": (64,),
    "Conv3d_1a_7x7.bn.num_batches_tracked": (),
    "Conv3d_2b_1x1.conv3d.weight": (64, 64, 1, 1, 1),
    "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
    "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
    "Mixed_3b.b1a.conv3d.weight": (96, 192, 1, 1, 1),
    "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
    "Mixed_3b.b2a.conv3d.weight": (16, 192, 1, 1, 1),
    "Mixed_3b.b2b.conv3d.weight": (32, 16, 3, 3, 3),
    "Mixed_3b.b3b.conv3d.weight": (32, 192, 1, 1, 1),
    "Mixed_3c.b2b.conv3d.weight": (96, 32, 3, 3, 3),
    "Mixed_4b.b0.conv3d.weight": (192, 480, 1, 1, 1),
    "Mixed_4e.b1b.conv3d.weight": (288, 144, 3, 3, 3),
    "Mixed_4f.b3b.bn.bias": (128,),
    "Mixed_5b.b0.conv3d.weight": (256, 832, 1, 1, 1),
    "Mixed_5c.b0.bn.running_var": (384,),
    "Mixed_5c.b2b.conv3d.weight": (128, 48, 3, 3, 3),
    "Mixed_5c.b3b.conv3d.weight": (128, 832, 1, 1, 1),
    "logits.conv3d.weight": (400, 1024, 1, 1, 1),
    "logits.conv3d.bias": (400,),
}
C3D_PUBLISHED = {
    "conv1.weight": (64, "C", 3, 3, 3), "conv1.bias": (64,),
    "conv2.weight": (128, 64, 3, 3, 3), "conv2.bias": (128,),
    "conv3a.weight": (256, 128, 3, 3, 3), "conv3a.bias": (256,),
    "conv3b.weight": (256, 256, 3, 3, 3), "conv3b.bias": (256,),
    "conv4a.weight": (512, 256, 3, 3, 3), "conv4a.bias": (512,),
    "conv4b.weight": (512, 512, 3, 3, 3), "conv4b.bias": (512,),
    "conv5a.weight": (512, 512, 3, 3, 3), "conv5a.bias": (512,),
    "conv5b.weight": (512, 512, 3, 3, 3), "conv5b.bias": (512,),
    "fc6.weight": (4096, 8192), "fc6.bias": (4096,),
    "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
    "fc8.weight": (487, 4096), "fc8.bias": (487,),
}


def _published(table, channels):
    return {k: tuple(channels if d == "C" else d for d in shape) for k, shape in table.items()}


@pytest.mark.parametrize("stream", STREAMS)
def test_i3d_has_the_published_layout(stream):
    model = create_extractor("i3d", stream)
    state = model.state_dict()
    for key, shape in _published(I3D_PUBLISHED, model.in_channels).items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    # 3 stem units + 9 Inception modules x 6 units, each conv3d + 5 BN tensors, plus the logits.
    assert len(state) == (3 + 9 * 6) * 6 + 2
    assert not any(k.startswith("logits.bn") for k in state)
    bn = model.Conv3d_1a_7x7.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01) and model.Conv3d_1a_7x7.conv3d.bias is None


def test_c3d_has_the_published_layout():
    for stream in STREAMS:
        model = create_extractor("c3d", stream)
        got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert got == _published(C3D_PUBLISHED, model.in_channels)


def test_tf_same_padding():
    assert same_padding(224, 7, 2) == (2, 3)  # even size, stride 2: kernel - stride
    assert same_padding(16, 7, 2) == (2, 3)
    assert same_padding(112, 3, 2) == (0, 1)
    assert same_padding(7, 3, 2) == (1, 1)  # odd size: kernel - size % stride
    assert same_padding(8, 3, 1) == (1, 1)
    assert same_padding(4, 2, 2) == (0, 0)
    assert same_padding(5, 2, 2) == (0, 1)


def on_meta(name, **options):
    """An extractor on the meta device: shapes only, built in milliseconds."""
    with torch.device("meta"):
        return create_extractor(name, "rgb", **options)


def _shapes_on_meta(model, names, x_shape):
    shapes = {}
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n in names]
    out = model(torch.empty(x_shape, device="meta"))
    for h in hooks:
        h.remove()
    return shapes, tuple(out.shape)


def test_i3d_standard_input_shapes():
    """At 16 x 224 x 224, Mixed_5c is (1024, 2, 7, 7): the global mean is the original 2x7x7 pool."""
    names = ["Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3c",
             "MaxPool3d_4a_3x3", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5c"]
    shapes, out = _shapes_on_meta(on_meta("i3d"), names, (1, 3, 16, 224, 224))
    assert shapes == {
        "Conv3d_1a_7x7": (64, 8, 112, 112), "MaxPool3d_2a_3x3": (64, 8, 56, 56),
        "Conv3d_2c_3x3": (192, 8, 56, 56), "MaxPool3d_3a_3x3": (192, 8, 28, 28), "Mixed_3c": (480, 8, 28, 28),
        "MaxPool3d_4a_3x3": (480, 4, 14, 14), "Mixed_4f": (832, 4, 14, 14), "MaxPool3d_5a_2x2": (832, 2, 7, 7),
        "Mixed_5c": (1024, 2, 7, 7),
    }
    assert out == (1, 1024)


def test_i3d_feature_is_mean_of_final_map():
    model = create_extractor("i3d", "rgb")
    x = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        h = x
        for name in model._trunk_names:
            h = getattr(model, name)(h)
        torch.testing.assert_close(model(x), h.mean(dim=(2, 3, 4)))


def test_c3d_standard_input_shapes_and_layers():
    shapes, out = _shapes_on_meta(on_meta("c3d"), ["conv5b"], (1, 3, 16, 112, 112))
    assert shapes == {"conv5b": (512, 2, 7, 7)} and out == (1, 4096)  # pool5 (0, 1, 1) pads to 512x1x4x4
    _, out7 = _shapes_on_meta(on_meta("c3d", layer="fc7"), [], (2, 3, 16, 112, 112))
    assert out7 == (2, 4096)
    with pytest.raises(ValueError, match="16, 112, 112"):
        on_meta("c3d")(torch.empty(1, 3, 8, 112, 112, device="meta"))


# ---------------------------------------------------------------------------------------------
# Strict loading of checkpoint files
# ---------------------------------------------------------------------------------------------

def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.parametrize("stream", STREAMS)
def test_i3d_loads_a_published_layout_file(tmp_path, stream):
    source = create_extractor("i3d", stream, seed=1)
    state = source.state_dict()
    for key, shape in _published(I3D_PUBLISHED, source.in_channels).items():
        assert tuple(state[key].shape) == shape
    path = tmp_path / f"{stream}_imagenet.pt"
    torch.save(state, path)
    loaded = create_extractor("i3d", stream, weights=path)
    assert loaded.weights_id == _sha(path)
    assert loaded.flow_pretrained is (stream == "flow")
    clips = torch.from_numpy(golden_input("i3d", source.in_channels))
    with torch.inference_mode():
        out = loaded(loaded.normalize(clips))
        torch.testing.assert_close(out, source(source.normalize(clips)), rtol=0, atol=0)
    assert not torch.allclose(out, sweep("i3d", stream)["a"]), "loading must change the seed-0 features"


def test_c3d_loads_a_published_layout_file(tmp_path):
    source = create_extractor("c3d", "rgb", seed=1)
    path = tmp_path / "c3d.pickle"
    torch.save(source.state_dict(), path)
    loaded = create_extractor("c3d", "rgb", weights=str(path))
    assert loaded.weights_id == _sha(path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.inference_mode():
        out = loaded(loaded.normalize(torch.from_numpy(golden_input("c3d", 3))))
    assert not torch.allclose(out, sweep("c3d", "rgb")["a"])


def test_checkpoint_wrappers_prefix_and_old_batchnorm_are_accepted(tmp_path):
    state = create_extractor("i3d", "rgb", seed=2).state_dict()
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    for i, obj in enumerate([{"state_dict": state}, {"model": state, "epoch": 3},
                             {"module." + k: v for k, v in state.items()}, old]):
        path = tmp_path / f"ckpt{i}.pt"
        torch.save(obj, path)
        loaded = create_extractor("i3d", "rgb", weights=path)
        assert torch.equal(loaded.Mixed_5c.b2b.conv3d.weight, state["Mixed_5c.b2b.conv3d.weight"])


def _expect_weights_error(path, *needles):
    with pytest.raises(WeightsError) as info:
        create_extractor("i3d", "rgb", weights=path)
    message = str(info.value)
    for needle in (str(path), "expected layout", *needles):
        assert needle in message, f"{needle!r} not in:\n{message}"


def test_wrong_state_dicts_give_clear_errors(tmp_path):
    good = create_extractor("i3d", "rgb").state_dict()

    missing = dict(good)
    del missing["Mixed_4f.b3b.bn.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    _expect_weights_error(tmp_path / "missing.pt", "missing keys: 1", "Mixed_4f.b3b.bn.bias")

    extra = dict(good, **{"fc.weight": torch.zeros(3), "head.bias": torch.zeros(2)})
    torch.save(extra, tmp_path / "extra.pt")
    _expect_weights_error(tmp_path / "extra.pt", "unexpected keys: 2", "fc.weight", "head.bias")

    wrong = dict(good, **{"logits.conv3d.weight": torch.zeros(157, 1024, 1, 1, 1)})
    torch.save(wrong, tmp_path / "charades.pt")
    _expect_weights_error(tmp_path / "charades.pt", "wrong shapes", "logits.conv3d.weight", "(157, 1024, 1, 1, 1)")

    many = {f"layer{i}.weight": torch.zeros(1) for i in range(25)}
    torch.save(many, tmp_path / "other_model.pt")
    _expect_weights_error(tmp_path / "other_model.pt", f"missing keys: {len(good) - 57}", "unexpected keys: 25", ", ...")

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file .*garbage.pt"):
        create_extractor("i3d", "rgb", weights=tmp_path / "garbage.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="list.pt holds a list, not a state_dict"):
        create_extractor("i3d", "rgb", weights=tmp_path / "list.pt")


def test_rgb_checkpoint_for_flow_is_inflated_and_says_so(tmp_path):
    rgb = create_extractor("tiny3d", "rgb", seed=3)
    path = tmp_path / "tiny_rgb.pt"
    torch.save(rgb.state_dict(), path)
    flow = create_extractor("tiny3d", "flow", weights=path)
    assert flow.weights_id == _sha(path) + "+rgb-inflated-to-flow" and flow.flow_pretrained is False
    expected = rgb.conv1.weight.mean(dim=1, keepdim=True).expand(-1, 2, -1, -1, -1)
    assert torch.equal(flow.conv1.weight, expected)
    assert torch.equal(flow.conv2.weight, rgb.conv2.weight)
    # A 2-channel (flow) checkpoint loads as flow-pretrained.
    path2 = tmp_path / "tiny_flow.pt"
    torch.save(create_extractor("tiny3d", "flow", seed=4).state_dict(), path2)
    loaded = create_extractor("tiny3d", "flow", weights=path2)
    assert loaded.flow_pretrained is True and loaded.weights_id == _sha(path2)


# ---------------------------------------------------------------------------------------------
# torchvision weights: cache, enum names, download failure
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def hub_dir(tmp_path):
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


def test_torchvision_weights_come_from_the_cache(hub_dir):
    # A state_dict built here in torchvision's layout stands in for the cached Kinetics file.
    source = create_extractor("r3d_18", "rgb", seed=5).net.state_dict()
    cache = hub_dir / "checkpoints" / "r3d_18-b3b3357e.pth"
    cache.parent.mkdir(parents=True)
    torch.save(source, cache)
    rgb = create_extractor("r3d_18", "rgb", weights="KINETICS400_V1")
    assert rgb.weights_id == "torchvision:R3D_18_Weights.KINETICS400_V1" and rgb.flow_pretrained is False
    assert torch.equal(rgb.net.layer4[1].conv2[0].weight, source["layer4.1.conv2.0.weight"])
    flow = create_extractor("r3d_18", "flow", weights="KINETICS400_V1")
    assert flow.weights_id == "torchvision:R3D_18_Weights.KINETICS400_V1+rgb-inflated-to-flow"
    assert flow.flow_pretrained is False
    stem = flow.net.stem[0].weight
    assert stem.shape == (64, 2, 3, 7, 7)
    assert torch.equal(stem[:, 0], source["stem.0.weight"].mean(dim=1)) and torch.equal(stem[:, 1], stem[:, 0])


def test_torchvision_missing_cache_and_no_network_says_where_to_put_the_file(hub_dir, monkeypatch):
    def offline(url, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        create_extractor("s3d", "rgb", weights="KINETICS400_V1")
    message = str(info.value)
    assert "s3d-d76dad2f.pth" in message and str(hub_dir / "checkpoints") in message
    assert "network is unreachable" in message and "weights=<path" in message


def test_torchvision_file_weights_are_strict(tmp_path):
    net_state = create_extractor("mc3_18", "flow", seed=6).net.state_dict()  # 2-channel stem
    path = tmp_path / "mc3_flow.pt"
    torch.save(net_state, path)
    loaded = create_extractor("mc3_18", "flow", weights=path)
    assert loaded.flow_pretrained is True and loaded.weights_id == _sha(path)
    del net_state["fc.bias"]
    torch.save(net_state, path)
    with pytest.raises(WeightsError, match=r"(?s)mc3_flow.pt.*missing keys: 1 \[fc.bias\]"):
        create_extractor("mc3_18", "flow", weights=path)


# ---------------------------------------------------------------------------------------------
# clip_features: clips, crops, batching (tiny3d: the runner does not depend on the model)
# ---------------------------------------------------------------------------------------------

def _frames(n, h=72, w=90, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _manual_features(ext, frames, clip_len, stride, corners, size, flip):
    """Features of one crop per clip, cut by hand with numpy (independent of video.ten_crop)."""
    k = (len(frames) - clip_len) // stride + 1
    feats = []
    for i in range(k):
        clip = frames[i * stride:i * stride + clip_len]  # (s, H, W, C)
        y, x = corners
        crop = clip[:, y:y + size, x:x + size]
        if flip:
            crop = crop[:, :, ::-1]
        batch = torch.from_numpy(np.ascontiguousarray(crop))[None]
        with torch.inference_mode():
            x = ext.normalize(batch)
            if flip and ext.stream == "flow":
                x[:, 0] = -x[:, 0]  # a mirrored flow field moves the other way in x
            feats.append(ext(x)[0])
    return torch.stack(feats).numpy()


def test_clip_count_and_centre_crop():
    ext = create_extractor("tiny3d", "rgb")
    frames = _frames(44)  # K = (44 - 16) // 8 + 1 = 4
    out = clip_features(ext, frames, clip_len=16, stride=8, crops=1, batch_size=3, device="cpu")
    assert out.shape == (4, ext.feature_dim) and out.dtype == np.float32
    # Centre of a 72 x 90 frame for a 64 crop: y = round(4) = 4, x = round(13) = 13.
    expected = _manual_features(ext, frames, 16, 8, (4, 13), 64, flip=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_ten_crop_is_the_mean_of_the_ten_single_crops():
    ext = create_extractor("tiny3d", "flow")
    frames = _frames(30, h=72, w=80, c=2, seed=1)  # K = (30 - 16) // 7 + 1 = 3
    out = clip_features(ext, frames, clip_len=16, stride=7, crops=10, batch_size=2, device="cpu")
    assert out.shape == (3, ext.feature_dim)
    corners = [(0, 0), (0, 16), (8, 0), (8, 16), (4, 8)]  # TL, TR, BL, BR, centre of 72x80 for 64
    singles = [_manual_features(ext, frames, 16, 7, c, 64, flip) for flip in (False, True) for c in corners]
    np.testing.assert_allclose(out, np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(singles[0], singles[5]), "mirrored crops must differ from the originals"


def test_batch_size_does_not_change_features():
    ext = create_extractor("tiny3d", "rgb")
    frames = _frames(44, seed=2)
    ref = clip_features(ext, frames, 16, 4, crops=10, batch_size=1, device="cpu")
    assert ref.shape == ((44 - 16) // 4 + 1, ext.feature_dim)
    for bs in (3, 64):
        np.testing.assert_allclose(clip_features(ext, frames, 16, 4, 10, bs, "cpu"), ref, rtol=1e-5, atol=1e-6)


def test_short_sequences_are_padded_to_one_clip():
    ext = create_extractor("tiny3d", "rgb")
    frames = _frames(5, seed=3)
    padded = np.concatenate([frames, np.repeat(frames[-1:], 11, axis=0)])
    out = clip_features(ext, frames, 16, 8, 1, 4, "cpu")
    np.testing.assert_allclose(out, clip_features(ext, padded, 16, 8, 1, 4, "cpu"), rtol=0, atol=0)
    assert out.shape == (1, ext.feature_dim)


def test_clip_features_accepts_torch_frames_and_defaults():
    ext = create_extractor("tiny3d", "rgb")
    frames = _frames(32, seed=4)
    ref = clip_features(ext, frames, 16, 8, 1, 8, "cpu")
    np.testing.assert_array_equal(clip_features(ext, torch.from_numpy(frames), device="cpu"), ref)


def test_clips_of_several_sequences_share_the_forward_passes():
    """clip_features_many: one sequence gives clip_features to the bit (the same passes);
    several give each its own features (to float rounding: their clips share batches), in
    order, whatever their sizes; the passes hold batch_size clips, cut across sequences."""
    from reslstm.extractors.runner import _batches, clip_features_many

    assert list(_batches([5], 2)) == [[(0, 0, 2)], [(0, 2, 4)], [(0, 4, 5)]]
    assert list(_batches([3, 1, 4], 3)) == [[(0, 0, 3)], [(1, 0, 1), (2, 0, 2)], [(2, 2, 4)]]
    assert list(_batches([0, 2], 4)) == [[(1, 0, 2)]]
    for stream, c, crops in (("rgb", 3, 1), ("flow", 2, 10)):
        ext = create_extractor("tiny3d", stream)
        seqs = [_frames(44, c=c, seed=5), _frames(9, h=80, w=72, c=c, seed=6),
                _frames(30, c=c, seed=7)]
        alone = [clip_features(ext, f, 16, 8, crops, 3, "cpu") for f in seqs]
        (one,) = clip_features_many(ext, seqs[:1], 16, 8, crops, 3, "cpu")
        np.testing.assert_array_equal(one, alone[0])
        many = clip_features_many(ext, seqs, 16, 8, crops, 3, "cpu")
        assert [m.shape for m in many] == [a.shape for a in alone] == \
            [(4, 512), (1, 512), (2, 512)]
        for m, a in zip(many, alone):
            np.testing.assert_allclose(m, a, rtol=1e-5, atol=1e-5)


def test_clip_features_rejects_bad_input():
    ext = create_extractor("tiny3d", "rgb")
    with pytest.raises(ValueError, match="crops must be one of"):
        clip_features(ext, _frames(20), 16, 8, crops=5, device="cpu")
    with pytest.raises(ValueError, match="wants 3-channel frames, got 2"):
        clip_features(ext, _frames(20, c=2), 16, 8, device="cpu")
    with pytest.raises(ValueError, match="smaller than tiny3d's 64 crop; decode them at short side 72"):
        clip_features(ext, _frames(20, h=48, w=64), 16, 8, device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        clip_features(ext, _frames(20).astype(np.float32), 16, 8, device="cpu")
    with pytest.raises(ValueError, match="c3d takes clips of 16..16 frames"):
        clip_features(create_extractor("c3d", "rgb"), _frames(20, 128, 128), clip_len=8, stride=4, device="cpu")


# ---------------------------------------------------------------------------------------------
# tiny3d keeps motion direction: growing vs shrinking discs are linearly separable
# ---------------------------------------------------------------------------------------------

def _disc_clip(rng, grow: bool, frames=16, side=72):
    yy, xx = np.mgrid[:side, :side]
    cy, cx = rng.uniform(24, 48, 2)
    small, large = rng.uniform(5, 10), rng.uniform(20, 28)
    radii = np.linspace(small, large, frames) if grow else np.linspace(large, small, frames)
    fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)  # random colours: only motion tells
    clip = np.empty((frames, side, side, 3), np.uint8)
    for t, r in enumerate(radii):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        clip[t] = np.clip(np.where(disc[..., None], fg, bg) + rng.normal(0, 8, (side, side, 3)), 0, 255)
    return clip


def test_tiny3d_features_separate_growing_from_shrinking_discs():
    rng = np.random.default_rng(0)
    ext = create_extractor("tiny3d", "rgb")
    labels = np.arange(100) % 2  # 1 = growing
    feats = np.concatenate([clip_features(ext, _disc_clip(rng, bool(g)), 16, 16, 1, 1, "cpu") for g in labels])
    x = torch.from_numpy(feats).double()
    y = torch.from_numpy(labels).double()
    train, test = slice(0, 60), slice(60, 100)
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros(1, dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x[train] @ w + b, y[train]) + 1e-2 * w.square().mean()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        accuracy = ((x[test] @ w + b > 0).double() == y[test]).double().mean().item()
    assert accuracy >= 0.9, f"held-out accuracy of a linear probe {accuracy:.2f}"


# ---------------------------------------------------------------------------------------------
# GPU paths
# ---------------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none on this machine")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["tiny3d", "i3d"])
def test_cuda_autocast_matches_cpu_fp32(name):
    cpu = create_extractor(name, "rgb")
    side = cpu.input_size if name == "tiny3d" else 40
    if name == "i3d":
        cpu.input_size = side  # a small crop keeps the CPU reference fast; I3D takes any size
    frames = _frames(40, h=side + 8, w=side + 8, seed=5)
    ref = clip_features(cpu, frames, 16, 8, 10, 4, "cpu")
    gpu = create_extractor(name, "rgb")
    gpu.input_size = side
    out = clip_features(gpu, frames, 16, 8, 10, 4, "cuda")
    assert next(gpu.parameters()).device.type == "cuda"
    assert out.dtype == np.float32 and out.shape == ref.shape
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel < 3e-2, f"bf16 autocast drifted {rel:.3g} from fp32"
    fp32 = clip_features(gpu, frames, 16, 8, 10, 4, "cuda", amp=False)
    np.testing.assert_allclose(fp32, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_cuda_normalize_stays_on_device():
    ext = create_extractor("c3d", "flow").to("cuda")
    clips = torch.full((1, 16, 112, 112, 2), 200, dtype=torch.uint8, device="cuda")
    x = ext.normalize(clips)
    assert x.device.type == "cuda" and x.dtype == torch.float32
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(ext(x)).all()


# ---------------------------------------------------------------------------------------------
# Regenerating the goldens
# ---------------------------------------------------------------------------------------------

def regenerate_golden() -> None:
    golden = {}
    for name, stream in ALL:
        out = sweep(name, stream)["a"].double()
        golden[f"{name}/{stream}"] = {
            "shape": list(out.shape),
            "first8": [round(float(v), 9) for v in out[0, :8]],
            "sum": float(out.sum()),
            "wsum": float((out.flatten() * _weights(out.numel())).sum()),
            "absmax": float(out.abs().max()),
        }
        print(f"{name}/{stream}: sum {golden[f'{name}/{stream}']['sum']:.6g}")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if "--regenerate-golden" in sys.argv[1:]:
        regenerate_golden()
    else:
        print(__doc__)
