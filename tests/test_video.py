"""Decoding (sizes, colours, rotation, every bad-input kind).

Test videos are written with PyAV into tmp_path so these run on a plain clone; the real videos
beside the repository are reached only through the ``shared_videos`` fixture.
"""

import os
import tracemalloc
import types

import av
import numpy as np
import pytest

from conftest import SHARED_VIDEO_FRAMES
from reslstm.video import decoding as video
from reslstm.video.decoding import (
    VideoDecodeError,
    VideoInfo,
    VideoReader,
    iter_frames,
    output_size,
    probe,
    read_frames,
)

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


def write_video(path, frames, codec="libx264", rate=25, options=None, rotation=None, audio=False):
    """Encode uint8 RGB frames (N, H, W, 3) into ``path`` with PyAV."""
    n, h, w, _ = frames.shape
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.max_b_frames = 0  # one packet = one frame, in order
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if audio:
            write_audio_stream(out)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_audio_stream(out, packets=8):
    stream = out.add_stream("aac", rate=16000)
    for i in range(packets):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = 16000, i * 1024
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def colour_frames(n, h=48, w=64):
    """Solid colours cycling red, green, blue, yellow: survive yuv420p almost exactly."""
    return np.broadcast_to(COLOURS[np.arange(n) % 4][:, None, None, :], (n, h, w, 3)).copy()


def noise_frames(n, h=48, w=64):
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def packet_spans(path):
    """(file offset, size) of every video packet, in file order."""
    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]


def expect_error(path, kind, **kwargs):
    with pytest.raises(VideoDecodeError) as info:
        read_frames(path, **kwargs)
    err = info.value
    assert err.kind == kind, str(err)
    assert err.path == str(path)
    assert str(path) in str(err)
    return err


# ---------------------------------------------------------------------------------------------
# Real videos
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SHARED_VIDEO_FRAMES))
def test_shared_video_exact_frame_count(shared_videos, name):
    path = shared_videos / name
    info = probe(path)
    reader = VideoReader(path)
    frames = np.stack(list(reader))
    assert reader.info == info  # filled while decoding, same as probe
    assert VideoReader(path).info == info  # probed on demand before iterating
    assert frames.shape == (SHARED_VIDEO_FRAMES[name], info.height, info.width, 3)
    assert frames.dtype == np.uint8
    assert reader.decoded_frames == reader.declared_frames == SHARED_VIDEO_FRAMES[name]
    small = read_frames(path, short_side=128)
    long_side = int(round(max(info.width, info.height) * 128 / min(info.width, info.height)))
    assert small.shape == (SHARED_VIDEO_FRAMES[name], 128, long_side, 3)
    # Resizing in swscale keeps the picture: compare against a naive downscale of the original.
    naive = frames[:, ::2, ::2].astype(np.float32).mean()
    assert abs(small.astype(np.float32).mean() - naive) < 3.0


def test_shared_video_probe(shared_videos):
    info = probe(shared_videos / "kinetics_demo_340x256.mp4")
    assert info == VideoInfo(path=str(shared_videos / "kinetics_demo_340x256.mp4"), fps=28.0,
                             num_frames=280, width=340, height=256, codec="h264",
                             duration_s=10.0, rotation=0)
    avi = probe(shared_videos / "xvid_mp3_320x240.avi")  # audio stream alongside: ignored
    assert (avi.codec, avi.width, avi.height, avi.fps, avi.num_frames) == ("mpeg4", 320, 240, 25.0, 164)
    odd = probe(shared_videos / "activitynet_320x240_audio.mp4")
    assert odd.fps == pytest.approx(19.62) and odd.num_frames == 355
    assert odd.duration_s == pytest.approx(355 / 19.62, abs=0.1)


