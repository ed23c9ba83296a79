"""Clip counts K_v, clip starts and the temporal sampling sigma(t), against hand-computed values."""

import numpy as np
import pytest

from reslstm.sampling import clip_starts, num_clips, sample_pair, sample_video, temporal_sample


@pytest.mark.parametrize(
    "frames, expected",
    [
        (16, 1),   # exactly one clip
        (17, 1),   # (17 - 16) // 8 + 1
        (23, 1),   # one frame short of a second clip
        (24, 2),   # frames 8..23 form the second clip
        (32, 3),   # = 32 // 8 - 1 (s = 2r)
        (100, 11), # (100 - 16) // 8 + 1 = 10 + 1
    ],
)
def test_num_clips_paper_setting(frames, expected):
    assert num_clips(frames, 16, 8) == expected
    assert num_clips(frames) == expected  # defaults are s = 16, r = 8


@pytest.mark.parametrize("frames, expected", [(10, 1), (12, 1), (13, 2), (15, 2), (24, 5), (25, 6)])
def test_num_clips_other_window(frames, expected):
    # s = 10, r = 3: K = (l - 10) // 3 + 1
    assert num_clips(frames, clip_len=10, stride=3) == expected


def test_clip_starts_are_multiples_of_the_stride_and_fit_in_the_video():
    np.testing.assert_array_equal(clip_starts(100), np.arange(11) * 8)
    np.testing.assert_array_equal(clip_starts(24), [0, 8])  # defaults s = 16, r = 8
    starts = clip_starts(26, clip_len=10, stride=3)
    np.testing.assert_array_equal(starts, [0, 3, 6, 9, 12, 15])
    assert starts.dtype == np.int64
    assert starts[-1] + 10 <= 26  # the last clip ends inside the video
    assert starts[-1] + 3 + 10 > 26  # and one more would not fit


@pytest.mark.parametrize("frames", [1, 5, 15])
def test_short_video_gives_one_clip(frames):
    assert num_clips(frames) == 1
    np.testing.assert_array_equal(clip_starts(frames), [0])


@pytest.mark.parametrize("frames", [0, -3])
def test_no_frames_is_an_error_naming_the_count(frames):
    """The message names the frame count and tells the caller what to check (the decoding)."""
    with pytest.raises(ValueError, match=f"{frames} frames"):
        num_clips(frames)
    with pytest.raises(ValueError, match=f"{frames} frames"):
        clip_starts(frames)
    with pytest.raises(ValueError) as err:
        num_clips(frames)
    assert str(err.value) == (
        f"a video with {frames} frames has no clips; "
        "check that the video decodes (at least one frame is needed)"
    )


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="stride"):
        num_clips(32, 16, 0)
    with pytest.raises(ValueError, match="clip_len"):
        num_clips(32, 0, 8)
    with pytest.raises(TypeError, match=r"^num_frames must be an integer, got 32\.0$"):
        num_clips(32.0)
    with pytest.raises(TypeError):
        num_clips(True)
    with pytest.raises(TypeError, match=r"^stride must be an integer, got 8\.0 \(float\)$"):
        num_clips(32, 16, 8.0)
    with pytest.raises(TypeError, match=r"^clip_len must be an integer, got True \(bool\)$"):
        num_clips(32, True, 8)
    assert num_clips(5, clip_len=1, stride=1) == 5  # the smallest window: every frame a clip


@pytest.mark.parametrize(
    "k, T, expected",
    [
        # K_v < T: sigma - 1 = floor((t-1) * 2 / 4) for t = 1..5 -> 0, 0, 1, 1, 2 (repeats)
        (3, 5, [0, 0, 1, 1, 2]),
        # floor((t-1) * 1 / 3): 0, 0, 0, 1
        (2, 4, [0, 0, 0, 1]),
        # K_v == T: identity
        (4, 4, [0, 1, 2, 3]),
        # K_v > T: floor((t-1) * 9 / 3) -> 0, 3, 6, 9
        (10, 4, [0, 3, 6, 9]),
        # floor((t-1) * 10 / 4): 0, 2 (2.5), 5, 7 (7.5), 10
        (11, 5, [0, 2, 5, 7, 10]),
        # a single clip repeated T times
        (1, 3, [0, 0, 0]),
        # T = 2: the first and the last clip
        (5, 2, [0, 4]),
        # T = 1 takes the first clip
        (7, 1, [0]),
        (1, 1, [0]),
    ],
)
def test_temporal_sample_by_hand(k, T, expected):
    got = temporal_sample(k, T)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_temporal_sample_paper_sizes_span_first_to_last_clip():
    idx = temporal_sample(35, 25)  # UCF-101 T = 25 ... 35 clips
    assert idx[0] == 0 and idx[-1] == 34
    assert np.all(np.diff(idx) >= 1)  # K_v > T: no repeats, increasing
    # 1-based sigma(t) of the paper, t = 1..T, written with floats, matches
    t = np.arange(1, 26)
    np.testing.assert_array_equal(idx + 1, 1 + np.floor((t - 1) * 34 / 24).astype(int))


@pytest.mark.parametrize(
    "k, T, message",
    [
        (0, 5, r"^num_clips \(K_v\) must be >= 1, got 0$"),
        (3, 0, r"^T must be >= 1, got 0$"),
        (-1, 2, r"^num_clips \(K_v\) must be >= 1, got -1$"),
    ],
)
def test_temporal_sample_validates(k, T, message):
    """The error names the argument in the paper's terms (K_v, T), the bound 1 and the value."""
    with pytest.raises(ValueError, match=message):
        temporal_sample(k, T)


@pytest.mark.parametrize(
    "k, T, message",
    [
        (5.0, 3, r"^num_clips \(K_v\) must be an integer, got 5\.0 \(float\)$"),
        (5, 2.5, r"^T must be an integer, got 2\.5 \(float\)$"),
        (True, 3, r"^num_clips \(K_v\) must be an integer, got True \(bool\)$"),
        (5, np.float64(3), r"^T must be an integer, got .*3\.0.* \(float64\)$"),
    ],
)
def test_temporal_sample_needs_integers(k, T, message):
    """A float or bool K_v or T is refused with a message naming the argument and the type."""
    with pytest.raises(TypeError, match=message):
        temporal_sample(k, T)
    assert temporal_sample(np.int64(5), np.int32(3)).tolist() == [0, 2, 4]  # NumPy ints are fine


def test_sample_video_takes_sigma_rows():
    clips = np.arange(10, dtype=np.float32).reshape(5, 2)  # clip k = [2k, 2k + 1]
    out = sample_video(clips, 3)
    # sigma(t) - 1 = floor((t - 1) * 4 / 2) = 0, 2, 4
    np.testing.assert_array_equal(out, [[0, 1], [4, 5], [8, 9]])
    # K < T repeats clips: K = 2, T = 4 -> floor(t * 1 / 3) = 0, 0, 0, 1
    np.testing.assert_array_equal(sample_video(clips[:2], 4), [[0, 1]] * 3 + [[2, 3]])


def test_sample_pair_truncates_to_the_shorter_stream_before_sampling():
    rgb = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # K = 5
    flow = -np.arange(4, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # K = 4
    r, f = sample_pair(rgb, flow, 3)
    # both cut to 4 clips: sigma - 1 = floor((t - 1) * 3 / 2) = 0, 1, 3 (not 0, 2, 4 of K = 5)
    np.testing.assert_array_equal(r[:, 0], [0, 1, 3])
    np.testing.assert_array_equal(f[:, 0], [0, -1, -3])
