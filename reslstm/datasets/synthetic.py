"""The built-in synthetic demo data set: textured shapes that move, turn, grow and shrink.

Each video shows one textured shape (disc, square, triangle or star, filled with stripes,
checks or wedges that turn and scale with it) over a static background (smooth noise, a
gradient or soft stripes), with random colours, size, position, speed and duration. The
class is the motion, a sequence of phases (``CLASS_PHASES``).

Order pairs (``ORDER_PAIRS``) are two classes made of the same two phases in opposite order:
grow/shrink, rotate clockwise/anticlockwise, move right/left. A phase ramps one state (radius,
angle or x) between lo and lo + span in d frames; lo, span and the two phase lengths are drawn
by the same code for both classes and the class that starts with the falling phase starts at
lo + span, so every (state, velocity) a frame of one class shows, the other class shows with
the same probability. The shape also rests (holds still) before, between and after the two
phases: a rests, phase 1, a + b rests, phase 2, b rests, with a and b in 16..23 frames. So no
16-frame clip holds both motions (a clip straddling a direct turn would show a peak in one
class and a trough in the other, which order-blind pooling can pick up), each end state is
held equally long in both classes, and every transition a clip can show (rest to motion,
motion to rest, at either end of the range) occurs once in each class, at offsets spread
evenly over the 8-frame clip grid. Per-clip appearance (RGB) and motion (flow) then have the
same distribution in both classes; only the order tells them apart, which is what a temporal
model must learn and an order-blind pooling cannot. Each phase lasts 24-40 frames, so 16-frame
clips taken every 8 frames see it whole.

The other classes (slide up, slide down, diagonal, zig-zag, bounce) are told apart by motion.

Everything is a pure function of (class, index, seed, size): ``sample_video_params`` draws a
video's parameters and ``render_video`` turns them into uint8 frames (T, H, W, 3);
``generate_synthetic`` writes H.264 MP4s (libx264, yuv420p, one encoder thread, so the
output is deterministic) plus ``manifest.parquet`` and ``synthetic.json`` in the output dir.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
import pyarrow as pa

from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest
from reslstm.datasets.splits import stratified_split
from reslstm.errors import ConfigError

log = logging.getLogger(__name__)

CLASS_PHASES: dict[str, tuple[str, ...]] = {
    "grow_then_shrink": ("grow", "shrink"),
    "shrink_then_grow": ("shrink", "grow"),
    "rotate_cw_then_ccw": ("rotate_cw", "rotate_ccw"),
    "rotate_ccw_then_cw": ("rotate_ccw", "rotate_cw"),
    "right_then_left": ("move_right", "move_left"),
    "left_then_right": ("move_left", "move_right"),
    "slide_up": ("slide_up",),
    "slide_down": ("slide_down",),
    "diagonal": ("diagonal",),
    "zigzag": ("zigzag",),
    "bounce": ("bounce",),
}
SYNTHETIC_CLASSES: list[str] = list(CLASS_PHASES)
ORDER_PAIRS: list[tuple[str, str]] = [
    ("grow_then_shrink", "shrink_then_grow"),
    ("rotate_cw_then_ccw", "rotate_ccw_then_cw"),
    ("right_then_left", "left_then_right"),
]
SYNTHETIC_CATEGORIES: dict[str, str] = {
    name: "order pair" if any(name in pair for pair in ORDER_PAIRS) else "single motion"
    for name in SYNTHETIC_CLASSES
}
# Ramp phases: the state they change and its direction (angles count anticlockwise on screen).
_RAMPS = {"grow": ("scale", 1), "shrink": ("scale", -1), "rotate_ccw": ("angle", 1),
          "rotate_cw": ("angle", -1), "move_right": ("x", 1), "move_left": ("x", -1)}
SHAPES = ("disc", "square", "triangle", "star")
TEXTURES = ("stripes", "checker", "wedges")
BACKGROUNDS = ("noise", "gradient", "stripes")
FPS = 25
PHASE_FRAMES = (24, 40)  # inclusive range of one phase's length; single-phase videos get twice
REST_FRAMES = (16, 23)   # inclusive range of the first and last rests of an order-pair video


@dataclass(frozen=True)
class SyntheticConfig:
    """What a generated set depends on; written to synthetic.json beside the manifest."""

    videos_per_class: int = 16
    seed: int = 0
    height: int = 96
    width: int = 128
    fps: int = FPS
    val_fraction: float = 0.125
    test_fraction: float = 0.25
    crf: int = 18


@dataclass(frozen=True, eq=False)
class VideoParams:
    """Everything needed to render one video; trajectories are per frame, in pixels/radians."""

    class_name: str
    index: int
    height: int
    width: int
    phases: tuple[str, ...]
    phase_frames: tuple[int, ...]  # single motion: (n,); order pair: (rest, phase 1, rest, phase 2, rest)
    shape: str
    texture: str
    texture_freq: float
    texture_angle: float
    colors: np.ndarray  # (2, 3) float in [0, 1]: the texture's two colours
    background: str
    bg_colors: np.ndarray  # (2, 3)
    bg_grid: np.ndarray  # (gh, gw) noise grid, or [angle, period, phase] for gradient/stripes
    x: np.ndarray  # (T,) centre column
    y: np.ndarray  # (T,) centre row
    scale: np.ndarray  # (T,) circumradius
    angle: np.ndarray  # (T,) anticlockwise on screen

    @property
    def num_frames(self) -> int:
        return len(self.x)


def _luma(c: np.ndarray) -> float:
    return float(c @ np.array([0.299, 0.587, 0.114]))


def _ramp(lo: float, span: float, sign: int, n: int) -> np.ndarray:
    """n frames moving from one end of [lo, lo + span] towards the other at constant speed."""
    k = np.arange(n) / n
    return lo + span * k if sign > 0 else lo + span * (1.0 - k)


def sample_video_params(class_name: str, index: int, seed: int = 0,
                        height: int = 96, width: int = 128) -> VideoParams:
    """Draw one video's parameters; a pure function of its arguments."""
    if class_name not in CLASS_PHASES:
        raise ConfigError(f"unknown synthetic class {class_name!r}; known: {SYNTHETIC_CLASSES}")
    rng = np.random.default_rng([int(seed), zlib.crc32(class_name.encode()), int(index)])
    H, W, s = height, width, min(height, width) / 96.0  # sizes below are for a 96-pixel side
    # Appearance, drawn the same way for every class.
    shape, texture, background = (str(rng.choice(v)) for v in (SHAPES, TEXTURES, BACKGROUNDS))
    bg0 = rng.uniform(0.1, 0.9, 3)
    bg_colors = np.stack([bg0, np.clip(bg0 + rng.uniform(-0.3, 0.3, 3), 0, 1)])
    base = rng.uniform(0, 1, 3)
    bright = _luma(bg_colors.mean(0)) < 0.5  # shape contrasts with the background
    c0 = 0.55 + 0.45 * base if bright else 0.45 * base
    colors = np.stack([c0, np.clip(c0 + (-0.4 if bright else 0.4), 0, 1)])
    if background == "noise":
        bg_grid = rng.uniform(0, 1, (int(rng.integers(3, 6)), int(rng.integers(3, 7))))
    else:
        bg_grid = np.array([rng.uniform(0, 2 * np.pi), rng.uniform(12, 40) * s, rng.uniform(0, 2 * np.pi)])
    texture_freq, texture_angle = rng.uniform(1.2, 2.5), rng.uniform(0, 2 * np.pi)
    angle0 = rng.uniform(0, 2 * np.pi)

    phases = CLASS_PHASES[class_name]
    lo_f, hi_f = PHASE_FRAMES
    if all(p in _RAMPS for p in phases):
        var = _RAMPS[phases[0]][0]
        # Lengths of the rising and the falling phase, drawn in this fixed order whatever the
        # class's order, so both classes of a pair share the distribution.
        frames_of = {1: int(rng.integers(lo_f, hi_f + 1)), -1: int(rng.integers(lo_f, hi_f + 1))}
        if var == "scale":
            lo, span = rng.uniform(7, 13) * s, rng.uniform(9, 17) * s
            r = lo + span
        else:
            r = rng.uniform(10, 18) * s
            lo, span = (rng.uniform(0, 2 * np.pi), rng.uniform(0.5 * np.pi, np.pi)) if var == "angle" \
                else (0.0, rng.uniform(0.35, 0.55) * W)
        margin = 1.15 * r + 2
        if var == "x":
            span = min(span, 0.95 * (W - 2 * margin))  # narrow frames: stay inside
        cx = rng.uniform(margin, W - margin - (span if var == "x" else 0.0))
        cy = rng.uniform(margin, H - margin)
        if var == "x":
            lo = cx
        signs = [_RAMPS[p][1] for p in phases]
        # Rests a (first), a + b (between) and b (last): both end states are held a + b frames.
        a, b = (int(rng.integers(REST_FRAMES[0], REST_FRAMES[1] + 1)) for _ in range(2))
        ramp1, ramp2 = (_ramp(lo, span, sg, frames_of[sg]) for sg in signs)
        track = np.concatenate([np.full(a, ramp1[0]), ramp1, np.full(a + b, ramp2[0]), ramp2,
                                np.full(b, ramp2[-1])])
        n = len(track)
        state = {"x": np.full(n, cx), "y": np.full(n, cy), "scale": np.full(n, r), "angle": np.full(n, angle0)}
        state[var] = track
        phase_frames = (a, frames_of[signs[0]], a + b, frames_of[signs[1]], b)
    else:
        n = int(rng.integers(2 * lo_f, 2 * hi_f + 1))
        r = rng.uniform(8, 15) * s
        margin = 1.15 * r + 2
        t = np.arange(n) / (n - 1)
        (phase,) = phases
        if phase in ("slide_up", "slide_down"):
            span = rng.uniform(0.6, 1.0) * (H - 2 * margin)
            top = rng.uniform(margin, H - margin - span)
            x = np.full(n, rng.uniform(margin, W - margin))
            y = top + span * (1 - t if phase == "slide_up" else t)
        elif phase == "diagonal":
            span = rng.uniform(0.5, 0.9) * (min(H, W) - 2 * margin)
            sx, sy = rng.choice([-1, 1], 2)
            x0, y0 = rng.uniform(margin, W - margin - span), rng.uniform(margin, H - margin - span)
            x = x0 + span * (t if sx > 0 else 1 - t)
            y = y0 + span * (t if sy > 0 else 1 - t)
        elif phase == "zigzag":
            span, amp, period = rng.uniform(0.4, 0.6) * W, rng.uniform(0.12, 0.2) * H, rng.integers(12, 21)
            span = min(span, 0.95 * (W - 2 * margin))
            x0 = rng.uniform(margin, W - margin - span)
            x = x0 + span * (t if rng.random() < 0.5 else 1 - t)
            tri = 2 * np.abs(((np.arange(n) / period + rng.random()) % 1.0) - 0.5)  # in [0, 1]
            y = rng.uniform(margin + amp, H - margin - amp) + amp * (2 * tri - 1)
        else:  # bounce: |sin| hops on a floor, drifting sideways
            period, height_px = rng.integers(16, 29), rng.uniform(0.35, 0.6) * (H - 2 * margin)
            floor = rng.uniform(margin + height_px, H - margin)
            drift = rng.uniform(-0.2, 0.2) * W
            x = np.clip(rng.uniform(margin, W - margin) + drift * (t - 0.5), margin, W - margin)
            y = floor - height_px * np.abs(np.sin(np.pi * np.arange(n) / period))
        state = {"x": x, "y": y, "scale": np.full(n, r), "angle": np.full(n, angle0)}
        phase_frames = (n,)
    return VideoParams(class_name, int(index), H, W, phases, phase_frames, shape, texture, texture_freq,
                       texture_angle, colors, background, bg_colors, bg_grid,
                       *(state[k].astype(np.float64) for k in ("x", "y", "scale", "angle")))


