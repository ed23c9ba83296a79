"""The synthetic demo set: classes, order pairs, per-frame statistics, determinism, real MP4s."""

import json
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from conftest import console_lines
from reslstm.datasets.manifest import MANIFEST_SCHEMA, read_manifest
from reslstm.datasets.synthetic import (
    CLASS_PHASES,
    ORDER_PAIRS,
    PHASE_FRAMES,
    REST_FRAMES,
    SYNTHETIC_CLASSES,
    generate_synthetic,
    parse_size,
    render_video,
    sample_video_params,
    synthesize_video,
)

REPO = Path(__file__).resolve().parents[1]
SMALL = (48, 64)  # (height, width): tiny frames keep these tests fast
# The state each order pair ramps up and down, and the phase that raises it.
PAIR_STATE = {"grow_then_shrink": ("scale", "grow"), "rotate_cw_then_ccw": ("angle", "rotate_ccw"),
              "right_then_left": ("x", "move_right")}


def decode(path) -> tuple[np.ndarray, int]:
    """All frames (N, H, W, 3) and the frame count the container declares."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
        return frames, stream.frames


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between empirical distributions."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))))


def test_classes_and_order_pairs():
    assert len(SYNTHETIC_CLASSES) >= 8 and len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert len(ORDER_PAIRS) >= 2
    assert set(PAIR_STATE) == {a for a, _ in ORDER_PAIRS}
    for a, b in ORDER_PAIRS:
        assert a in SYNTHETIC_CLASSES and b in SYNTHETIC_CLASSES
        assert len(CLASS_PHASES[a]) == 2 and CLASS_PHASES[a][0] != CLASS_PHASES[a][1]
        assert tuple(CLASS_PHASES[a]) == tuple(reversed(CLASS_PHASES[b]))
    in_pairs = {c for pair in ORDER_PAIRS for c in pair}
    singles = [c for c in SYNTHETIC_CLASSES if c not in in_pairs]
    assert len({tuple(CLASS_PHASES[c]) for c in singles}) == len(singles) >= 3


@pytest.mark.parametrize("name", SYNTHETIC_CLASSES)
def test_phase_lengths_and_frame_counts(name):
    for index, size in [(i, s) for i in range(12) for s in ((96, 128), (112, 112), SMALL, (128, 96))]:
        p = sample_video_params(name, index, 0, *size)
        assert p.phases == CLASS_PHASES[name]
        assert sum(p.phase_frames) == p.num_frames
        lo, hi = PHASE_FRAMES
        if len(p.phases) == 1:
            assert 2 * lo <= p.num_frames <= 2 * hi
        else:
            a, m1, mid, m2, b = p.phase_frames
            assert REST_FRAMES[0] <= a <= REST_FRAMES[1] and REST_FRAMES[0] <= b <= REST_FRAMES[1]
            assert mid == a + b  # each end state is held a + b frames in both classes of a pair
            # a 16-frame clip every 8 frames sees each phase whole, and no clip holds both
            assert lo <= min(m1, m2) and max(m1, m2) <= hi and mid > 16
        for track in (p.x, p.y, p.scale, p.angle):
            assert track.shape == (p.num_frames,)
        # the shape stays inside the frame
        reach = 1.15 * p.scale
        assert (p.x - reach >= 0).all() and (p.x + reach <= p.width).all()
        assert (p.y - reach >= 0).all() and (p.y + reach <= p.height).all()


@pytest.mark.parametrize("a, b", ORDER_PAIRS)
def test_order_pair_has_same_per_frame_statistics(a, b):
    """Per-frame state (appearance) and per-frame change (motion) match; only the order differs."""
    state, rising = PAIR_STATE[a]
    stats = {}
    for name in (a, b):
        params = [sample_video_params(name, i) for i in range(400)]
        tracks = [getattr(p, state) for p in params]
        stats[name] = {
            "state": np.concatenate(tracks),
            "speed": np.concatenate([np.diff(t) for t in tracks]),
            "area": np.mean([np.mean(p.scale ** 2) for p in params]),  # shape area ~ radius^2
            "starts_low": np.mean([t[0] < t.mean() for t in tracks]),
        }
    assert ks_statistic(stats[a]["state"], stats[b]["state"]) < 0.05
    assert ks_statistic(stats[a]["speed"], stats[b]["speed"]) < 0.07
    assert stats[a]["area"] == pytest.approx(stats[b]["area"], rel=0.08)
    # ...and yet the order is what separates them: the class that rises first always starts low
    assert stats[a]["starts_low"] == float(CLASS_PHASES[a][0] == rising)
    assert stats[b]["starts_low"] == float(CLASS_PHASES[b][0] == rising)


def _clip_kinds(p, state: str, clip_len=16, stride=8):
    """What each 16-frame clip shows of the pair's state: the signs of its frame-to-frame
    changes in order, collapsed (e.g. (0, 1) = rest then rising)."""
    track = getattr(p, state)
    sign = np.sign(np.round(np.diff(track), 9)).astype(int)
    kinds = []
    for start in range(0, len(track) - clip_len + 1, stride):
        seq = sign[start:start + clip_len - 1]
        kinds.append(tuple(int(v) for i, v in enumerate(seq) if i == 0 or v != seq[i - 1]))
    return kinds


@pytest.mark.parametrize("a, b", ORDER_PAIRS)
def test_order_pair_clips_show_the_same_kinds_of_motion(a, b):
    """No clip holds both motions, and the kinds of clips (rest, motion, rest to motion, motion
    to rest) come with the same frequencies in both classes: only their order differs."""
    state, _ = PAIR_STATE[a]
    counts = {}
    for name in (a, b):
        kinds = [k for i in range(300) for k in _clip_kinds(sample_video_params(name, i), state)]
        assert not any(1 in k and -1 in k for k in kinds), "a clip shows both motions"
        values, n = np.unique(np.array([str(k) for k in kinds]), return_counts=True)
        counts[name] = dict(zip(values, n / n.sum()))
    assert set(counts[a]) == set(counts[b])
    for kind in counts[a]:
        assert counts[a][kind] == pytest.approx(counts[b][kind], abs=0.02), kind


def test_render_is_pure_and_seeded():
    frames = synthesize_video("zigzag", 3, seed=7, height=SMALL[0], width=SMALL[1])
    assert frames.dtype == np.uint8 and frames.shape[1:] == (*SMALL, 3)
    assert np.array_equal(frames, render_video(sample_video_params("zigzag", 3, 7, *SMALL)))
    other = synthesize_video("zigzag", 3, seed=8, height=SMALL[0], width=SMALL[1])
    assert other.shape != frames.shape or not np.array_equal(other, frames)
    changed = np.abs(np.diff(frames.astype(int), axis=0)).max(axis=(1, 2, 3))
    assert (changed > 20).all()  # the shape moves in every frame
    with pytest.raises(ValueError, match="unknown synthetic class 'spin'"):
        sample_video_params("spin", 0)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_a")
    with console_lines() as lines:
        manifest = generate_synthetic(out, videos_per_class=2, seed=5, size=SMALL, log_every=10)
    return manifest, lines


def test_generated_mp4s_decode_to_declared_frames(tiny_set):
    manifest, lines = tiny_set
    table = read_manifest(manifest)
    assert table.schema == MANIFEST_SCHEMA and table.num_rows == 2 * len(SYNTHETIC_CLASSES)
    meta = json.loads((manifest.parent / "synthetic.json").read_text())
    for row in table.to_pylist()[::2]:  # one video per class
        name, index = row["label_name"], int(row["video_id"].rsplit("_", 1)[1])
        assert SYNTHETIC_CLASSES[row["label"]] == name
        frames, declared = decode(row["path"])
        rendered = synthesize_video(name, index, seed=5, height=SMALL[0], width=SMALL[1])
        assert len(frames) == declared == len(rendered) == meta["num_frames"][row["video_id"]]
        assert frames.shape[1:] == (*SMALL, 3)
        # H.264 at crf 18 stays close to the rendered RGB (channels not swapped, no shift)
        assert np.abs(frames.astype(int) - rendered).mean() < 4
    with av.open(table.column("path")[0].as_py()) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
    # every class gets one train and one test video (stratified, a class keeps a train video)
    for name in SYNTHETIC_CLASSES:
        assert sorted(r["split"] for r in table.to_pylist() if r["label_name"] == name) == ["test", "train"]
    assert "[synth] 10/22 videos" in lines[0] and "22 videos, 11 classes" in lines[-1]


def test_same_seed_same_frames_whatever_the_workers(tiny_set, tmp_path):
    manifest_a, _ = tiny_set
    manifest_b = generate_synthetic(tmp_path, videos_per_class=2, seed=5, size=SMALL, workers=2)
    a, b = read_manifest(manifest_a), read_manifest(manifest_b)
    for column in ("video_id", "label", "label_name", "split"):
        assert a.column(column).equals(b.column(column))
    for path_a, path_b in zip(a.column("path").to_pylist(), b.column("path").to_pylist()):
        assert path_a != path_b
        assert np.array_equal(decode(path_a)[0], decode(path_b)[0])


def test_synth_job_prints_progress_and_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    sys.modules.pop("synth", None)
    import synth

    synth.main(["--out", str(tmp_path), "--videos-per-class", "1", "--seed", "1", "--size", "64x48",
                "--log-every", "4"])
    out = capsys.readouterr().out
    assert "[synth] 4/11 videos" in out and "splits {'train': 11, 'val': 0, 'test': 0}" in out
    assert str(tmp_path / "manifest.parquet") in out
    assert read_manifest(tmp_path / "manifest.parquet").num_rows == 11
    assert parse_size("128x96") == (96, 128)
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("128")
    with pytest.raises(ValueError, match="even"):
        generate_synthetic(tmp_path, size=(47, 64))
