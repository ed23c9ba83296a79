"""Where frames and clips sit in time (reslstm.video.timing): presentation timestamps of
variable-frame-rate files, a fixed --fps by timestamp, the clip spans extraction stores, and
stores written before those columns. Videos are written here with PyAV (irregular pts)."""

from fractions import Fraction

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import pytest

from predict_fixture import extract_config, payload
from reslstm import features as fs
from reslstm.checkpoint import model_from_payload
from reslstm.configs import ExtractConfig, PredictConfig
from reslstm.datasets.manifest import write_manifest
from reslstm.errors import ConfigError
from reslstm.extraction.driver import run_local
from reslstm.features.export import export_npy
from reslstm.inference.predictor import Predictor
from reslstm.video.decoding import VideoReader, read_frames
from reslstm.video.timing import FrameClock, clip_spans

VFR_MS = [0, 40, 100, 110, 200, 260, 300, 420, 430, 500]  # frame times in ms, irregular


def write_timed(path, pts, time_base, size=(48, 64), rate=25):
    """An MPEG-4 file whose frame i has presentation time pts[i] * time_base and a distinct
    flat grey level, so a decoded frame says which one it is (``rate``: the nominal rate, which
    sets how long the muxer records the last frame to last)."""
    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=rate)
    s.height, s.width = size
    s.pix_fmt = "yuv420p"
    s.codec_context.time_base = s.time_base = time_base
    for i, p in enumerate(pts):
        frame = av.VideoFrame.from_ndarray(np.full((*size, 3), (i * 23) % 256, np.uint8),
                                           format="rgb24")
        frame.pts, frame.time_base = p, time_base
        for pkt in s.encode(frame):
            c.mux(pkt)
    for pkt in s.encode():
        c.mux(pkt)
    c.close()
    return path


def feed_all(clock, starts, durations=None):
    out = []
    for i, t in enumerate(starts):
        d = None if durations is None else durations[i]
        out += list(clock.feed(i, Fraction(t), None if d is None else Fraction(d)))
    return out + list(clock.finish())


# ---------------------------------------------------------------------------------------------
# The clock, on numbers
# ---------------------------------------------------------------------------------------------

def test_without_a_rate_every_frame_keeps_its_own_time():
    clock = FrameClock()
    assert feed_all(clock, ["0", "0.04", "0.1"], [None, None, "0.05"]) == [0, 1, 2]
    assert list(clock.times) == [0.0, 0.04, 0.1] and list(clock.sources) == [0, 1, 2]
    assert clock.end_s == pytest.approx(0.15)  # the last frame's own duration


def test_the_last_frame_without_a_duration_lasts_the_last_gap_or_the_nominal_rate():
    clock = FrameClock()
    feed_all(clock, ["0", "0.04", "0.1"])
    assert clock.end_s == pytest.approx(0.16)  # 0.1 + the gap 0.06 before it
    clock = FrameClock(nominal_fps=20)
    feed_all(clock, ["0"])
    assert clock.end_s == pytest.approx(0.05)


def test_a_rate_picks_the_frame_on_screen_at_each_grid_time():
    # 60 fps resampled to 25: grid time j/25 shows frame floor(j * 60 / 25) = floor(2.4 j)
    clock = FrameClock(fps=25)
    out = feed_all(clock, [Fraction(i, 60) for i in range(60)], [Fraction(1, 60)] * 60)
    assert out == [int(np.floor(j * 2.4 + 1e-9)) for j in range(25)]
    assert out[:6] == [0, 2, 4, 7, 9, 12]
    assert list(clock.times) == pytest.approx([j / 25 for j in range(25)])
    assert clock.end_s == pytest.approx(1.0)
    assert not clock.upsampled()


def test_a_rate_above_the_videos_repeats_frames_and_says_so():
    clock = FrameClock(fps=25)
    out = feed_all(clock, [Fraction(i, 10) for i in range(4)], [Fraction(1, 10)] * 4)
    # 10 fps to 25: grid 0, .04, .08 -> 0; .12, .16 -> 1; .2, .24, .28 -> 2; .32, .36 -> 3
    assert out == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert clock.upsampled()


def test_the_grid_starts_at_the_first_frame_and_rates_are_exact():
    clock = FrameClock(fps=29.97)
    feed_all(clock, [Fraction(1, 2) + Fraction(i * 1001, 30000) for i in range(30)])
    assert clock.fps == Fraction(2997, 100)
    assert clock.times[0] == 0.5 and len(clock.times) == 30  # 29.97 on 29.97: every frame once
    assert list(clock.sources) == list(range(30))


