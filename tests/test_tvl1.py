"""reslstm.flow.tvl1 (the PyTorch TV-L1 package) against OpenCV's CPU DualTVL1OpticalFlow with its defaults.

Without videos: the grey conversion (bit-exact), the pyramid sizes and calc()'s lowering of
nscales, single-scale runs on smooth synthetic pairs (a faithful float32 port matches OpenCV to
~1e-5 px there), multi-scale synthetic pairs, per-pair stopping in a batch, TorchTVL1's batching
and its input checks. With the real videos (../shared/videos): consecutive grey pairs at 112x112
and 224x224 against a fresh OpenCV object per size, in pixels and after I3D's clip-and-scale.

Multi-scale TV-L1 amplifies last-bit rounding differences (OpenCV against itself with 1e-4 grey
levels of noise moves by ~0.01-0.03 px), hence the general bars, which hold for any OpenCV
build: over all pairs mean EPE <= 0.02 px and >= 98 % of pixels within 0.1 px; every pair mean
EPE <= 0.05 px and >= 93 % within 0.1 px; I3D-range mean absolute difference <= 0.0025. On
OpenCV 5 with IPP on an AVX2/FMA x86 CPU the port reproduces OpenCV's rounding (remap's
weights and FMA sums, IPP's resize), and a stricter test checks agreement to ~1e-4 px.
"""

import cv2
import numpy as np
import pytest
import torch

from reslstm.flow.methods import compute_flow, to_i3d_range
from reslstm.flow.tvl1 import TorchTVL1, TVL1Params, params_from_id, params_id, pyramid_sizes, rgb_to_grey, tvl1_flow
# the building blocks, compared with the OpenCV functions TV-L1 calls
from reslstm.flow.tvl1.iteration import median as _median
from reslstm.flow.tvl1.resize import resize as _resize
from reslstm.flow.tvl1.warp import cubic_remap as _cubic_remap, cubic_sampler as _cubic_sampler
from reslstm.video.decoding import VideoReader

VIDEOS = ("activitynet_320x240_audio.mp4", "kinetics_demo_340x256.mp4", "short_32f_340x256.mp4",
          "xvid_mp3_320x240.avi")

# Accuracy bars against OpenCV (see the module docstring).
ALL_MEAN_EPE, ALL_WITHIN = 0.02, 0.98
PAIR_MEAN_EPE, PAIR_WITHIN = 0.05, 0.93
I3D_MAD = 0.0025

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (none on this machine)")

# Where OpenCV's own rounding is the one the port reproduces: OpenCV >= 5 (remap with exact
# cubic weights), resize through IPP, remap's SIMD path with FMA.
BIT_LEVEL_OPENCV = (int(cv2.__version__.split(".")[0]) >= 5 and cv2.ipp.useIPP()
                    and "AVX2" in cv2.getCPUFeaturesLine())  # OpenCV's AVX2 group has FMA3
needs_bit_level_opencv = pytest.mark.skipif(
    not BIT_LEVEL_OPENCV, reason=f"OpenCV {cv2.__version__} here does not round like OpenCV 5 "
    "with IPP and AVX2/FMA (the general accuracy bars still apply)")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread for this module: TV-L1 is thousands of small tensor operations, and
    on a small shared CPU the threads' hand-offs cost far more than they save (measured: 4
    pairs at 224x224 took 8 s with one thread and 56 s with two on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def opencv_tvl1(prev: np.ndarray, nxt: np.ndarray, **kwargs) -> np.ndarray:
    """OpenCV's flow for one grey uint8 pair, from a fresh object (calc() lowers nscales for
    good on small frames, so an object is never shared across sizes)."""
    return cv2.optflow.DualTVL1OpticalFlow_create(**kwargs).calc(prev, nxt, None)


def epe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)