def _background(p: VideoParams) -> np.ndarray:
    """(H, W, 3) float32 static background in [0, 1]."""
    H, W = p.height, p.width
    if p.background == "noise":  # bilinear upsampling of a coarse random grid
        gh, gw = p.bg_grid.shape
        wy = np.clip(1 - np.abs(np.linspace(0, gh - 1, H)[:, None] - np.arange(gh)), 0, 1)  # (H, gh)
        wx = np.clip(1 - np.abs(np.linspace(0, gw - 1, W)[:, None] - np.arange(gw)), 0, 1)  # (W, gw)
        mix = wy @ p.bg_grid @ wx.T  # (H, W)
    else:
        theta, period, phase = p.bg_grid
        proj = np.cos(theta) * np.arange(W)[None, :] + np.sin(theta) * np.arange(H)[:, None]
        if p.background == "gradient":
            mix = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-6)
        else:
            mix = 0.5 + 0.5 * np.tanh(2 * np.sin(2 * np.pi * proj / period + phase))
    c0, c1 = p.bg_colors
    return (c0 * (1 - mix[..., None]) + c1 * mix[..., None]).astype(np.float32)


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the unit shape (circumradius ~1), negative inside."""
    if shape == "disc":
        return np.hypot(u, v) - 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.75
    if shape == "triangle":  # three half-planes, one vertex pointing along +v
        normals = [(np.cos(a), np.sin(a)) for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)]
        return np.max([nu * u + nv * v for nu, nv in normals], axis=0) - 0.5
    if shape == "star":  # five points: radius swings between 1 and 0.45 with the polar angle
        f = (np.arctan2(v, u) * 5 / (2 * np.pi) + 0.25) % 1.0
        return np.hypot(u, v) - (0.45 + 0.55 * (1 - 2 * np.abs(f - 0.5)))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def _texture(p: VideoParams, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture mix in [0, 1] in shape coordinates, so it turns and scales with the shape."""
    f, a = p.texture_freq, p.texture_angle
    if p.texture == "stripes":
        wave = np.sin(2 * np.pi * f * (u * np.cos(a) + v * np.sin(a)))
    elif p.texture == "checker":
        wave = np.sin(2 * np.pi * f * u + a) * np.sin(2 * np.pi * f * v + a)
    elif p.texture == "wedges":
        wave = np.sin(round(2 * f + 1) * np.arctan2(v, u) + a)
    else:
        raise ValueError(f"unknown texture {p.texture!r}; known: {TEXTURES}")
    return 0.5 + 0.5 * np.tanh(3 * wave)


