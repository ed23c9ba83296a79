"""Clip geometry: padding (NumPy and torch), clip views and streaming segments, also of a
decoded video."""

import numpy as np
import pytest
import torch

from reslstm.video.clips import Segment, clip_view, iter_segments, pad_frames
from reslstm.video.decoding import iter_frames, read_frames
from test_video import colour_frames, write_video


def test_pad_frames_repeats_the_last_frame_for_arrays_and_tensors():
    frames = np.arange(3 * 2, dtype=np.uint8).reshape(3, 2)
    padded = pad_frames(frames, 5)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]])
    assert pad_frames(frames, 3) is frames  # long enough: unchanged
    t = pad_frames(torch.from_numpy(frames), 5)
    np.testing.assert_array_equal(t.numpy(), padded)
    with pytest.raises(ValueError, match="empty"):
        pad_frames(frames[:0], 4)



def counting(frames, log):
    for f in frames:
        log.append(1)
        yield f


@pytest.mark.parametrize("clip_len, stride, per_seg", [(16, 8, 4), (4, 2, 3), (3, 3, 2), (5, 1, 1),
                                                        (8, 4, 1), (2, 1, 7)])
def test_segments_concatenate_to_clip_view(clip_len, stride, per_seg):
    seg_len = (per_seg - 1) * stride + clip_len
    lengths = {1, stride, stride + 1, clip_len - 1, clip_len, clip_len + 1, seg_len - 1, seg_len,
               seg_len + 1, seg_len + stride - 1, seg_len + stride, 3 * seg_len + 5}
    for n in sorted(x for x in lengths if x > 0):
        frames = np.arange(n * 4 * 3 * 2, dtype=np.float32).reshape(n, 4, 3, 2)  # flow-like
        segs = list(iter_segments(iter(frames), clip_len, stride, per_seg))
        whole = clip_view(pad_frames(frames, clip_len), clip_len, stride)
        got = np.concatenate([clip_view(s.frames, clip_len, stride) for s in segs])
        np.testing.assert_array_equal(got, whole, err_msg=f"N={n}")
        assert [s.first_clip for s in segs] == [j * per_seg for j in range(len(segs))]
        assert [s.num_clips for s in segs] == [len(clip_view(s.frames, clip_len, stride)) for s in segs]
        assert [s.is_last for s in segs] == [False] * (len(segs) - 1) + [True]
        assert [s.total_frames for s in segs] == [None] * (len(segs) - 1) + [n]
        assert all(s.padded == (n < clip_len) for s in segs)
        for s in segs:
            assert s.frames.flags.c_contiguous
            if not s.padded:
                start = s.first_clip * stride
                np.testing.assert_array_equal(s.frames, frames[start:start + len(s.frames)])


def test_segments_exact_layout():
    frames = np.arange(20).reshape(20, 1, 1, 1)
    segs = list(iter_segments(frames, clip_len=4, stride=2, clips_per_segment=3))
    # K = (20 - 4) // 2 + 1 = 9 clips: [0..2] frames 0..7, [3..5] frames 6..13, [6..8] 12..19
    assert [(s.first_clip, s.num_clips, s.frames[:, 0, 0, 0].tolist()) for s in segs] == [
        (0, 3, list(range(0, 8))), (3, 3, list(range(6, 14))), (6, 3, list(range(12, 20)))]
    assert segs[-1] == Segment(6, segs[-1].frames, 3, is_last=True, padded=False, total_frames=20)


def test_segments_short_sequence_is_padded():
    frames = np.arange(3).reshape(3, 1, 1, 1).astype(np.uint8)
    (seg,) = iter_segments(frames, clip_len=8, stride=4, clips_per_segment=2)
    assert seg.padded and seg.is_last and seg.num_clips == 1 and seg.total_frames == 3
    assert seg.frames[:, 0, 0, 0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2]


def test_segments_look_ahead_is_one_stride():
    clip_len, stride, per_seg = 16, 8, 4
    seg_len = (per_seg - 1) * stride + clip_len
    consumed = []
    segs = iter_segments(counting(np.zeros((200, 2, 2, 3), np.uint8), consumed), clip_len, stride, per_seg)
    first = next(segs)
    assert len(first.frames) == seg_len and not first.is_last
    assert len(consumed) == seg_len + stride  # holds one segment + stride frames, not the video


def test_segments_errors():
    with pytest.raises(ValueError, match="no frames"):
        list(iter_segments(iter([]), 16, 8, 4))
    with pytest.raises(ValueError, match="positive"):
        list(iter_segments(np.zeros((20, 1, 1, 3)), 16, 0, 4))
    with pytest.raises(ValueError, match="shape"):
        list(iter_segments([np.zeros((2, 2, 3)), np.zeros((2, 3, 3))], 2, 1, 1))


def test_segments_from_decoded_video(tmp_path):
    path = write_video(tmp_path / "c.mp4", colour_frames(30))
    segs = list(iter_segments(iter_frames(path, size=(16, 16)), clip_len=8, stride=4, clips_per_segment=2))
    whole = clip_view(read_frames(path, size=(16, 16)), 8, 4)
    np.testing.assert_array_equal(np.concatenate([clip_view(s.frames, 8, 4) for s in segs]), whole)
    assert segs[-1].total_frames == 30
