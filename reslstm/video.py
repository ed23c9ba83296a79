"""Video decoding with PyAV, clip views, streaming segments and crops.

Decoding (``VideoReader``, ``iter_frames``, ``read_frames``, ``probe``) streams uint8 RGB frames
resized in the same swscale pass as the colour conversion, turned upright when the stream
carries a display rotation, and raises one typed ``VideoDecodeError`` for every way a file can
be unreadable. Clip views cut the clips of ``sampling.clip_starts`` out of a frame array without
copying; ``iter_segments`` streams any frame sequence into segments of whole clips with bounded
memory; the crop helpers cut the centre crop and the 10 crops of eq. (5) (4 corners + centre,
and their horizontal mirrors) as slices of arrays or tensors whose last two dimensions are (H, W).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# ---------------------------------------------------------------------------------------------
# Errors and probing
# ---------------------------------------------------------------------------------------------

ERROR_KINDS = ("missing", "permission", "empty", "not_a_video", "no_video_stream", "truncated",
               "corrupt", "too_few_frames")

# Leading bytes of containers we can name. A file that starts like one of these but that FFmpeg
# cannot open has lost its index (an MP4 whose moov atom sat at the end, an AVI cut inside its
# header): "truncated" tells the user to fetch it again rather than to drop a non-video.
_SIGNATURES = (
    (4, (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"), "MP4/MOV"),
    (0, (b"RIFF",), "AVI"),
    (0, (b"\x1a\x45\xdf\xa3",), "Matroska/WebM"),
    (0, (b"FLV",), "FLV"),
    (0, (b"OggS",), "Ogg"),
    (0, (b"\x30\x26\xb2\x75",), "ASF/WMV"),
    (0, (b"\x00\x00\x01\xba",), "MPEG-PS"),
)


class VideoDecodeError(Exception):
    """A video that cannot be decoded. ``kind`` is one of ``ERROR_KINDS``; the message names
    the file, what is wrong and what to do."""

    def __init__(self, path, kind: str, message: str):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown VideoDecodeError kind {kind!r}; expected one of {ERROR_KINDS}")
        self.path = os.fspath(path)
        self.kind = kind
        super().__init__(f"{self.path}: {message}")


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about its first video stream. ``num_frames`` is the declared
    count (0 when the container does not say, e.g. Matroska); ``width`` x ``height`` is the
    upright size, after ``rotation`` (degrees counter-clockwise, a multiple of 90)."""

    path: str
    fps: float
    num_frames: int
    width: int
    height: int
    codec: str
    duration_s: float
    rotation: int