def render_video(p: VideoParams) -> np.ndarray:
    """The video's frames, uint8 (T, H, W, 3) RGB."""
    bg = _background(p)
    H, W = p.height, p.width
    frames = np.empty((p.num_frames, H, W, 3), np.uint8)
    for t in range(p.num_frames):
        frame = bg.copy()
        cx, cy, r, a = p.x[t], p.y[t], p.scale[t], p.angle[t]
        reach = 1.15 * r + 2  # only the shape's bounding box is recomputed
        y0, y1 = max(0, int(cy - reach)), min(H, int(math.ceil(cy + reach)) + 1)
        x0, x1 = max(0, int(cx - reach)), min(W, int(math.ceil(cx + reach)) + 1)
        dx = (np.arange(x0, x1) - cx)[None, :]  # (1, w)
        dy = (cy - np.arange(y0, y1))[:, None]  # (h, 1), y up so angles turn anticlockwise
        u = (np.cos(a) * dx + np.sin(a) * dy) / r  # (h, w) shape coordinates
        v = (np.cos(a) * dy - np.sin(a) * dx) / r
        alpha = np.clip(0.5 - _signed_distance(p.shape, u, v) * r, 0, 1)[..., None]  # 1-pixel soft edge
        mix = _texture(p, u, v)[..., None]
        fill = p.colors[0] * (1 - mix) + p.colors[1] * mix
        frame[y0:y1, x0:x1] = frame[y0:y1, x0:x1] * (1 - alpha) + fill * alpha
        frames[t] = np.clip(frame * 255 + 0.5, 0, 255).astype(np.uint8)
    return frames


