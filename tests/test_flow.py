"""Optical flow: known translations per CPU method, streaming = batch, the I3D range and uint8
storage (of arrays and of tensors), the tvl1-torch device method, RAFT shapes on the CPU
(random init) and on a GPU when there is one."""

import cv2
import numpy as np
import pytest
import torch

from reslstm.flow.methods import (
    FLOW_METHODS,
    RaftFlow,
    compute_flow,
    dequantize_flow,
    flow_clip_frames,
    iter_flow,
    make_flow,
    make_flow_method,
    needs_gpu,
    quantize_flow,
    runs_on_device,
    to_i3d_range,
    tvl1_torch_id,
)
from reslstm.flow.tvl1 import TorchTVL1, TVL1Params

CPU_METHODS = sorted(FLOW_METHODS)
HALF_STEP = 40.0 / 255.0 / 2.0


def texture(h=112, w=112, seed=0):
    """A smooth random grey texture, uint8 (h, w): gradients everywhere, no aperture problem."""
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 2.0)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255.0
    return smooth.astype(np.uint8)


def shifted_pair(dx, dy, size=64, margin=16):
    """Two RGB frames (2, size, size, 3): the second shows the texture moved by (dx, dy) px."""
    tex = texture()
    a = tex[margin:margin + size, margin:margin + size]
    b = tex[margin - dy:margin - dy + size, margin - dx:margin - dx + size]
    return np.repeat(np.stack([a, b])[..., None], 3, axis=-1)


@pytest.mark.parametrize("method", CPU_METHODS)
@pytest.mark.parametrize("dx, dy", [(2, 0), (0, 2), (-2, 1)])
def test_recovers_translation(method, dx, dy):
    flow = compute_flow(shifted_pair(dx, dy), method)
    assert flow.shape == (1, 64, 64, 2) and flow.dtype == np.float32
    interior = flow[0, 12:-12, 12:-12]  # borders see content that left the frame
    err = np.abs(interior - np.array([dx, dy], np.float32))
    assert err.mean() < 0.05, (method, interior.reshape(-1, 2).mean(0))
    assert err.max() < 0.25


@pytest.mark.parametrize("method", ["farneback", "dis"])
def test_iter_flow_equals_compute_flow(method):
    tex = texture(80, 96)
    frames = np.stack([np.repeat(tex[i:i + 64, 2 * i:2 * i + 64, None], 3, -1) for i in range(4)])
    batch = compute_flow(frames, method)
    stream = list(iter_flow(iter(frames), method))
    assert batch.shape == (3, 64, 64, 2) and len(stream) == 3
    np.testing.assert_array_equal(np.stack(stream), batch)


def test_flow_edge_cases():
    one = np.zeros((1, 8, 10, 3), np.uint8)
    assert compute_flow(one, "dis").shape == (0, 8, 10, 2)
    with pytest.raises(ValueError, match="dis.*farneback.*tvl1"):
        make_flow_method("lucas-kanade")
    with pytest.raises(ValueError, match="uint8 RGB"):
        compute_flow(np.zeros((2, 8, 8, 3), np.float32), "dis")
    with pytest.raises(ValueError, match="size changed"):
        list(iter_flow([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], "dis"))


def test_to_i3d_range_values():
    flow = np.array([-30.0, -20.0, -10.0, 0.0, 5.0, 20.0, 40.0], np.float32)
    out = to_i3d_range(flow)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-1.0, -1.0, -0.5, 0.0, 0.25, 1.0, 1.0])


def test_quantize_round_trip_and_clipping():
    flow = np.linspace(-20.0, 20.0, 40001, dtype=np.float32)
    q = quantize_flow(flow)
    assert q.dtype == np.uint8
    assert np.abs(dequantize_flow(q) - flow).max() <= HALF_STEP + 1e-5
    assert quantize_flow(np.float32(0.0)) == 128
    assert quantize_flow(np.float32(40.0 / 255.0)) == 129  # one step is 40/255 px
    outside = quantize_flow(np.array([-100.0, -20.5, 20.5, 100.0], np.float32))
    np.testing.assert_array_equal(outside, [0, 0, 255, 255])
    np.testing.assert_allclose(dequantize_flow(np.array([0, 255], np.uint8)),
                               [-128 * 40 / 255, 127 * 40 / 255], rtol=1e-6)
    # A realistic field keeps its shape and agrees with the I3D range after the round trip.
    field = compute_flow(shifted_pair(2, 0), "farneback")
    back = dequantize_flow(quantize_flow(field))
    assert back.shape == field.shape and back.dtype == np.float32
    assert np.abs(to_i3d_range(back) - to_i3d_range(field)).max() <= HALF_STEP / 20 + 1e-6


def test_quantize_flow_of_a_tensor_gives_the_same_bytes_on_its_device():
    rng = np.random.default_rng(0)
    flow = np.concatenate([rng.normal(0, 8, 20000), np.linspace(-21, 21, 50001),
                           (np.arange(-128, 128) + 0.5) / (255 / 40), [np.inf, -np.inf]])
    flow = flow.astype(np.float32)
    q = quantize_flow(torch.from_numpy(flow))
    assert isinstance(q, torch.Tensor) and q.dtype == torch.uint8
    np.testing.assert_array_equal(q.numpy(), quantize_flow(flow))