def _container_kind(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(189)
    except OSError:
        return None
    for offset, magics, name in _SIGNATURES:
        if any(head[offset:offset + len(m)] == m for m in magics):
            return name
    if len(head) == 189 and head[0] == head[188] == 0x47:  # two 188-byte packets' sync bytes
        return "MPEG-TS"
    return None


def _open(path: str) -> av.container.InputContainer:
    """``av.open`` with every failure mapped to a VideoDecodeError kind."""
    if not os.path.lexists(path):
        raise VideoDecodeError(path, "missing", "no such file. Check the path and the video root "
                               "the manifest was built with.")
    if os.path.isdir(path):
        raise VideoDecodeError(path, "not_a_video", "is a directory, not a video file. Point the "
                               "manifest at the video files inside it.")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise VideoDecodeError(path, "missing", f"cannot stat the file ({e}); it may be a broken "
                               "link. Check the path.") from e
    if size == 0:
        raise VideoDecodeError(path, "empty", "the file is empty (0 bytes); the download or copy "
                               "probably failed. Fetch the video again.")
    try:
        return av.open(path, metadata_errors="ignore")
    except PermissionError as e:  # av.error.PermissionError subclasses the builtin
        raise VideoDecodeError(path, "permission", f"permission denied ({e.strerror}). Make the "
                               "file readable by this user (chmod a+r) or run as one that can.") from e
    except FileNotFoundError as e:
        raise VideoDecodeError(path, "missing", f"no such file ({e.strerror}). Check the path.") from e
    except av.error.InvalidDataError as e:
        fmt = _container_kind(path)
        if fmt is not None:
            raise VideoDecodeError(
                path, "truncated", f"starts like a {fmt} file but FFmpeg cannot read its header or "
                f"index ({e.strerror}); the file is probably truncated (an MP4 whose moov atom was "
                "at the end and got cut off). Download or copy it again.") from e
        raise VideoDecodeError(path, "not_a_video", f"not a video file FFmpeg can read "
                               f"({e.strerror}). Replace it with the real video or drop it "
                               "from the manifest.") from e
    except (av.error.FFmpegError, OSError, UnicodeError) as e:
        raise VideoDecodeError(path, "not_a_video", f"FFmpeg cannot open it ({e}). Replace it with "
                               "a real video or drop it from the manifest.") from e


def _video_stream(container, path: str):
    if not container.streams.video:
        found = sorted({s.type for s in container.streams})
        if not found:
            raise VideoDecodeError(path, "not_a_video", "FFmpeg opened it but found no streams at "
                                   "all; it is not a video. Drop it from the manifest.")
        raise VideoDecodeError(path, "no_video_stream", f"has no video stream (only: "
                               f"{', '.join(found)}). Drop it from the manifest or point it at the "
                               "video file.")
    stream = container.streams.video[0]
    if stream.codec_context is None:  # PyAV found no decoder for the stream's codec
        raise VideoDecodeError(path, "not_a_video", "this FFmpeg build has no decoder for its "
                               "video codec. Re-encode it (e.g. to H.264) or drop it from the "
                               "manifest.")
    return stream


def _upright_rotation(frame) -> int:
    # PyAV 18 exposes the display matrix of the frame (copied from the stream's side data by
    # the decoder) as frame.rotation: degrees counter-clockwise in [-180, 180]. np.rot90 turns
    # counter-clockwise for positive k, so k = rotation / 90 makes the picture upright.
    return int(round(frame.rotation / 90.0)) % 4 * 90


def _stream_info(container, stream, path: str, rotation: int) -> VideoInfo:
    fps = stream.average_rate or stream.guessed_rate or 0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    else:
        duration = 0.0
    w, h = stream.codec_context.width, stream.codec_context.height
    if rotation in (90, 270):
        w, h = h, w
    return VideoInfo(path=path, fps=float(fps), num_frames=int(stream.frames or 0), width=w,
                     height=h, codec=stream.codec_context.name, duration_s=duration,
                     rotation=rotation)


def probe(path) -> VideoInfo:
    """Frame rate, declared frame count, upright size, codec, duration and rotation of the
    first video stream. Decodes only the first frame (to read the display rotation)."""
    path = os.fspath(path)
    container = _open(path)
    try:
        stream = _video_stream(container, path)
        rotation = 0
        try:  # the rotation lives on decoded frames, so decode the first one
            for frame in container.decode(stream):
                rotation = _upright_rotation(frame)
                break
        except (av.error.FFmpegError, OSError) as e:
            raise VideoDecodeError(path, "corrupt", f"decoding the first frame failed ({e}). The "
                                   "file is damaged; re-download or re-encode it.") from e
        return _stream_info(container, stream, path, rotation)
    finally:
        container.close()


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------

def output_size(height: int, width: int, short_side: int | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) frames of ``height`` x ``width`` are resized to: ``size`` exactly, the short side
    to ``short_side`` keeping the aspect ratio (long side rounded), or unchanged."""
    if size is not None:
        return int(size[0]), int(size[1])
    if short_side is None:
        return height, width
    scale = short_side / min(height, width)
    if height <= width:
        return short_side, max(1, int(round(width * scale)))
    return max(1, int(round(height * scale))), short_side


class VideoReader:
    """Iterable over the uint8 RGB frames (H, W, 3) of the first video stream of ``path``.

    Streams: holds one decoded frame at a time (plus FFmpeg's own small reorder buffers).
    Other streams (audio, subtitles) are never decoded. After a full iteration
    ``decoded_frames`` and ``declared_frames`` (0 if the container does not declare a count)
    let the caller record a warning when fewer frames came out than the container promised;
    with ``min_frame_ratio`` set, fewer than ``min_frame_ratio * declared_frames`` decoded
    frames raise ``too_few_frames`` after the last frame (``None`` disables the check).
    """

    def __init__(self, path, short_side: int | None = None, size: tuple[int, int] | None = None,
                 min_frame_ratio: float | None = 1.0):
        if short_side is not None and size is not None:
            raise ValueError("pass short_side or size, not both")
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (height, width) in positive pixels, got {size}")
        if min_frame_ratio is not None and not 0.0 < min_frame_ratio <= 1.0:
            raise ValueError(f"min_frame_ratio must be in (0, 1] or None, got {min_frame_ratio}")
        self.path = os.fspath(path)
        self.short_side = short_side
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.min_frame_ratio = min_frame_ratio
        self.decoded_frames = 0
        self.declared_frames = 0
        self.rotation = 0
        self._info: VideoInfo | None = None

    @property
    def info(self) -> VideoInfo:
        """The video's VideoInfo: filled by the first decoded frame, or probed on demand."""
        if self._info is None:
            self._info = probe(self.path)
        return self._info

    def _reformat_size(self, frame) -> tuple[int, int]:
        """(width, height) to ask swscale for, in the stored (not yet rotated) orientation."""
        h, w = frame.height, frame.width
        if self.rotation in (90, 270):  # size is given upright; the stored frame is transposed
            oh, ow = output_size(w, h, self.short_side, self.size)
            return oh, ow
        oh, ow = output_size(h, w, self.short_side, self.size)
        return ow, oh

    def __iter__(self) -> Iterator[np.ndarray]:
        path = self.path
        self.decoded_frames = 0
        container = _open(path)
        try:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"  # frame + slice threads; helps most on large frames
            self.declared_frames = int(stream.frames or 0)
            frames = container.decode(stream)
            # One swscale context for the whole video: frame.reformat() builds (and frees) a new
            # context, with its filters and thread pool, on every frame, which costs more than
            # the scaling itself. threads=1: the decoder's threads already use the cores.
            reformatter = VideoReformatter()
            target = None
            while True:
                try:
                    frame = next(frames, None)
                    if frame is None:
                        break
                    if target is None or target[0] != (frame.width, frame.height):
                        self.rotation = _upright_rotation(frame)
                        target = ((frame.width, frame.height), self._reformat_size(frame))
                        if self._info is None:
                            self._info = _stream_info(container, stream, path, self.rotation)
                    w, h = target[1]
                    # Scale and convert to RGB in one swscale pass (bilinear, anti-aliased when
                    # shrinking) instead of converting at full size and resizing the RGB array.
                    rgb = reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                               interpolation="BILINEAR", threads=1).to_ndarray()
                except (av.error.FFmpegError, OSError) as e:
                    raise VideoDecodeError(
                        path, "corrupt", f"decoding failed at frame {self.decoded_frames} ({e}). "
                        "The file is damaged; re-download or re-encode it, or drop it from the "
                        "manifest.") from e
                if self.rotation:
                    # Contiguous copy: torch.from_numpy refuses the negative strides of rot90.
                    rgb = np.ascontiguousarray(np.rot90(rgb, k=self.rotation // 90))
                self.decoded_frames += 1
                yield rgb
        finally:
            container.close()
        self._check_count()

    def _check_count(self) -> None:
        n, declared = self.decoded_frames, self.declared_frames
        if n == 0:
            raise VideoDecodeError(self.path, "too_few_frames", "no frame could be decoded"
                                   + (f" of the {declared} declared" if declared else "")
                                   + ". The file is truncated or damaged; download it again.")
        ratio = self.min_frame_ratio
        if ratio is not None and declared > 0 and n < ratio * declared:
            raise VideoDecodeError(
                self.path, "too_few_frames", f"decoded {n} frames but the container declares "
                f"{declared} (fewer than {ratio:.0%}). The file is probably truncated or damaged; "
                "download it again, or lower min_frame_ratio (None disables the check) to "
                "accept it.")


def iter_frames(path, short_side: int | None = None, size: tuple[int, int] | None = None,
                min_frame_ratio: float | None = 1.0) -> Iterator[np.ndarray]:
    """Stream the uint8 RGB frames (H, W, 3) of ``path``, resized to ``size`` = (h, w) exactly
    or to ``short_side`` keeping the aspect ratio (both None: native size). A generator: the
    file is opened on the first ``next``. See ``VideoReader`` for errors and counts."""
    yield from VideoReader(path, short_side=short_side, size=size, min_frame_ratio=min_frame_ratio)


def read_frames(path, short_side: int | None = None, size: tuple[int, int] | None = None,
                min_frame_ratio: float | None = 1.0) -> np.ndarray:
    """All frames of ``path`` as one uint8 array (N, H, W, 3); same arguments as iter_frames."""
    reader = VideoReader(path, short_side=short_side, size=size, min_frame_ratio=min_frame_ratio)
    out, n = None, 0
    for frame in reader:
        if out is None:  # filled in place, sized from the declared count: no list + stack copy
            out = np.empty((max(reader.declared_frames, 1),) + frame.shape, np.uint8)
        elif n == len(out):
            out = np.concatenate([out, np.empty_like(out)])
        out[n] = frame
        n += 1
    return out if n == len(out) else out[:n].copy()


# ---------------------------------------------------------------------------------------------
# Clip views
# ---------------------------------------------------------------------------------------------

def pad_frames(frames: np.ndarray, clip_len: int) -> np.ndarray:
    """Pad ``frames`` (N, ...) with N < clip_len to (clip_len, ...) by repeating the last frame.

    Used for videos shorter than one clip (they give exactly one, padded clip). Copies.
    """
    n = len(frames)
    if n == 0:
        raise ValueError("cannot pad an empty frame array")
    if n >= clip_len:
        return frames
    pad = np.repeat(frames[-1:], clip_len - n, axis=0)
    return np.concatenate([frames, pad], axis=0)


def clip_view(frames: np.ndarray, clip_len: int, stride: int) -> np.ndarray:
    """Every clip of ``clip_len`` frames starting every ``stride`` frames, as a view.

    frames: (N, H, W, C) with N >= clip_len. Returns (K, clip_len, H, W, C) with
    K = (N - clip_len) // stride + 1, sharing memory with ``frames`` (no copy).
    """
    n = len(frames)
    if n < clip_len:
        raise ValueError(f"{n} frames are fewer than one clip of {clip_len}; pad_frames first")
    windows = np.lib.stride_tricks.sliding_window_view(frames, clip_len, axis=0)  # (N-s+1, H, W, C, s)
    windows = np.moveaxis(windows, -1, 1)  # (N-s+1, s, H, W, C)
    return windows[::stride]


@dataclass
class Segment:
    """A run of whole clips cut from a longer frame sequence.

    ``frames`` (n, H, W, C) holds exactly the frames of clips ``first_clip`` ..
    ``first_clip + num_clips - 1`` (clip k starts at frame k * stride of the whole sequence);
    ``clip_view(frames, clip_len, stride)`` gives them. ``padded``: the sequence was shorter than
    one clip and ``frames`` repeats its last frame up to clip_len. ``total_frames`` (frames in the
    whole sequence) is set on the last segment only.
    """

    first_clip: int
    frames: np.ndarray
    num_clips: int
    is_last: bool
    padded: bool = False
    total_frames: int | None = None


def iter_segments(frames: Iterable[np.ndarray], clip_len: int, stride: int,
                  clips_per_segment: int) -> Iterator[Segment]:
    """Stream frames (RGB (H, W, 3) or flow (H, W, 2)) into segments of at most
    ``clips_per_segment`` (C) clips of ``clip_len`` (s) frames every ``stride`` (r) frames.

    Segment j covers clips [j*C, min((j+1)*C, K)), K = (N - s) // r + 1, and holds frames
    [j*C*r, last_clip*r + s): consecutive segments overlap by s - r frames. Whether a full
    segment is the last is known only once the next clip is complete, so one segment waits for
    up to r more frames: memory is one segment plus s frames. 0 < N < s gives one padded
    segment with one clip; N = 0 raises ValueError.
    """
    for name, v in (("clip_len", clip_len), ("stride", stride), ("clips_per_segment", clips_per_segment)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    seg_len = (clips_per_segment - 1) * stride + clip_len  # frames of a full segment
    hop = clips_per_segment * stride  # start of segment j+1 relative to segment j
    cur = nxt = None  # frames of segment j, and of segment j+1 once it has started
    pos = 0  # frames seen since the start of segment j (skipped gap frames included)
    first_clip = total = 0
    for frame in frames:
        frame = np.asarray(frame)
        if cur is None:
            cur = np.empty((seg_len,) + frame.shape, frame.dtype)
        elif frame.shape != cur.shape[1:]:
            raise ValueError(f"frame {total} has shape {frame.shape}, earlier frames "
                             f"{cur.shape[1:]}: every frame of a sequence must have one shape")
        if pos < seg_len:
            cur[pos] = frame
        if pos >= hop:
            if nxt is None:
                # Frames of segment j+1 already seen (the overlap when j+1 starts at most
                # s frames after j) are still in cur.
                nxt = np.empty_like(cur)
                nxt[:pos - hop] = cur[hop:pos]
            nxt[pos - hop] = frame
        pos += 1
        total += 1
        if pos == hop + clip_len:  # clip (j+1)*C is complete: segment j is not the last
            yield Segment(first_clip, cur, clips_per_segment, is_last=False)
            cur, nxt = nxt, None
            first_clip += clips_per_segment
            pos -= hop
    if total == 0:
        raise ValueError("no frames: an empty sequence has no clips")
    if pos < clip_len:  # only possible for the first segment: the sequence is shorter than a clip
        yield Segment(0, pad_frames(cur[:pos], clip_len), 1, is_last=True, padded=True,
                      total_frames=total)
        return
    k = min(clips_per_segment, (pos - clip_len) // stride + 1)
    yield Segment(first_clip, cur[:(k - 1) * stride + clip_len], k, is_last=True,
                  total_frames=total)


# ---------------------------------------------------------------------------------------------
# Crops: arrays or tensors laid out (..., H, W)
# ---------------------------------------------------------------------------------------------

def crop_corners(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of the 5 crops in the order top-left, top-right, bottom-left,
    bottom-right, centre (the centre rounded as torchvision does)."""
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the frame ({height}x{width})")
    cy = int(round((height - size) / 2.0))
    cx = int(round((width - size) / 2.0))
    return [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (cy, cx)]


def _flip_w(x):
    # numpy: a negative-stride view; torch: flip copies (torch has no negative strides).
    return x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)


def center_crop(x, size: int):
    """The centre ``size`` x ``size`` crop of ``x`` (..., H, W): a view for arrays and tensors."""
    y, x0 = crop_corners(x.shape[-2], x.shape[-1], size)[4]
    return x[..., y:y + size, x0:x0 + size]


def ten_crop(x, size: int):
    """The 10 crops of eq. (5) stacked on a new leading axis: (10, ..., size, size).

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the same five
    mirrored horizontally. Works on numpy arrays and torch tensors (on any device).
    """
    crops = [x[..., y:y + size, x0:x0 + size] for y, x0 in crop_corners(x.shape[-2], x.shape[-1], size)]
    crops += [_flip_w(c) for c in crops]
    if isinstance(x, np.ndarray):
        return np.stack(crops)
    import torch

    return torch.stack(crops)