# ---------------------------------------------------------------------------------------------
# Generated videos: sizes, colours, rotation, streaming
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_decode_colours_and_count(tmp_path, codec):
    path = write_video(tmp_path / "c.mp4", colour_frames(12), codec=codec)
    frames = read_frames(path)
    assert frames.shape == (12, 48, 64, 3) and frames.dtype == np.uint8
    # RGB channel order and frame order: frame i is solid COLOURS[i % 4].
    centre = frames[:, 8:-8, 8:-8].reshape(12, -1, 3).mean(axis=1)
    np.testing.assert_allclose(centre, COLOURS[np.arange(12) % 4], atol=8)


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (48, 64)),
    ({"short_side": 24}, (24, 32)),
    ({"short_side": 100}, (100, 133)),  # upscaling, long side 64 * 100 / 48 = 133.3 rounded
    ({"size": (32, 40)}, (32, 40)),
    ({"size": (17, 23)}, (17, 23)),  # odd sizes are fine in rgb24
])
def test_resize_shapes(tmp_path, kwargs, shape):
    path = write_video(tmp_path / "c.mp4", colour_frames(5))
    frames = read_frames(path, **kwargs)
    assert frames.shape == (5,) + shape + (3,)
    centre = frames[:, shape[0] // 4:-(shape[0] // 4), shape[1] // 4:-(shape[1] // 4)]
    np.testing.assert_allclose(centre.reshape(5, -1, 3).mean(1), COLOURS[np.arange(5) % 4], atol=8)


def test_output_size_portrait_and_errors(tmp_path):
    assert output_size(640, 360, short_side=180) == (320, 180)
    assert output_size(360, 640, short_side=180) == (180, 320)
    assert output_size(360, 640, size=(10, 20)) == (10, 20)
    path = write_video(tmp_path / "c.mp4", colour_frames(2))
    with pytest.raises(ValueError, match="not both"):
        read_frames(path, short_side=10, size=(10, 10))
    with pytest.raises(ValueError, match="min_frame_ratio"):
        read_frames(path, min_frame_ratio=1.5)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_display_rotation_is_applied(tmp_path, rotation):
    frames = np.zeros((6, 48, 64, 3), np.uint8)
    frames[:, :16, :24] = 255  # a white block in the stored top-left corner
    path = write_video(tmp_path / "r.mp4", frames, rotation=rotation)
    info = probe(path)
    k = rotation // 90 % 4
    expected = np.rot90(frames[0], k=k)  # display rotation is counter-clockwise
    assert info.rotation == k * 90
    assert (info.height, info.width) == expected.shape[:2]
    out = read_frames(path)
    assert out.shape == (6,) + expected.shape
    assert out.flags.c_contiguous
    assert np.abs(out[0].astype(int) - expected).mean() < 6
    # Sizes are upright: size=(h, w) is the output shape whatever the stored orientation.
    assert read_frames(path, size=(20, 30)).shape == (6, 20, 30, 3)
    short = read_frames(path, short_side=24)
    assert min(short.shape[1:3]) == 24 and (short.shape[1] > short.shape[2]) == (k % 2 == 1)


def test_iter_frames_streams(tmp_path):
    path = write_video(tmp_path / "n.mp4", noise_frames(40, 120, 160))
    assert isinstance(iter_frames(path), types.GeneratorType)
    reader = VideoReader(path)
    it = iter(reader)
    next(it)
    assert reader.decoded_frames == 1  # yields the first frame before decoding the rest
    it.close()

    frame_bytes = 120 * 160 * 3
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_frames(path))
        _, streaming_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_frames(path)
        _, array_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 40
    assert streaming_peak < 5 * frame_bytes  # a frame or two at a time, not the video
    assert array_peak > 40 * frame_bytes


def test_undeclared_frame_count(tmp_path):
    # Matroska declares no frame count: probe says 0, the count check is off, all frames come out.
    path = write_video(tmp_path / "c.mkv", colour_frames(9))
    assert probe(path).num_frames == 0
    reader = VideoReader(path)
    assert len(list(reader)) == 9 and (reader.decoded_frames, reader.declared_frames) == (9, 0)
    frames = read_frames(path)
    assert frames.shape == (9, 48, 64, 3)
    np.testing.assert_allclose(frames[:, 8:-8, 8:-8].reshape(9, -1, 3).mean(1),
                               COLOURS[np.arange(9) % 4], atol=8)