def assert_close_to_opencv(ours: np.ndarray, refs: np.ndarray, label: str = "") -> dict:
    """The accuracy bars over pairs (P, H, W, 2); returns the measured figures."""
    e = epe(ours, refs)  # (P, H, W)
    per_pair = e.mean(axis=(1, 2))
    within = (e <= 0.1).mean(axis=(1, 2))
    i3d = np.abs(to_i3d_range(ours) - to_i3d_range(refs)).mean()
    stats = {"mean": float(e.mean()), "within": float((e <= 0.1).mean()),
             "worst_pair": float(per_pair.max()), "worst_within": float(within.min()),
             "i3d_mad": float(i3d)}
    assert e.mean() <= ALL_MEAN_EPE, (label, stats)
    assert (e <= 0.1).mean() >= ALL_WITHIN, (label, stats)
    assert per_pair.max() <= PAIR_MEAN_EPE, (label, stats, per_pair)
    assert within.min() >= PAIR_WITHIN, (label, stats, within)
    assert i3d <= I3D_MAD, (label, stats)
    return stats


def smooth_texture(h: int, w: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """float32 smooth random texture in 0..255."""
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255.0


def synthetic_pair(size: int, seed: int, angle: float, shift: tuple[float, float]):
    """Grey uint8 pair (size, size): a smooth texture, then the same rotated and shifted."""
    big = smooth_texture(2 * size, 2 * size, seed)
    m = cv2.getRotationMatrix2D((size, size), angle, 1.0)
    m[:, 2] += shift
    moved = cv2.warpAffine(big, m, (2 * size, 2 * size), flags=cv2.INTER_CUBIC)
    crop = slice(size // 2, size // 2 + size)
    return (np.round(big[crop, crop]).astype(np.uint8), np.round(moved[crop, crop]).astype(np.uint8))


def as_batch(*arrays):
    return torch.from_numpy(np.stack(arrays))


# ---------------------------------------------------------------------------------------------
# Parameters, grey conversion, pyramid
# ---------------------------------------------------------------------------------------------

def test_params_defaults_are_opencvs():
    cv = cv2.optflow.DualTVL1OpticalFlow_create()
    p = TVL1Params()
    assert p.tau == cv.getTau() and p.lambda_ == cv.getLambda() and p.theta == cv.getTheta()
    assert p.nscales == cv.getScalesNumber() and p.warps == cv.getWarpingsNumber()
    assert p.epsilon == cv.getEpsilon() and p.scale_step == cv.getScaleStep()
    assert p.inner_iterations == cv.getInnerIterations()
    assert p.outer_iterations == cv.getOuterIterations()
    assert p.gamma == cv.getGamma() and p.median_filtering == cv.getMedianFiltering()


@pytest.mark.parametrize("kwargs", [
    {"tau": 0}, {"lambda_": -1}, {"theta": float("nan")}, {"epsilon": -0.1}, {"gamma": -1.0},
    {"nscales": 0}, {"warps": 1.5}, {"inner_iterations": 0}, {"outer_iterations": True},
    {"scale_step": 1.0}, {"scale_step": 0}, {"median_filtering": 7}, {"median_filtering": 4},
    {"tau": "0.25"},
])
def test_params_validation(kwargs):
    with pytest.raises(ValueError, match="TVL1Params"):
        TVL1Params(**kwargs)


def test_params_id_names_what_differs_from_opencvs_defaults():
    assert params_id(TVL1Params()) == "" and params_from_id("") == TVL1Params()
    p = TVL1Params(tau=0.2, nscales=3, median_filtering=3)
    assert params_id(p) == "tau=0.2,nscales=3,median_filtering=3"
    assert params_from_id(params_id(p)) == p
    with pytest.raises(ValueError, match="not a TV-L1 parameter id"):
        params_from_id("speed=1")


def test_grey_conversion_is_opencvs_exactly():
    rng = np.random.default_rng(0)
    # every (R, G) with 16 random B values, plus random frames
    r, g = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    bs = rng.integers(0, 256, 16)
    grid = np.stack([np.broadcast_to(r[..., None], (256, 256, 16)),
                     np.broadcast_to(g[..., None], (256, 256, 16)),
                     np.broadcast_to(bs, (256, 256, 16))], axis=-1).reshape(256, 4096, 3)
    frames = rng.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    for rgb in [grid.astype(np.uint8)] + list(frames):
        ours = rgb_to_grey(torch.from_numpy(rgb)).numpy()
        assert ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    batch = rgb_to_grey(frames)  # arrays are accepted, leading dims kept
    assert tuple(batch.shape) == (3, 37, 53)
    with pytest.raises(ValueError, match="uint8 RGB"):
        rgb_to_grey(torch.zeros(4, 4, 3))


def test_pyramid_sizes():
    assert pyramid_sizes(224, 224) == [(224, 224), (179, 179), (143, 143), (114, 114), (91, 91)]
    assert pyramid_sizes(112, 112) == [(112, 112), (90, 90), (72, 72), (58, 58), (46, 46)]
    assert pyramid_sizes(240, 320) == [(240, 320), (192, 256), (154, 205), (123, 164), (98, 131)]
    assert pyramid_sizes(24, 24) == [(24, 24), (19, 19)]  # 15 < 16: calc() stops at 2 scales
    assert pyramid_sizes(64, 19) == [(64, 19)]
    assert pyramid_sizes(224, 224, TVL1Params(nscales=2)) == [(224, 224), (179, 179)]
    assert len(pyramid_sizes(224, 224, TVL1Params(nscales=20, scale_step=0.5))) == 4  # 224..28


@pytest.mark.parametrize("size", [(24, 24), (40, 30), (64, 19), (112, 112)])
def test_pyramid_depth_is_what_opencv_lowers_nscales_to(size):
    # calc() lowers the object's nscales to the number of levels it processed
    cv = cv2.optflow.DualTVL1OpticalFlow_create()
    a, b = synthetic_pair(max(size), 0, 1.0, (0.5, 0.5))
    cv.calc(a[:size[0], :size[1]].copy(), b[:size[0], :size[1]].copy(), None)
    assert cv.getScalesNumber() == len(pyramid_sizes(*size))


# ---------------------------------------------------------------------------------------------
# Building blocks against the OpenCV functions TV-L1 calls
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ksize", [3, 5])
def test_median_is_opencvs_median_blur(ksize):
    rng = np.random.default_rng(ksize)
    planes = rng.normal(0, 2, (2, 3, 23, 31)).astype(np.float32)
    planes[0, 0, :6, :6] = 0.5  # ties
    planes[1, 2] = np.round(planes[1, 2])
    ours = _median(torch.from_numpy(planes), ksize).numpy()
    for idx in np.ndindex(2, 3):
        np.testing.assert_array_equal(ours[idx], cv2.medianBlur(planes[idx], ksize))


@needs_bit_level_opencv
def test_resize_and_remap_round_like_opencv():
    """The pyramid step, the flow upscaling and the cubic warp equal OpenCV's bit for bit."""
    rng = np.random.default_rng(0)
    for h, w in [(112, 112), (224, 224), (57, 73), (240, 320)]:
        img = (rng.random((h, w)) * 255).astype(np.float32)
        small = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
        ours = _resize(torch.from_numpy(img)[None], small.shape, (1 / 0.8, 1 / 0.8))[0].numpy()
        np.testing.assert_array_equal(ours, small)
        flow = rng.normal(0, 3, small.shape).astype(np.float32)
        big = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR)
        sh, sw = small.shape
        ours = _resize(torch.from_numpy(flow)[None], (h, w), (sh / h, sw / w))[0].numpy()
        np.testing.assert_array_equal(ours, big)
        u1 = rng.normal(0, 3, (h, w)).astype(np.float32)
        u2 = rng.normal(0, 3, (h, w)).astype(np.float32)
        mx = np.arange(w, dtype=np.float32)[None] + u1
        my = np.arange(h, dtype=np.float32)[:, None] + u2
        ref = cv2.remap(img, mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        sampler = _cubic_sampler(torch.from_numpy(u1)[None], torch.from_numpy(u2)[None])
        ours = _cubic_remap(torch.from_numpy(img)[None, None], sampler)[0, 0].numpy()
        np.testing.assert_array_equal(ours, ref)


# ---------------------------------------------------------------------------------------------
# Exact math on synthetic pairs (no videos needed)
# ---------------------------------------------------------------------------------------------

SINGLE_SCALE_CASES = [  # (TVL1Params kwargs, the same for OpenCV's create())
    ({}, {}),
    ({"gamma": 0.1}, {"gamma": 0.1}),
    ({"median_filtering": 3}, {"medianFiltering": 3}),
    ({"median_filtering": 1}, {"medianFiltering": 1}),
    ({"epsilon": 0.0, "warps": 2, "outer_iterations": 3},
     {"epsilon": 0.0, "warps": 2, "outerIterations": 3}),
    ({"tau": 0.2, "lambda_": 0.3, "theta": 0.5, "inner_iterations": 10},
     {"tau": 0.2, "lambda_": 0.3, "theta": 0.5, "innnerIterations": 10}),
]


@pytest.mark.parametrize("ours_kw, cv_kw", SINGLE_SCALE_CASES)
def test_single_scale_matches_opencv(ours_kw, cv_kw):
    """One scale on smooth images: no pyramid to amplify rounding, so a faithful port agrees
    with OpenCV to ~1e-5 px."""
    for seed, shape in [(0, (48, 64)), (1, (37, 41))]:
        a, b = synthetic_pair(max(shape), seed, 2.0, (1.3, -0.7))
        a, b = a[:shape[0], :shape[1]].copy(), b[:shape[0], :shape[1]].copy()
        ref = opencv_tvl1(a, b, nscales=1, **cv_kw)
        ours = tvl1_flow(as_batch(a), as_batch(b), TVL1Params(nscales=1, **ours_kw))[0].numpy()
        e = epe(ours, ref)
        assert e.mean() < 1e-5 and e.max() < 5e-4, (ours_kw, shape, e.mean(), e.max())


def test_two_and_three_scales_match_opencv():
    """The pyramid (0.8 bilinear steps, rounded sizes), the flow upscaling (bilinear, x 1/0.8)
    and the per-level resets, on pairs where the multi-scale chaos stays small."""
    a, b = synthetic_pair(64, 0, 2.0, (1.5, -1.0))
    for nscales in (2, 3):
        ref = opencv_tvl1(a, b, nscales=nscales)
        ours = tvl1_flow(as_batch(a), as_batch(b), TVL1Params(nscales=nscales))[0].numpy()
        assert epe(ours, ref).mean() < 1e-3, (nscales, epe(ours, ref).mean())


def test_default_params_on_synthetic_pairs_match_opencv():
    pairs = [synthetic_pair(64, 0, 2.0, (1.5, -1.0)), synthetic_pair(64, 1, -3.0, (2.5, 0.7)),
             synthetic_pair(64, 2, 1.0, (3.0, 2.0))]
    refs = np.stack([opencv_tvl1(a, b) for a, b in pairs])
    ours = tvl1_flow(as_batch(*[a for a, _ in pairs]), as_batch(*[b for _, b in pairs])).numpy()
    assert ours.shape == refs.shape and ours.dtype == np.float32
    assert_close_to_opencv(ours, refs, "synthetic 64x64")


def test_each_pair_stops_on_its_own_error():
    """A batch gives every pair exactly the flow it gets alone, whichever pairs stop first;
    the masked path (host looks every 3 iterations) equals the compacting one bit for bit."""
    still = synthetic_pair(48, 3, 0.0, (0.0, 0.0))  # identical frames: stops at once
    moving = synthetic_pair(48, 4, 4.0, (2.5, -1.5))
    slow = synthetic_pair(48, 5, -2.0, (0.7, 1.9))
    prev = as_batch(still[0], moving[0], slow[0])
    nxt = as_batch(still[1], moving[1], slow[1])
    batch = tvl1_flow(prev, nxt)
    masked = tvl1_flow(prev, nxt, sync_every=3)
    for i in range(3):
        alone = tvl1_flow(prev[i:i + 1], nxt[i:i + 1])[0]
        assert torch.equal(batch[i], alone), i
        assert torch.equal(masked[i], alone), i
    assert float(batch[0].abs().max()) == 0.0
    # running the still pair as long as the others would not leave it at exactly zero flow:
    # with epsilon = 0 nothing stops early and every pair runs all iterations
    assert not torch.equal(tvl1_flow(prev, nxt, TVL1Params(epsilon=0.0))[1], batch[1])


def test_single_pair_and_float_input():
    a, b = synthetic_pair(40, 6, 1.0, (1.0, 0.5))
    flow = tvl1_flow(torch.from_numpy(a), torch.from_numpy(b))
    assert tuple(flow.shape) == (40, 40, 2) and flow.dtype == torch.float32
    as_float = tvl1_flow(torch.from_numpy(a).float(), torch.from_numpy(b).double())
    assert torch.equal(flow, as_float)
    assert torch.equal(flow, tvl1_flow(a, b))  # NumPy arrays too


@pytest.mark.parametrize("prev, nxt, match", [
    (torch.zeros(2, 8, 8, dtype=torch.uint8), torch.zeros(2, 8, 9, dtype=torch.uint8), "differ in shape"),
    (torch.zeros(1, 2, 8, 8), torch.zeros(1, 2, 8, 8), r"\(B, H, W\)"),
    (torch.zeros(2, 8, 8, dtype=torch.int32), torch.zeros(2, 8, 8, dtype=torch.int32), "uint8 or float"),
    (torch.zeros(1, 2, 8, dtype=torch.uint8), torch.zeros(1, 2, 8, dtype=torch.uint8), "at least 3x3"),
    (torch.full((1, 8, 8), float("nan")), torch.zeros(1, 8, 8), "NaN"),
    ([[1, 2, 3]], [[1, 2, 3]], "tensor or NumPy"),
])
def test_tvl1_flow_rejects_bad_inputs(prev, nxt, match):
    error = TypeError if match == "tensor or NumPy" else ValueError
    with pytest.raises(error, match=match):
        tvl1_flow(prev, nxt)


def test_tvl1_flow_rejects_bad_options():
    a = torch.zeros(1, 8, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="TVL1Params"):
        tvl1_flow(a, a, params={"tau": 0.25})
    with pytest.raises(ValueError, match="sync_every"):
        tvl1_flow(a, a, sync_every=0)
    assert tuple(tvl1_flow(a[:0], a[:0]).shape) == (0, 8, 8, 2)


# ---------------------------------------------------------------------------------------------
# TorchTVL1: the extraction pipeline's entry point
# ---------------------------------------------------------------------------------------------

def moving_rgb_frames(n: int = 5, size: tuple[int, int] = (36, 44), seed: int = 7) -> np.ndarray:
    """uint8 RGB (n, H, W, 3): a coloured smooth texture drifting by ~1.3 px per frame."""
    h, w = size
    big = np.stack([smooth_texture(h + 4 * n, w + 4 * n, seed + c) for c in range(3)], -1)
    frames = []
    for t in range(n):
        m = np.float32([[1, 0, -1.3 * t], [0, 1, -0.6 * t]])
        frames.append(cv2.warpAffine(big, m, (big.shape[1], big.shape[0]), flags=cv2.INTER_CUBIC)[:h, :w])
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def test_torch_tvl1_is_batch_size_independent_and_matches_tvl1_flow():
    frames = moving_rgb_frames()
    flows = {bs: TorchTVL1(batch_size=bs, device="cpu")(frames) for bs in (1, 3, 8)}
    assert flows[1].shape == (4, 36, 44, 2) and flows[1].dtype == np.float32
    np.testing.assert_array_equal(flows[1], flows[3])
    np.testing.assert_array_equal(flows[1], flows[8])
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    direct = tvl1_flow(torch.from_numpy(grey[:-1]), torch.from_numpy(grey[1:])).numpy()
    np.testing.assert_array_equal(flows[1], direct)
    tensor = TorchTVL1(batch_size=2, device="cpu").flow_tensor(torch.from_numpy(frames))
    assert isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu"
    np.testing.assert_array_equal(tensor.numpy(), flows[1])


def test_torch_tvl1_matches_opencv_pipeline():
    """TorchTVL1 on RGB frames against reslstm.flow.methods.compute_flow(frames, "tvl1") (cvtColor +
    OpenCV's TV-L1), the CPU path of the extraction pipeline."""
    frames = moving_rgb_frames(4, (64, 64), seed=11)
    assert_close_to_opencv(TorchTVL1(device="cpu")(frames), compute_flow(frames, "tvl1"), "rgb")


@pytest.mark.parametrize("frames, match", [
    (np.zeros((1, 16, 16, 3), np.uint8), "at least 2 frames"),
    (np.zeros((0, 16, 16, 3), np.uint8), "at least 2 frames"),
    (np.zeros((3, 16, 16), np.uint8), r"uint8 RGB frames \(N, H, W, 3\)"),
    (np.zeros((3, 16, 16, 3), np.float32), r"uint8 RGB frames \(N, H, W, 3\)"),
    (np.zeros((3, 2, 16, 3), np.uint8), "at least 3x3"),
    ("frames", "tensor or NumPy"),
])
def test_torch_tvl1_rejects_bad_frames(frames, match):
    error = TypeError if match == "tensor or NumPy" else ValueError
    with pytest.raises(error, match=match):
        TorchTVL1(device="cpu")(frames)


def test_torch_tvl1_rejects_bad_options():
    with pytest.raises(ValueError, match="batch_size"):
        TorchTVL1(batch_size=0)
    with pytest.raises(TypeError, match="TVL1Params"):
        TorchTVL1(params=None)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            TorchTVL1(device="cuda")


# ---------------------------------------------------------------------------------------------
# Real frames
# ---------------------------------------------------------------------------------------------

def real_pairs(videos_dir, size: int, per_video: int, span: int = 60):
    """Grey uint8 consecutive pairs: ``per_video`` pairs spread over the first ``span`` frames
    of each test video, decoded at size x size (RGB) and converted with cv2.cvtColor."""
    prev, nxt = [], []
    for name in VIDEOS:
        grey = []
        for frame in VideoReader(videos_dir / name, size=(size, size)):
            grey.append(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY))
            if len(grey) == span:
                break
        for i in np.linspace(0, len(grey) - 2, per_video).astype(int):
            prev.append(grey[i])
            nxt.append(grey[i + 1])
    return np.stack(prev), np.stack(nxt)


@pytest.fixture(scope="module")
def real_112(shared_videos):
    """20 grey pairs at 112x112 (5 per video), OpenCV's flows and ours."""
    prev, nxt = real_pairs(shared_videos, 112, per_video=5)
    refs = np.stack([opencv_tvl1(a, b) for a, b in zip(prev, nxt)])
    ours = tvl1_flow(torch.from_numpy(prev), torch.from_numpy(nxt)).numpy()
    return prev, nxt, refs, ours


@pytest.fixture(scope="module")
def real_224(shared_videos):
    """4 grey pairs at 224x224 (1 per video), OpenCV's flows and ours."""
    prev, nxt = real_pairs(shared_videos, 224, per_video=1)
    refs = np.stack([opencv_tvl1(a, b) for a, b in zip(prev, nxt)])
    ours = tvl1_flow(torch.from_numpy(prev), torch.from_numpy(nxt)).numpy()
    return prev, nxt, refs, ours


def test_real_112_pairs_match_opencv(real_112):
    prev, _, refs, ours = real_112
    assert ours.shape == refs.shape == (20, 112, 112, 2)
    stats = assert_close_to_opencv(ours, refs, "112x112")
    print(f"112x112, {len(prev)} pairs: {stats}")


def test_real_224_pairs_match_opencv(real_224):
    prev, _, refs, ours = real_224
    stats = assert_close_to_opencv(ours, refs, "224x224")
    print(f"224x224, {len(prev)} pairs: {stats}")


def test_real_rgb_frames_match_the_opencv_pipeline(shared_videos):
    """Consecutive RGB frames of one video through TorchTVL1 (batched in 3s) and through the
    project's OpenCV path (one shared OpenCV object, as extraction uses it)."""
    frames = []
    for frame in VideoReader(shared_videos / "kinetics_demo_340x256.mp4", size=(112, 112)):
        frames.append(frame)
        if len(frames) == 7:
            break
    frames = np.stack(frames)
    assert_close_to_opencv(TorchTVL1(device="cpu", batch_size=3)(frames),
                           compute_flow(frames, "tvl1"), "rgb 112x112")


@needs_bit_level_opencv
def test_bit_level_agreement_with_opencv5(real_112, real_224):
    """Same rounding as OpenCV 5 + IPP: the flows agree to float noise, not just to the
    multi-scale floor (measured here: ~1e-11 px mean at 112x112, ~1e-14 at 224x224)."""
    for _, _, refs, ours in (real_112, real_224):
        per_pair = epe(ours, refs).mean(axis=(1, 2))
        assert per_pair.max() <= 1e-4, per_pair
    a, b = synthetic_pair(64, 1, -3.0, (2.5, 0.7))
    single = tvl1_flow(as_batch(a), as_batch(b), TVL1Params(nscales=1))[0].numpy()
    np.testing.assert_allclose(single, opencv_tvl1(a, b, nscales=1), rtol=0, atol=1e-5)
    multi = tvl1_flow(as_batch(a), as_batch(b))[0].numpy()
    assert epe(multi, opencv_tvl1(a, b)).max() <= 1e-4


# ---------------------------------------------------------------------------------------------
# torch.compile and CUDA
# ---------------------------------------------------------------------------------------------

@pytest.mark.benchmark
def test_compile_gives_the_same_flow_on_cpu():
    """torch.compile of the iteration and the median (Inductor; 30-120 s of compilation on a
    small CPU): the same flow as eager (measured: bit for bit) and as OpenCV. Deselected by
    default: benchmarks/flow.py compiles on the CPU too and prints its EPE against OpenCV, and
    the CUDA test below checks the compiled path on a GPU; ``pytest -m benchmark`` runs it."""
    a, b = synthetic_pair(48, 0, 2.0, (1.3, -0.7))
    params = TVL1Params(nscales=2, warps=2)
    eager = tvl1_flow(as_batch(a, b), as_batch(b, a), params)
    compiled = tvl1_flow(as_batch(a, b), as_batch(b, a), params, compile=True)
    assert epe(compiled.numpy(), eager.numpy()).mean() < 1e-4
    refs = np.stack([opencv_tvl1(a, b, nscales=2, warps=2), opencv_tvl1(b, a, nscales=2, warps=2)])
    for i in range(2):
        assert epe(compiled[i].numpy(), refs[i]).mean() < 1e-3


@pytest.mark.gpu
@needs_cuda
def test_cuda_single_scale_matches_opencv():
    a, b = synthetic_pair(64, 0, 2.0, (1.3, -0.7))
    ref = opencv_tvl1(a, b, nscales=1)
    for compile in (False, True):
        ours = tvl1_flow(as_batch(a).cuda(), as_batch(b).cuda(), TVL1Params(nscales=1),
                         compile=compile)
        assert ours.device.type == "cuda"
        e = epe(ours[0].cpu().numpy(), ref)
        print(f"CUDA single scale, compile={compile}: mean EPE {e.mean():.2e}, max {e.max():.2e}")
        assert e.mean() < 1e-4 and e.max() < 5e-3, (compile, e.mean(), e.max())
    # the device path's own rounding (double hypot, double sums) also checked on the CPU side:
    cpu = tvl1_flow(as_batch(a), as_batch(b), TVL1Params(nscales=1))[0].numpy()
    assert epe(cpu, ours[0].cpu().numpy()).mean() < 1e-4


@pytest.mark.gpu
@needs_cuda
def test_cuda_eager_and_compiled_match_opencv_on_real_frames(shared_videos):
    prev, nxt = real_pairs(shared_videos, 112, per_video=3)
    refs = np.stack([opencv_tvl1(a, b) for a, b in zip(prev, nxt)])
    p, n = torch.from_numpy(prev).cuda(), torch.from_numpy(nxt).cuda()
    eager = tvl1_flow(p, n).cpu().numpy()
    compiled = tvl1_flow(p, n, compile=True).cpu().numpy()
    print(f"CUDA eager, {len(prev)} pairs: {assert_close_to_opencv(eager, refs, 'cuda eager')}")
    print(f"CUDA compiled: {assert_close_to_opencv(compiled, refs, 'cuda compiled')}")
    assert epe(eager, compiled).mean() <= ALL_MEAN_EPE
    # and TorchTVL1 on the device: uint8 RGB in, batch sizes do not matter
    frames = np.stack([f for f, _ in zip(VideoReader(shared_videos / VIDEOS[1], size=(112, 112)),
                                         range(6))])
    one = TorchTVL1(device="cuda", batch_size=1).flow_tensor(frames)
    many = TorchTVL1(device="cuda", batch_size=4, compile=True).flow_tensor(frames)
    assert one.device.type == "cuda"
    assert_close_to_opencv(one.cpu().numpy(), compute_flow(frames, "tvl1"), "cuda rgb")
    assert_close_to_opencv(many.cpu().numpy(), compute_flow(frames, "tvl1"), "cuda rgb compiled")