def synthesize_video(class_name: str, index: int, seed: int = 0, height: int = 96, width: int = 128) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one video, without encoding."""
    return render_video(sample_video_params(class_name, index, seed, height, width))


def write_mp4(frames: np.ndarray, path: Path | str, fps: int = FPS, crf: int = 18) -> None:
    """Encode (T, H, W, 3) uint8 RGB as H.264 MP4 (yuv420p, one thread: deterministic bytes)."""
    path = Path(path)
    _, H, W, _ = frames.shape
    if H % 2 or W % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {W}x{H}")
    tmp = path.with_name(f".{path.stem}.partial.mp4")  # a crash never leaves a truncated video
    # One thread, and no macroblock tree: with mbtree on, x264 gave different bytes for the same
    # frames from one run to the next on small frames (it depends on memory it did not write).
    options = {"crf": str(crf), "preset": "fast", "threads": "1", "x264-params": "mbtree=0"}
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _make_one(task: tuple[str, int, SyntheticConfig, str]) -> int:
    """Render and write one video; returns its frame count. Top level so a pool can pickle it."""
    class_name, index, cfg, path = task
    frames = synthesize_video(class_name, index, cfg.seed, cfg.height, cfg.width)
    write_mp4(frames, path, cfg.fps, cfg.crf)
    return len(frames)


def parse_size(text: str) -> tuple[int, int]:
    """'WIDTHxHEIGHT' (e.g. '128x96') -> (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"size must look like WIDTHxHEIGHT, e.g. 128x96; got {text!r}") from None
    return h, w