def test_audio_streams_are_ignored(tmp_path):
    path = write_video(tmp_path / "av.mp4", colour_frames(10), audio=True)
    info = probe(path)
    assert info.num_frames == 10 and info.codec == "h264"
    assert read_frames(path).shape == (10, 48, 64, 3)


# ---------------------------------------------------------------------------------------------
# Bad inputs: every kind of VideoDecodeError
# ---------------------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    err = expect_error(tmp_path / "nope.mp4", "missing")
    assert "no such file" in str(err)
    with pytest.raises(VideoDecodeError) as info:
        probe(tmp_path / "nope.mp4")
    assert info.value.kind == "missing"


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    assert "0 bytes" in str(expect_error(path, "empty"))


@pytest.mark.parametrize("content", [
    np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    b"this is a text file with a video name\n" * 20,
])
def test_not_a_video(tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    expect_error(path, "not_a_video")
    expect_error(tmp_path, "not_a_video")  # a directory


def test_audio_only_file(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as out:
        write_audio_stream(out)
    err = expect_error(path, "no_video_stream")
    assert "audio" in str(err)


def test_truncated_mp4_moov_at_end(tmp_path):
    full = write_video(tmp_path / "full.mp4", noise_frames(20)).read_bytes()
    assert full[4:8] == b"ftyp" and full.find(b"moov") > full.find(b"mdat")  # index at the end
    path = tmp_path / "half.mp4"
    path.write_bytes(full[: len(full) // 2])  # av.open raises InvalidDataError: no moov atom
    assert "truncated" in str(expect_error(path, "truncated"))


def test_unreadable_file(tmp_path):
    path = write_video(tmp_path / "locked.mp4", colour_frames(3))
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user (root) who can read a chmod 000 file")
        assert "chmod" in str(expect_error(path, "permission"))
    finally:
        path.chmod(0o644)


def test_permission_error_from_pyav_is_mapped(tmp_path, monkeypatch):
    # As root a chmod 000 file stays readable: check the mapping of PyAV's own error too.
    path = write_video(tmp_path / "locked.mp4", colour_frames(3))

    def refuse(*args, **kwargs):
        raise av.error.PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(video.av, "open", refuse)
    expect_error(path, "permission")


def test_corrupt_packet_mid_stream(tmp_path):
    path = write_video(tmp_path / "n.mp4", noise_frames(30), options={"movflags": "faststart"})
    spans = packet_spans(path)
    data = bytearray(path.read_bytes())
    pos, size = spans[15]
    data[pos:pos + size] = bytes(size)  # zero one whole packet in the middle
    path.write_bytes(bytes(data))
    got = []
    with pytest.raises(VideoDecodeError) as info:
        for frame in iter_frames(path):
            got.append(frame)
    assert info.value.kind == "corrupt"
    assert f"at frame {len(got)}" in str(info.value)
    assert 0 < len(got) <= 15  # frames before the damage came out first (streaming)


def test_too_few_frames_when_index_is_at_the_front(tmp_path):
    # With the index at the front (faststart) a cut file still opens and declares every frame;
    # cut on a packet boundary, decoding ends cleanly after the surviving packets.
    path = write_video(tmp_path / "fs.mp4", noise_frames(40), codec="mpeg4",
                       options={"movflags": "faststart"})
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:packet_spans(path)[20][0]])
    assert probe(cut).num_frames == 40
    err = expect_error(cut, "too_few_frames")
    assert "decoded 20 frames" in str(err) and "declares 40" in str(err)

    reader = VideoReader(cut, min_frame_ratio=0.5)  # accepted; the caller can warn
    assert len(list(reader)) == 20
    assert (reader.decoded_frames, reader.declared_frames) == (20, 40)
    assert len(read_frames(cut, min_frame_ratio=None)) == 20


def test_no_decodable_frame(tmp_path):
    path = write_video(tmp_path / "fs.mp4", noise_frames(10), codec="mpeg4",
                       options={"movflags": "faststart"})
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[:packet_spans(path)[0][0]])  # header only
    err = expect_error(cut, "too_few_frames", min_frame_ratio=None)
    assert "no frame" in str(err)
