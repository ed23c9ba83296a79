"""Where frames and clips sit in time: presentation timestamps, a fixed frame rate, clip spans.

``FrameClock`` follows the frames a decoder outputs (each with its presentation time and
duration, exact ``Fraction`` seconds from the stream's time base) and decides which frames the
reader yields:

- without a rate, every decoded frame, at its own presentation time (variable frame rates
  stay exact: no frame index / nominal fps arithmetic);
- with ``fps = F``, the frames on a uniform grid of F per second from the first frame's time:
  grid time ``g_j = t_0 + j / F`` shows the frame on screen at that moment (the last one that
  started at or before it), until the end of the last frame. Nothing is re-encoded. Below the
  video's own rate frames are skipped; above it a frame repeats (as FFmpeg's ``fps`` filter
  does), and the rows of such a video carry a warning saying so.

For every yielded frame the clock records its time (``times``: the presentation time, or the
grid time with a rate) and which decoded frame it is (``sources``: 0-based decode order), and
after the last frame the time the last one ends (``end_s``). ``clip_spans`` turns those into
the span of each clip: the first and last decoded frame it reads and the seconds it covers,
from its first frame's time to the end of its last frame (the next yielded frame's time, or
``end_s``; with a rate, the grid time plus 1/F). A flow clip reads one RGB frame more than
its ``clip_len`` flow frames, so its span ends one frame later.
"""

from __future__ import annotations

from array import array
from fractions import Fraction
from typing import Iterator

def as_rate(fps) -> Fraction | None:
    """``fps`` (a number, or None for the video's own frames) as an exact positive Fraction."""
    if fps is None:
        return None
    rate = Fraction(str(fps))  # 29.97 -> 2997/100 exactly, not the binary float's expansion
    if rate <= 0:
        raise ValueError(f"a frame rate must be above 0 frames per second, got {fps}")
    return rate


class FrameClock:
    """Decides which decoded frames are yielded and records their times (module docstring).

    ``feed(frame, start, duration)`` for each decoded frame in presentation order yields the
    frame as many times as it is to be output (0, 1, or more with a rate); ``finish()`` yields
    what the last frame still owes and sets ``end_s``. ``nominal_fps``: the container's rate,
    for a last frame without a duration.
    """

    def __init__(self, fps=None, nominal_fps: float = 0.0):
        self.fps = as_rate(fps)
        self.nominal = Fraction(str(nominal_fps)) if nominal_fps and nominal_fps > 0 else None
        self.times = array("d")
        self.sources = array("q")
        self.end_s: float | None = None
        self.decoded = 0
        self._prev: tuple[object, int, Fraction, Fraction | None] | None = None
        self._step: Fraction | None = None      # the last gap between two frames
        self._grid = 0                          # j of the next grid time

    def _grid_time(self) -> Fraction:
        return self._t0 + self._grid / self.fps

    def _emit(self, frame, index: int, time: Fraction):
        self.times.append(float(time))
        self.sources.append(index)
        return frame

    def feed(self, frame, start: Fraction, duration: Fraction | None) -> Iterator[object]:
        index = self.decoded
        self.decoded += 1
        if self._prev is not None:
            self._step = start - self._prev[2]
        if self.fps is None:
            self._prev = (frame, index, start, duration)
            yield self._emit(frame, index, start)
            return
        if self._prev is None:
            self._t0 = start
        else:
            yield from self._until(start)
        self._prev = (frame, index, start, duration)

    def _until(self, end: Fraction) -> Iterator[object]:
        """The previous frame at every grid time before ``end``."""
        frame, index, _, _ = self._prev
        while self._grid_time() < end:
            yield self._emit(frame, index, self._grid_time())
            self._grid += 1

    def finish(self) -> Iterator[object]:
        if self._prev is None:
            return
        _, _, start, duration = self._prev
        if not duration or duration <= 0:
            duration = self._step if self._step and self._step > 0 else (
                1 / self.nominal if self.nominal else Fraction(0))
        end = start + duration
        if self.fps is None:
            self.end_s = float(end)
            return
        yield from self._until(max(end, start + Fraction(1, 10 ** 9)))  # a frame is never lost
        self.end_s = float(self._grid_time())

    def upsampled(self) -> bool:
        """Whether a frame was yielded more than once (the rate is above the video's)."""
        s = self.sources
        return any(s[i] == s[i - 1] for i in range(1, len(s)))


def clip_spans(clock: FrameClock, first_clip: int, num_clips: int, clip_len: int, stride: int,
               padded: bool = False) -> tuple[list, list, list, list]:
    """(first frames, last frames, start seconds, end seconds) of clips ``first_clip .. first_clip + num_clips - 1`` of the
    clock's frames (clip k reads frames k * stride .. k * stride + clip_len - 1; a padded clip,
    of a sequence shorter than one clip, reads all of them). The frames a clip reads must be
    recorded by now, as must the frame after its last (or the end of the video)."""
    n = len(clock.times)
    out: tuple[list, list, list, list] = ([], [], [], [])
    for k in range(first_clip, first_clip + num_clips):
        first = k * stride
        last = n - 1 if padded else first + clip_len - 1
        if last >= n:
            raise ValueError(f"clip {k} ends at frame {last}, but only {n} frames are recorded")
        if last + 1 < n:
            end = clock.times[last + 1]
        elif clock.end_s is not None:
            end = clock.end_s
        else:
            raise ValueError(f"clip {k} ends at the last frame seen so far; its end is not known "
                             "before the next frame or the end of the video")
        out[0].append(int(clock.sources[first]))
        out[1].append(int(clock.sources[last]))
        out[2].append(clock.times[first])
        out[3].append(end)
    return out