@pytest.mark.parametrize("bad", [0, -1, -0.5])
def test_a_rate_of_zero_or_less_is_refused(bad):
    with pytest.raises(ValueError, match="above 0"):
        FrameClock(fps=bad)
    with pytest.raises(ConfigError, match="fps"):
        ExtractConfig(manifest="m.parquet", out="o", fps=bad)


def test_clip_spans_by_hand():
    clock = FrameClock()
    feed_all(clock, ["0", "0.1", "0.25", "0.3", "0.4", "0.5"], [None] * 5 + ["0.1"])
    first, last, start, end = clip_spans(clock, 0, 2, clip_len=3, stride=2)
    assert (first, last) == ([0, 2], [2, 4])
    assert start == [0.0, 0.25] and end == [0.3, 0.5]  # the end of the last frame: the next's start
    assert clip_spans(clock, 1, 1, 3, 2)[3] == [0.5]
    # A padded clip (a sequence shorter than one clip) covers every frame there is.
    assert clip_spans(clock, 0, 1, clip_len=16, stride=8, padded=True) == ([0], [5], [0.0], [0.6])
    with pytest.raises(ValueError, match="only 6 frames"):
        clip_spans(clock, 2, 1, clip_len=3, stride=2)


# ---------------------------------------------------------------------------------------------
# Real files
# ---------------------------------------------------------------------------------------------

def test_a_variable_frame_rate_file_keeps_its_presentation_times(tmp_path):
    path = write_timed(tmp_path / "vfr.mp4", VFR_MS, Fraction(1, 1000))
    reader = VideoReader(path)
    frames = list(reader)
    assert len(frames) == 10
    assert list(reader.clock.times) == pytest.approx([t / 1000 for t in VFR_MS])
    # Resampled to 25 fps: the frame on screen at 0, 40, 80, ... 520 ms, worked out by hand.
    picked = read_frames(path, fps=25)
    want = [0, 1, 1, 3, 3, 4, 4, 5, 6, 6, 6, 8, 8, 9]
    assert len(picked) == len(want)
    for got, i in zip(picked, want):
        assert np.array_equal(got, frames[i])


def test_a_60_fps_file_resampled_to_25_takes_the_frames_a_hand_calculation_picks(tmp_path):
    path = write_timed(tmp_path / "sixty.mp4", list(range(60)), Fraction(1, 60), rate=60)
    frames = read_frames(path)
    reader = VideoReader(path, fps=25)
    picked = list(reader)
    want = [0, 2, 4, 7, 9, 12, 14, 16, 19, 21, 24, 26, 28, 31, 33, 36, 38, 40, 43, 45, 48, 50,
            52, 55, 57]  # floor(2.4 j)
    assert list(reader.clock.sources) == want
    assert all(np.array_equal(a, frames[i]) for a, i in zip(picked, want))
    assert reader.decoded_frames == 60


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vfr_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("vfr")
    # 40 frames at irregular times: 20 ms apart, then 60 ms apart from frame 20 on
    pts = [20 * i if i < 20 else 400 + 60 * (i - 20) for i in range(40)]
    path = write_timed(root / "vfr.mp4", pts, Fraction(1, 1000), size=(72, 96))
    write_manifest(pa.table({"video_id": ["v"], "path": [str(path)], "label": [0],
                             "label_name": ["a"], "split": ["train"]}), root / "m.parquet")
    return root / "m.parquet", pts


def last_end(manifest) -> float:
    """When the last frame of the test video ends, as the container says (PyAV, directly)."""
    with av.open(row_path(manifest[0])) as c:
        last = list(c.decode(video=0))[-1]
        return float((last.pts + last.duration) * last.time_base)


def test_extraction_stores_each_clips_frames_and_seconds(tmp_path, vfr_manifest):
    manifest, pts = vfr_manifest
    run_local(extract_config(manifest=str(manifest), out=str(tmp_path / "s"), streams=("rgb", "flow")))
    for stream, clip_len in (("rgb", 16), ("flow", 17)):  # a flow clip reads one more RGB frame
        (row,) = fs.read_stream(tmp_path / "s", stream).to_pylist()
        k = row["num_clips"]
        assert row["first_frame"] == [8 * i for i in range(k)]
        assert row["last_frame"] == [8 * i + clip_len - 1 for i in range(k)]
        assert row["start_s"] == pytest.approx([pts[8 * i] / 1000 for i in range(k)])
        times = [p / 1000 for p in pts] + [last_end(vfr_manifest)]
        ends = [times[8 * i + clip_len] for i in range(k)]  # the next frame's time, or the end
        assert row["end_s"] == pytest.approx(ends)
    assert fs.verify_store(tmp_path / "s").ok