def generate_synthetic(
    out_dir: Path | str,
    videos_per_class: int = 16,
    seed: int = 0,
    size: tuple[int, int] = (96, 128),
    workers: int = 1,
    val_fraction: float = 0.125,
    test_fraction: float = 0.25,
    log_every: int = 25,
) -> Path:
    """Write the synthetic set to out_dir (videos/<class>/*.mp4, manifest.parquet, synthetic.json).

    size is (height, width), both even and at least 32. The output is identical for a seed
    whatever `workers` is (each video depends only on its class, index and the seed). Returns
    the manifest's path; logs a line every `log_every` videos and a summary.
    """
    height, width = size
    if height % 2 or width % 2 or min(height, width) < 32:
        raise ConfigError(f"size (height, width) must be even and at least 32, got {size}")
    if videos_per_class < 1:
        raise ConfigError(f"videos_per_class must be >= 1, got {videos_per_class}")
    cfg = SyntheticConfig(videos_per_class, seed, height, width, FPS, val_fraction, test_fraction)
    out_dir = Path(out_dir).expanduser().absolute()
    ids, names, tasks = [], [], []
    for name in SYNTHETIC_CLASSES:
        (out_dir / "videos" / name).mkdir(parents=True, exist_ok=True)
        for i in range(videos_per_class):
            ids.append(f"{name}/{name}_{i:03d}")
            names.append(name)
            tasks.append((name, i, cfg, str(out_dir / "videos" / name / f"{name}_{i:03d}.mp4")))
    splits = stratified_split(ids, names, val_fraction, test_fraction, seed)
    start = time.perf_counter()
    frame_counts = []
    pool = None
    if workers > 1:  # spawn: forking a process that may hold threads (torch, Ray) can deadlock
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        results = pool.map(_make_one, tasks, chunksize=4) if pool else map(_make_one, tasks)
        for done, count in enumerate(results, 1):
            frame_counts.append(count)
            if done % log_every == 0 or done == len(tasks):
                log.info(f"{done}/{len(tasks)} videos ({time.perf_counter() - start:.1f}s)")
    finally:
        if pool:
            pool.shutdown()
    table = pa.table({"video_id": ids, "path": [t[3] for t in tasks],
                      "label": pa.array([SYNTHETIC_CLASSES.index(n) for n in names], pa.int32()),
                      "label_name": names, "split": splits}, schema=MANIFEST_SCHEMA)
    manifest = write_manifest(table, out_dir / "manifest.parquet")
    meta = {"config": asdict(cfg), "classes": SYNTHETIC_CLASSES, "order_pairs": ORDER_PAIRS,
            "class_phases": CLASS_PHASES, "num_frames": dict(zip(ids, frame_counts))}
    (out_dir / "synthetic.json").write_text(json.dumps(meta, indent=1))
    per_split = {s: splits.count(s) for s in ("train", "val", "test")}
    log.info(f"wrote {len(ids)} videos, {len(SYNTHETIC_CLASSES)} classes ({len(ORDER_PAIRS)} order pairs), "
             f"{width}x{height} at {FPS} fps, {sum(frame_counts)} frames in {time.perf_counter() - start:.1f}s; "
             f"splits {per_split}; manifest {manifest}")
    return manifest
