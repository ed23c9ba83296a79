"""Video decoding and probing with PyAV.

``VideoReader`` (and ``iter_frames`` / ``read_frames`` on top of it) streams uint8 RGB frames
resized in the same swscale pass as the colour conversion, turned upright when the stream
carries a display rotation; ``probe`` reads what the container says about its video stream.
Every way a file can be unreadable raises one typed ``VideoDecodeError`` whose message names
the file and what to do. Clip geometry lives in ``reslstm.video.clips``, crops with the extractors.

A video is a local path, a filesystem URI (``s3://bucket/videos/a.mp4?region=...``) or a
``storage.Location``. Objects are streamed: PyAV reads through ``Location.open_input``, ranged
reads with a small bounded cache, never a download of the whole file; a missing, empty or
truncated object raises the same ``VideoDecodeError`` kinds as a file, and one the credentials
may not read raises ``permission``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from reslstm.video.failures import VideoDecodeError, container_kind, not_openable, unreadable
from reslstm.video.sources import open_object, source
from reslstm.video.timing import FrameClock, as_rate


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


def _open(path: str, loc=None) -> av.container.InputContainer:
    """``av.open`` with every failure mapped to a VideoDecodeError kind (``loc``: the
    ``storage.Location`` of an object on object storage, streamed). Close it when done."""
    if loc is not None:
        return open_object(path, loc)
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
        raise unreadable(path, e, container_kind(path)) from e
    except (av.error.FFmpegError, OSError, UnicodeError) as e:
        raise not_openable(path, e) from e


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


def _frame_time(frame, stream, clock: FrameClock) -> tuple[Fraction, Fraction | None]:
    """(start, duration) of a decoded frame in exact seconds from the stream's start, from its
    presentation timestamp; a frame without one is placed after the previous at the nominal
    rate (or at its index in seconds when the container states no rate either)."""
    tb = stream.time_base
    if frame.pts is None or tb is None:
        step = 1 / clock.nominal if clock.nominal else Fraction(1)
        return clock.decoded * step, None
    start = Fraction(frame.pts - (stream.start_time or 0)) * tb
    return start, (Fraction(frame.duration) * tb if frame.duration else None)


def probe(path, decode_first: bool = True) -> VideoInfo:
    """Frame rate, declared frame count, upright size, codec, duration and rotation of the
    first video stream. Decodes only the first frame (to read the display rotation);
    ``decode_first=False`` reads the container's headers alone (rotation then 0, the size as
    stored), which is what planning needs."""
    path, loc = source(path)
    container = _open(path, loc)
    try:
        stream = _video_stream(container, path)
        rotation = 0
        if not decode_first:
            return _stream_info(container, stream, path, rotation)
        try:  # the rotation lives on decoded frames, so decode the first one
            for frame in container.decode(stream):
                rotation = _upright_rotation(frame)
                break
        except (av.error.FFmpegError, OSError) as e:
            if loc is not None and not isinstance(e, av.error.FFmpegError):
                raise  # reading the object failed (network, credentials), not the video
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
    """Iterable over the uint8 RGB frames (H, W, 3) of the first video stream of ``path`` (a
    local path, a filesystem URI or a ``storage.Location``; module docstring).

    Streams: holds one decoded frame at a time (plus FFmpeg's own small reorder buffers).
    Other streams (audio, subtitles) are never decoded. After a full iteration
    ``decoded_frames`` and ``declared_frames`` (0 if the container does not declare a count)
    let the caller record a warning when fewer frames came out than the container promised;
    with ``min_frame_ratio`` set, fewer than ``min_frame_ratio * declared_frames`` decoded
    frames raise ``too_few_frames`` after the last frame (``None`` disables the check).

    ``fps``: yield the frames on a uniform grid of that many per second instead of every
    decoded frame (``reslstm.video.timing``); ``clock`` records the time and decoded index of
    every frame yielded. ``decoded_frames`` counts decoded frames either way.
    """

    def __init__(self, path, short_side: int | None = None, size: tuple[int, int] | None = None,
                 min_frame_ratio: float | None = 1.0, fps: float | None = None):
        if short_side is not None and size is not None:
            raise ValueError("pass short_side or size, not both")
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be a positive number of pixels, got {short_side}")
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"size must be (height, width) in positive pixels, got {size}")
        if min_frame_ratio is not None and not 0.0 < min_frame_ratio <= 1.0:
            raise ValueError(f"min_frame_ratio must be in (0, 1] or None, got {min_frame_ratio}")
        self.path, self._loc = source(path)
        self.short_side = short_side
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.min_frame_ratio = min_frame_ratio
        self.fps = as_rate(fps)  # ValueError for 0 or less
        self.clock: FrameClock | None = None  # the times of the frames yielded (timing.py)
        self.decoded_frames = 0
        self.declared_frames = 0
        self.rotation = 0
        self._info: VideoInfo | None = None

    @property
    def info(self) -> VideoInfo:
        """The video's VideoInfo: filled by the first decoded frame, or probed on demand."""
        if self._info is None:
            self._info = probe(self._loc or self.path)
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
        container = _open(path, self._loc)
        try:
            stream = _video_stream(container, path)
            stream.thread_type = "AUTO"  # frame + slice threads; helps most on large frames
            self.declared_frames = int(stream.frames or 0)
            clock = self.clock = FrameClock(self.fps, float(stream.average_rate
                                                            or stream.guessed_rate or 0))
            frames = container.decode(stream)
            # One swscale context for the whole video: frame.reformat() builds (and frees) a new
            # context, with its filters and thread pool, on every frame, which costs more than
            # the scaling itself. threads=1: the decoder's threads already use the cores.
            self._reformatter, self._target, self._last = VideoReformatter(), None, (None, None)
            while True:
                try:
                    frame = next(frames, None)
                    if frame is None:
                        break
                    start, duration = _frame_time(frame, stream, clock)
                    outs = list(clock.feed(frame, start, duration))  # 0, 1 or more times
                    self.decoded_frames = clock.decoded
                    for out in outs:
                        yield self._rgb(out, container, stream)
                except (av.error.FFmpegError, OSError) as e:
                    raise self._corrupt(e, clock.decoded) from e
            try:
                for out in clock.finish():  # a rate may owe the last frame more grid times
                    yield self._rgb(out, container, stream)
            except (av.error.FFmpegError, OSError) as e:
                raise self._corrupt(e, clock.decoded) from e
        finally:
            container.close()
        self._check_count()

    def _corrupt(self, e: Exception, at: int) -> Exception:
        if self._loc is not None and not isinstance(e, av.error.FFmpegError):
            return e  # reading the object failed (network, credentials), not the video
        return VideoDecodeError(
            self.path, "corrupt", f"decoding failed at frame {at} ({e}). The file is damaged; "
            "re-download or re-encode it, or drop it from the manifest.")

    def _rgb(self, frame, container, stream) -> np.ndarray:
        """A decoded frame as upright uint8 RGB at the output size (a frame a rate repeats is
        converted once: the same array comes back)."""
        if self._last[0] is frame:
            return self._last[1]
        if self._target is None or self._target[0] != (frame.width, frame.height):
            self.rotation = _upright_rotation(frame)
            self._target = ((frame.width, frame.height), self._reformat_size(frame))
            if self._info is None:
                self._info = _stream_info(container, stream, self.path, self.rotation)
        w, h = self._target[1]
        # Scale and convert to RGB in one swscale pass (bilinear, anti-aliased when shrinking)
        # instead of converting at full size and resizing the RGB array.
        rgb = self._reformatter.reformat(frame, width=w, height=h, format="rgb24",
                                         interpolation="BILINEAR", threads=1).to_ndarray()
        if self.rotation:
            # Contiguous copy: torch.from_numpy refuses the negative strides of rot90.
            rgb = np.ascontiguousarray(np.rot90(rgb, k=self.rotation // 90))
        self._last = (frame, rgb)
        return rgb

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
                min_frame_ratio: float | None = 1.0, fps: float | None = None
                ) -> Iterator[np.ndarray]:
    """Stream the uint8 RGB frames (H, W, 3) of ``path``, resized to ``size`` = (h, w) exactly
    or to ``short_side`` keeping the aspect ratio (both None: native size), at ``fps`` frames per
    second when given. A generator: the file is opened on the first ``next``. See
    ``VideoReader`` for errors and counts."""
    yield from VideoReader(path, short_side=short_side, size=size, min_frame_ratio=min_frame_ratio,
                           fps=fps)


def read_frames(path, short_side: int | None = None, size: tuple[int, int] | None = None,
                min_frame_ratio: float | None = 1.0, fps: float | None = None) -> np.ndarray:
    """All frames of ``path`` as one uint8 array (N, H, W, 3); same arguments as iter_frames."""
    reader = VideoReader(path, short_side=short_side, size=size, min_frame_ratio=min_frame_ratio,
                         fps=fps)
    out, n = None, 0
    for frame in reader:
        if out is None:  # filled in place, sized from the declared count: no list + stack copy
            out = np.empty((max(reader.declared_frames, 1),) + frame.shape, np.uint8)
        elif n == len(out):
            out = np.concatenate([out, np.empty_like(out)])
        out[n] = frame
        n += 1
    return out if n == len(out) else out[:n].copy()