def test_a_fixed_rate_is_recorded_and_a_store_is_never_extended_at_another(tmp_path, vfr_manifest):
    manifest, pts = vfr_manifest
    out = str(tmp_path / "s")
    run_local(extract_config(manifest=str(manifest), out=out, streams=("rgb",), fps=25))
    assert fs.read_metadata(out)["rgb"].fps == 25.0
    (row,) = fs.read_stream(out, "rgb").to_pylist()
    # 0.4 s at 50 fps then 1.2 s at ~16.7 fps (+ the last frame's 60 ms): 40 frames at 25 fps
    assert row["num_frames"] == 40 and row["fps"] == 25.0
    assert row["start_s"][:3] == pytest.approx([0.0, 0.32, 0.64])
    assert row["end_s"][0] == pytest.approx(0.64)  # 16 grid frames of 40 ms
    assert "frames repeat" in row["warning"]  # ~16.7 fps stretches resampled at 25
    with pytest.raises(fs.StoreError, match="fps: store has 25.0, requested 30.0"):
        run_local(extract_config(manifest=str(manifest), out=out, streams=("rgb",), fps=30))
    with pytest.raises(fs.StoreError, match="fps: store has 25.0, requested None"):
        run_local(extract_config(manifest=str(manifest), out=out, streams=("rgb",)))


def test_stores_written_before_the_span_columns_keep_working(tmp_path, vfr_manifest):
    manifest, _ = vfr_manifest
    out = tmp_path / "s"
    run_local(extract_config(manifest=str(manifest), out=str(out), streams=("rgb",)))
    new = fs.read_stream(out, "rgb")
    # An old part file: the same row without the span columns, written first (an older name).
    old = new.select([c for c in new.column_names if c not in fs.SPAN_COLUMNS])
    old = old.set_column(0, "video_id", pa.array(["old"]))
    fs.write_part(out / "rgb", old, name="part-00000000000000000000-old.parquet")
    table = fs.read_stream(out, "rgb")
    assert table.num_rows == 2 and fs.span_columns(table.schema) == list(fs.SPAN_COLUMNS)
    by_id = {r["video_id"]: r for r in table.to_pylist()}
    assert by_id["old"]["start_s"] is None and by_id["v"]["start_s"][0] == 0.0
    assert fs.read_index(out, ["rgb"]).count("train") == 2
    assert fs.verify_store(out).ok
    summary = export_npy(out, tmp_path / "npy")
    assert summary.arrays == {"rgb": 2}
    lines = (tmp_path / "npy" / "clips.csv").read_text().splitlines()
    assert lines[0] == "video_id,stream,clip,first_frame,last_frame,start_s,end_s"
    assert len(lines) == 1 + new.column("num_clips")[0].as_py()  # the new row's clips only
    assert all(line.startswith("v,rgb,") for line in lines[1:])


def test_a_model_records_the_rate_and_prediction_resamples_the_same_way(tmp_path, vfr_manifest):
    manifest, _ = vfr_manifest
    extract = extract_config(manifest=str(manifest), out=str(tmp_path / "s"), streams=("rgb",),
                             fps=12.5)
    run_local(extract)
    doc = payload("rgb", extract=extract)
    assert doc["features"]["rgb"]["fps"] == 12.5
    predictor = Predictor(model_from_payload(doc), doc, PredictConfig(model="unused"))
    assert predictor.stage.fps == 12.5
    (row,) = fs.read_stream(tmp_path / "s", "rgb").to_pylist()
    joined = predictor.joined(row_path(manifest))["rgb"]
    assert np.array_equal(joined.features, np.asarray(row["features"], np.float32))
    assert joined.spans["start_s"].tolist() == row["start_s"]


def row_path(manifest) -> str:
    return pa.parquet.read_table(manifest).column("path")[0].as_py()


def test_exports_carry_the_clip_spans(tmp_path, vfr_manifest):
    h5py = pytest.importorskip("h5py", reason="h5py is the optional extra hdf5")
    from reslstm.features.export import export_hdf5

    manifest, _ = vfr_manifest
    out = tmp_path / "s"
    run_local(extract_config(manifest=str(manifest), out=str(out), streams=("rgb",)))
    (row,) = fs.read_stream(out, "rgb").to_pylist()
    export_hdf5(out, tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5") as f:
        group = f["videos"]["v"]
        assert group["rgb_frames"][:].tolist() == [list(p) for p in zip(row["first_frame"],
                                                                          row["last_frame"])]
        assert group["rgb_seconds"][:].tolist() == [list(p) for p in zip(row["start_s"],
                                                                           row["end_s"])]
    export_npy(out, tmp_path / "npy")
    lines = (tmp_path / "npy" / "clips.csv").read_text().splitlines()[1:]
    assert [float(line.split(",")[5]) for line in lines] == row["start_s"]
