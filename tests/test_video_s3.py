"""Videos read from S3 (the local moto server) by streaming: every good and bad kind of file
gives exactly what the same file gives on a local disk (frames, counts and info, or the same
``VideoDecodeError`` kind); a missing object, a prefix and refused credentials are typed too;
and decoding the start of a large object fetches only the start of it."""

import av
import numpy as np
import pytest

from reslstm import storage
from reslstm.video.decoding import VideoDecodeError, VideoReader, probe
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)
from test_video import colour_frames, noise_frames, packet_spans, write_audio_stream, write_video

BUCKET = "video-tests"


def _outcome(path, **kwargs):
    """('ok', frames, counts, info without its path) or ('error', kind)."""
    reader = VideoReader(path, **kwargs)
    try:
        frames = np.stack(list(reader))
    except VideoDecodeError as e:
        return ("error", e.kind)
    info = reader.info
    return ("ok", frames, (reader.decoded_frames, reader.declared_frames),
            (info.fps, info.num_frames, info.width, info.height, info.codec, info.rotation))


def _cases(tmp):
    """name -> local file: good ones of several kinds and every bad kind a file can be."""
    out = {
        "h264_moov_at_end": write_video(tmp / "a.mp4", noise_frames(20)),
        "faststart_audio": write_video(tmp / "b.mp4", colour_frames(12), audio=True,
                                       options={"movflags": "faststart"}),
        "rotated": write_video(tmp / "r.mp4", colour_frames(6, 48, 64), rotation=90),
        "mpeg4_avi": write_video(tmp / "c.avi", colour_frames(9), codec="mpeg4"),
    }
    full = out["h264_moov_at_end"].read_bytes()
    (tmp / "half.mp4").write_bytes(full[: len(full) // 2])
    out["truncated"] = tmp / "half.mp4"
    fs_video = write_video(tmp / "fs.mp4", noise_frames(40), codec="mpeg4",
                           options={"movflags": "faststart"})
    (tmp / "cut.mp4").write_bytes(fs_video.read_bytes()[:packet_spans(fs_video)[20][0]])
    out["too_few_frames"] = tmp / "cut.mp4"
    data = bytearray(write_video(tmp / "n.mp4", noise_frames(30),
                                 options={"movflags": "faststart"}).read_bytes())
    pos, size = packet_spans(tmp / "n.mp4")[15]
    data[pos:pos + size] = bytes(size)
    (tmp / "corrupt.mp4").write_bytes(bytes(data))
    out["corrupt"] = tmp / "corrupt.mp4"
    (tmp / "empty.mp4").write_bytes(b"")
    out["empty"] = tmp / "empty.mp4"
    (tmp / "text.mp4").write_bytes(b"this is a text file with a video name\n" * 20)
    out["not_a_video"] = tmp / "text.mp4"
    with av.open(str(tmp / "sound.m4a"), "w") as f:
        write_audio_stream(f)
    out["no_video_stream"] = tmp / "sound.m4a"
    return out


@pytest.fixture(scope="module")
def uploaded(s3_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videos")
    s3_server.bucket(BUCKET)
    cases = _cases(tmp)
    for name, path in cases.items():
        storage.resolve(s3_server.uri(BUCKET, f"v/{name}{path.suffix}")).write_bytes(path.read_bytes())
    return {name: (path, s3_server.uri(BUCKET, f"v/{name}{path.suffix}")) for name, path in cases.items()}


@pytest.mark.parametrize("name", ["h264_moov_at_end", "faststart_audio", "rotated", "mpeg4_avi",
                                  "truncated", "too_few_frames", "corrupt", "empty",
                                  "not_a_video", "no_video_stream"])
def test_an_object_decodes_exactly_as_the_same_file(uploaded, name):
    local, uri = uploaded[name]
    here, there = _outcome(local, short_side=32), _outcome(uri, short_side=32)
    assert here[0] == there[0]
    if here[0] == "error":
        assert there == here
        assert name == here[1] or name in ("truncated",) and here[1] == "truncated"
        return
    np.testing.assert_array_equal(there[1], here[1])
    assert there[2:] == here[2:]


def test_messages_name_the_object_without_secrets(uploaded, s3_server):
    _, uri = uploaded["truncated"]
    with pytest.raises(VideoDecodeError) as err:
        list(VideoReader(uri))
    assert str(err.value).startswith(f"s3://{BUCKET}/v/truncated.mp4: ")
    assert err.value.path == f"s3://{BUCKET}/v/truncated.mp4"
    assert s3_server.access_key not in str(err.value) and "127.0.0.1" not in str(err.value)
    assert probe(uploaded["rotated"][1]).path == f"s3://{BUCKET}/v/rotated.mp4"


def test_missing_prefix_and_refused_objects(uploaded, s3_server):
    for key, kind in (("v/nope.mp4", "missing"), ("v", "not_a_video"), ("nobucket/x.mp4", "missing")):
        uri = s3_server.uri(BUCKET, key) if not key.startswith("nobucket") else \
            s3_server.uri("no-such-bucket", "x.mp4")
        with pytest.raises(VideoDecodeError) as err:
            list(VideoReader(uri))
        assert err.value.kind == kind, (key, err.value)
    # Credentials the server refuses: a typed permission error, before any decoding.
    good = storage.resolve(uploaded["rotated"][1])
    wrong = storage.Location(s3_server.filesystem(secret_key="not-the-secret"), good.path, good.uri)
    with pytest.raises(VideoDecodeError) as err:
        list(VideoReader(wrong))
    assert err.value.kind == "permission"
    with pytest.raises(VideoDecodeError) as err:
        probe(wrong)
    assert err.value.kind == "permission"


def test_the_start_of_a_large_object_is_all_that_is_fetched(s3_server, tmp_path, monkeypatch):
    """Streaming, not downloading: the first frames of a faststart MP4 cost a few ranged
    reads, and a whole decode keeps at most the cache's few blocks in memory."""
    path = write_video(tmp_path / "big.mp4", noise_frames(60, 240, 320), options={"movflags": "faststart"})
    loc = storage.resolve(s3_server.uri(BUCKET, "big/big.mp4"))
    loc.write_bytes(path.read_bytes())
    size = loc.size()
    assert size > 1_500_000
    readers = []
    original = storage.Location.open_input

    def small_blocks(self, block_size=storage.READ_BLOCK, max_blocks=storage.READ_BLOCKS):
        readers.append(original(self, block_size=256 * 1024, max_blocks=2))
        return readers[-1]

    monkeypatch.setattr(storage.Location, "open_input", small_blocks)
    frames = iter(VideoReader(loc))
    for _ in range(3):
        next(frames)
    fetched = readers[-1].requests * 256 * 1024
    assert fetched < size / 4, (fetched, size)
    frames.close()
    reader = VideoReader(loc)
    assert sum(1 for _ in reader) == 60
    assert readers[-1].requests >= size // (256 * 1024) and readers[-1].closed