# ---------------------------------------------------------------------------------------------
# tvl1-torch (reslstm.flow.tvl1 has its own tests against OpenCV)
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def one_torch_thread():
    """TV-L1 is thousands of small operations: on a small shared CPU threads slow it down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tvl1_torch_is_a_device_method_that_runs_anywhere(one_torch_thread):
    assert runs_on_device("tvl1-torch") and not needs_gpu("tvl1-torch")
    assert runs_on_device("raft") and needs_gpu("raft") and not needs_gpu("tvl1")
    frames = shifted_pair(2, 1, size=40)
    flow = make_flow("tvl1-torch", device="cpu", batch_size=1)
    out = flow(frames)  # the flow stays a tensor on the device
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), TorchTVL1(device="cpu")(frames))
    q = flow_clip_frames(frames, 2, 16, flow)  # quantised there, padded to one clip
    assert isinstance(q, torch.Tensor) and q.dtype == torch.uint8 and tuple(q.shape) == (16, 40, 40, 2)
    np.testing.assert_array_equal(q.numpy(), quantize_flow(np.repeat(out.numpy(), 16, axis=0)))
    assert tvl1_torch_id() == tvl1_torch_id(TVL1Params()) == "tvl1-torch"
    assert tvl1_torch_id(TVL1Params(nscales=3, tau=0.2)) == "tvl1-torch:tau=0.2,nscales=3"
    with pytest.raises(TypeError, match="size"):
        make_flow("tvl1-torch", size="small")  # RAFT's option


# ---------------------------------------------------------------------------------------------
# RAFT
# ---------------------------------------------------------------------------------------------

def random_frames(n=3, h=64, w=64):
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", ["small", "large"])
def test_raft_cpu_random_init_shapes(size):
    torch.manual_seed(0)
    # One refinement step keeps RAFT-large fast enough on a CPU; the shapes are the same.
    raft = RaftFlow(size=size, weights=None, device="cpu", allow_cpu=True, num_flow_updates=1)
    assert raft.weights_id == "random-init"
    flow = raft(random_frames())
    assert flow.shape == (2, 64, 64, 2) and flow.dtype == np.float32
    assert np.isfinite(flow).all()


def test_raft_pads_and_crops_odd_sizes_and_batches():
    torch.manual_seed(0)
    raft = RaftFlow(weights=None, device="cpu", allow_cpu=True, batch_size=2, num_flow_updates=1)
    frames = random_frames(4, 36, 50)
    flow = raft(frames)
    assert flow.shape == (3, 36, 50, 2)
    # Batching does not change the result: pair by pair gives the same flow.
    pairwise = np.concatenate([raft(frames[i:i + 2]) for i in range(3)])
    np.testing.assert_allclose(flow, pairwise, atol=1e-4)
    assert raft(torch.from_numpy(frames)).shape == (3, 36, 50, 2)  # tensors too
    with pytest.raises(ValueError, match="at least 2 frames"):
        raft(frames[:1])
    with pytest.raises(ValueError, match="uint8 RGB frames"):
        raft(frames.astype(np.float32))


def test_raft_weights_from_file(tmp_path):
    torch.manual_seed(0)
    first = RaftFlow(weights=None, device="cpu", allow_cpu=True, num_flow_updates=1)
    path = tmp_path / "raft_small.pt"
    torch.save(first.model.state_dict(), path)
    again = RaftFlow(weights=str(path), device="cpu", allow_cpu=True, num_flow_updates=1)
    assert len(again.weights_id) == 64  # sha256 of the file
    frames = random_frames()
    np.testing.assert_array_equal(first(frames), again(frames))
    state = first.model.state_dict()
    state.pop(next(iter(state)))
    torch.save(state, path)
    with pytest.raises(RuntimeError, match="Missing key"):  # strict loading
        RaftFlow(weights=str(path), device="cpu", allow_cpu=True)


def test_raft_rejects_bad_arguments():
    with pytest.raises(ValueError, match="small"):
        RaftFlow(size="medium", allow_cpu=True)
    with pytest.raises(ValueError, match="C_T_V2"):
        RaftFlow(weights="NOT_A_WEIGHT", device="cpu", allow_cpu=True)
    with pytest.raises(RuntimeError, match="--allow-cpu-raft"):
        RaftFlow(device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: RAFT runs there")
def test_raft_without_cuda_says_what_to_do():
    with pytest.raises(RuntimeError, match="--allow-cpu-raft") as info:
        RaftFlow()
    assert "tvl1" in str(info.value)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        RaftFlow(device="cuda", allow_cpu=True)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_raft_gpu_matches_cpu():
    torch.manual_seed(0)
    gpu = RaftFlow(weights=None, num_flow_updates=4)  # device=None picks CUDA
    assert gpu.device.type == "cuda"
    cpu = RaftFlow(weights=None, device="cpu", allow_cpu=True, num_flow_updates=4)
    cpu.model.load_state_dict(gpu.model.state_dict())
    frames = random_frames(5, 96, 120)
    out = gpu(frames)
    assert out.shape == (4, 96, 120, 2) and np.isfinite(out).all()
    ref = cpu(frames)
    # TF32/cuDNN differ from the CPU by rounding only.
    assert np.abs(out - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())
