"""Feature segment rows -> whole videos, for prediction: every stream of a video joined in order,
or the failures that stop it from being classified.

``VideoAssembler`` takes the segment rows of any number of videos as they come (every stream,
any order, duplicates of retried tasks) and hands back each video once all of its streams are
joined (``segments.SegmentJoiner``) or failed: a failure row of the stages, a joined length
that does not fit the video (``JoinedVideo.problem``), or, at ``close``, segments missing or a
stream that never came. Batch prediction streams a whole job through one; ``join_video`` is the
same for the rows of one video.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from reslstm.extraction.segments import JoinedVideo, SegmentJoiner
from reslstm.features import StreamSettings


@dataclasses.dataclass
class Assembled:
    """One video: its streams' joined features, or (any) failures, which rule it out."""

    video_id: str
    path: str | None
    joined: dict = dataclasses.field(default_factory=dict)     # stream -> JoinedVideo
    failures: list = dataclasses.field(default_factory=list)   # failures-table rows
    failed: set = dataclasses.field(default_factory=set)       # streams that failed

    def settled(self, streams) -> bool:
        return all(s in self.joined or s in self.failed for s in streams)


class VideoAssembler:
    """Segment rows of many videos in, whole videos out (module docstring)."""

    def __init__(self, streams: Iterable[str], settings: dict[str, StreamSettings]):
        self.streams = tuple(streams)
        self.settings = settings
        self.joiner = SegmentJoiner()
        self.open: dict[str, Assembled] = {}
        self.done: set[str] = set()

    def _fail(self, video: Assembled, stream, stage, error_type, message) -> None:
        video.failed.add(stream)
        self.joiner.discard((video.video_id, stream))
        video.failures.append({"video_id": video.video_id, "stream": stream, "path": video.path,
                               "stage": stage, "error_type": error_type, "message": message})

    def add(self, row: dict) -> Assembled | None:
        """Take one row; the video it completes, if it does."""
        vid, stream = row["video_id"], row["stream"]
        if vid in self.done:
            return None  # a retried task's duplicate of a video handed back already
        video = self.open.setdefault(vid, Assembled(vid, row.get("path")))
        if stream in video.failed or stream in video.joined:
            return None  # after a failure, or a duplicate of a joined stream's segment
        if row["kind"] == "failure":
            self._fail(video, stream, row["stage"], row["error_type"], row["message"])
        else:
            joined = self.joiner.add(row)
            if joined is not None:
                s = self.settings[stream]
                problem = joined.problem(s.clip_len, s.clip_stride, s.feature_dim)
                if problem:
                    self._fail(video, stream, *problem)
                else:
                    video.joined[stream] = joined
        if not video.settled(self.streams):
            return None
        self.done.add(vid)
        return self.open.pop(vid)

    def close(self, expected: Iterable[dict] = ()) -> list[Assembled]:
        """The videos still open, each with a failure per stream that did not finish, and one
        for every ``expected`` item (dicts with video_id and path) nothing came back for."""
        for (vid, stream), first, have in self.joiner.incomplete():
            if vid in self.open:
                self._fail(self.open[vid], stream, "assemble", "IncompleteVideo",
                           f"{first.get('path')}: {have} arrived")
        out = []
        for video in self.open.values():
            for stream in self.streams:
                if stream not in video.joined and stream not in video.failed:
                    self._fail(video, stream, "assemble", "IncompleteVideo",
                               f"{video.path}: no {stream} features came back")
            out.append(video)
        self.done.update(self.open)
        self.open = {}
        for item in expected:
            if item["video_id"] not in self.done:
                self.done.add(item["video_id"])
                out.append(Assembled(item["video_id"], item.get("path"), failures=[{
                    "video_id": item["video_id"], "stream": None, "path": item.get("path"),
                    "stage": "assemble", "error_type": "IncompleteVideo",
                    "message": f"{item.get('path')}: the pipeline returned nothing for it; "
                               "rerun to retry"}]))
        return out


def join_video(rows: Iterable[dict], streams: Iterable[str],
               settings: dict[str, StreamSettings]) -> tuple[dict[str, JoinedVideo], list[dict]]:
    """The segment rows of ONE video (every stream, any order) -> ({stream: joined features},
    failures). A video with any failure cannot be classified."""
    assembler = VideoAssembler(streams, settings)
    videos = [v for v in map(assembler.add, rows) if v is not None] + assembler.close()
    if not videos:
        return {}, []
    (video,) = videos
    return video.joined, video.failures
