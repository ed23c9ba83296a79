"""What an extraction will cost, before it runs: ``jobs/extract.py --dry-run`` and ``--calibrate``.

``header_facts`` reads one video's container headers (no decoding: ``probe(decode_first=False)``)
and ``facts_batch`` does it for a batch of manifest rows (Ray Data runs it across the cluster),
counting each video's work there too: the rows carry, per stream, whether that stream is still
to do (``todo_rgb``, ``todo_flow``: not in the store, not recorded as failed), and get its RGB
frames, the frames to decode over the streams to do, its clips per stream and flow pairs.
``DryRun`` adds those columns up in the driver, one batch at a time with Arrow kernels (no
Python object per video): videos, hours, frames after ``--fps``, clips per stream, flow pairs,
the bytes of features the job will write, and every file it cannot open, with why; it keeps
(video_id, frames, work frames) of the readable videos to do as Arrow columns, from which
``--calibrate`` picks its sample. Counts are of the work still to do: (video, stream) pairs the
store already has, or recorded as failed, are counted apart and left out.

Frames of a video: with ``--fps F``, ceil(duration x F), the grid points before its end
(``reslstm.video.timing``); without, the frame count the container declares, or duration x its
rate when it declares none (Matroska, WebM). A header can be off by a frame or two from what
decoding finds; the dry run is an estimate, and says so.

``Estimate`` turns a calibration run (a few videos really extracted: ``ExtractSummary``'s
seconds each stage worked) into the whole job's time on this cluster: each stage's cost per
frame of work, times the frames the dry run counted, over the workers of that stage (the CPU
stages share the cluster's CPUs; the CNN has the GPUs when there are any), the largest is the
bottleneck; the calibration's own wall time, less its start-up, says how close the pipeline
comes to that bound, and the ETA is scaled by it.
"""

from __future__ import annotations

import dataclasses
import math

import pyarrow as pa
import pyarrow.compute as pc

from reslstm.fusion import STREAMS
from reslstm.sampling import num_clips

FACTS_SCHEMA = pa.schema([
    ("video_id", pa.string()), ("path", pa.string()), ("ok", pa.bool_()),
    ("fps", pa.float64()), ("declared_frames", pa.int64()), ("duration_s", pa.float64()),
    ("width", pa.int32()), ("height", pa.int32()), ("codec", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()),
])
SHOWN_UNREADABLE = 20  # unreadable files printed; all of them go to the list file


def header_facts(video_id: str, path: str, videos=None) -> dict:
    """One row of ``FACTS_SCHEMA`` for a video, from its headers alone; a file that cannot be
    opened gives ``ok = False`` with the typed error extraction would record."""
    from reslstm import storage
    from reslstm.video.decoding import probe

    row = {"video_id": video_id, "path": path, "ok": False}
    try:
        info = probe(storage.resolve(path, like=videos) if videos else path, decode_first=False)
    except Exception as exc:  # noqa: BLE001 - the dry run reports every unreadable file
        kind = getattr(exc, "kind", None)
        message = str(exc).splitlines()[0] if str(exc) else repr(exc)
        row.update(error_type=type(exc).__name__ + (f":{kind}" if kind else ""),
                   message=message.removeprefix(f"{path}: "))  # the path has its own column
        return row
    row.update(ok=True, fps=info.fps, declared_frames=info.num_frames, duration_s=info.duration_s,
               width=info.width, height=info.height, codec=info.codec)
    return row


COUNT_SCHEMA = pa.schema(
    [(f"todo_{s}", pa.bool_()) for s in STREAMS]
    + [("frames", pa.int64()),          # RGB frames extraction will read (0: unreadable)
       ("work_frames", pa.int64()),     # ... summed over the streams to do
       ("flow_pairs", pa.int64())]
    + [(f"clips_{s}", pa.int64()) for s in STREAMS])


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the counts depend on: the clips' length and stride and ``--fps``."""

    clip_len: int
    clip_stride: int
    fps: float | None = None


def facts_batch(batch: pa.Table, videos=None, layout: Layout | None = None) -> pa.Table:
    """Ray Data stage: manifest rows (video_id, path, and ``todo_<stream>`` when counting) ->
    ``FACTS_SCHEMA`` rows, with the ``COUNT_SCHEMA`` columns when ``layout`` is given."""
    rows = [header_facts(v, p, videos) for v, p in zip(batch.column("video_id").to_pylist(),
                                                      batch.column("path").to_pylist())]
    facts = pa.Table.from_pylist(rows, schema=FACTS_SCHEMA)
    if layout is None:
        return facts
    todo = {s: (batch.column(f"todo_{s}").to_pylist() if f"todo_{s}" in batch.column_names
                else [False] * batch.num_rows) for s in STREAMS}
    counts = [count_video(fact, {s: todo[s][i] for s in STREAMS}, layout)
              for i, fact in enumerate(rows)]
    for field in COUNT_SCHEMA:
        facts = facts.append_column(field, pa.array([c[field.name] for c in counts], field.type))
    return facts


def count_video(fact: dict, todo: dict, layout: Layout) -> dict:
    """One video's ``COUNT_SCHEMA`` values from its facts; ``todo``: {stream: still to do}."""
    out = {f"todo_{s}": bool(todo.get(s)) for s in STREAMS}
    out.update(frames=0, work_frames=0, flow_pairs=0, **{f"clips_{s}": 0 for s in STREAMS})
    if not fact["ok"]:
        return out
    rgb = out["frames"] = frames_of(fact, layout.fps)
    for s in STREAMS:
        if todo.get(s):
            n = rgb - 1 if s == "flow" else rgb
            out[f"clips_{s}"] = num_clips(max(n, 1), layout.clip_len, layout.clip_stride)
            out["work_frames"] += rgb
            out["flow_pairs"] += max(n, 0) if s == "flow" else 0
    return out


def frames_of(fact: dict, fps: float | None) -> int:
    """RGB frames extraction will read from a video (module docstring)."""
    duration = fact["duration_s"] or 0.0
    if fps:
        return max(1, math.ceil(duration * fps - 1e-9))
    if fact["declared_frames"]:
        return int(fact["declared_frames"])
    return max(1, round(duration * (fact["fps"] or 0.0)))


FRAMES_SCHEMA = pa.schema([("video_id", pa.string()), ("frames", pa.int64()),
                           ("work_frames", pa.int64())])


@dataclasses.dataclass
class DryRun:
    """The dry run's totals (module docstring), added up one batch of counted facts at a
    time (``facts_batch`` with a layout)."""

    streams: tuple[str, ...]
    clip_len: int
    clip_stride: int
    feature_dim: int
    fps: float | None
    in_store: int = 0              # (video, stream) pairs the store has
    recorded_failed: int = 0       # pairs recorded as failed (retried with --retry-failed)
    videos: int = 0
    readable: int = 0
    seconds: float = 0.0           # of video, readable files to do
    frames: int = 0                # RGB frames to decode, summed over the streams to do
    clips: dict = dataclasses.field(default_factory=dict)
    flow_pairs: int = 0
    feature_bytes: int = 0
    unreadable: list = dataclasses.field(default_factory=list)   # the first few (path, error)
    unreadable_count: int = 0
    readable_frames: list = dataclasses.field(default_factory=list)  # FRAMES_SCHEMA tables

    @property
    def layout(self) -> Layout:
        return Layout(self.clip_len, self.clip_stride, self.fps)

    def add(self, facts: pa.Table) -> pa.Table:
        """Count a batch of counted facts; returns its unreadable rows to do (for the list
        file): video_id, path, error_type, message."""
        todo = facts.column(f"todo_{self.streams[0]}")
        for s in self.streams[1:]:
            todo = pc.or_(todo, facts.column(f"todo_{s}"))
        facts = facts.filter(todo)
        ok = facts.column("ok")
        bad = facts.filter(pc.invert(ok)).select(["video_id", "path", "error_type", "message"])
        good = facts.filter(ok)
        self.videos += facts.num_rows
        self.unreadable_count += bad.num_rows
        for row in bad.slice(0, max(0, SHOWN_UNREADABLE - len(self.unreadable))).to_pylist():
            self.unreadable.append((row["path"], f"{row['error_type']}: {row['message']}"))
        self.readable += good.num_rows
        total = lambda name: pc.sum(good.column(name)).as_py() or 0  # noqa: E731
        self.seconds += total("duration_s")
        self.frames += total("work_frames")
        self.flow_pairs += total("flow_pairs")
        for s in self.streams:
            k = total(f"clips_{s}")
            self.clips[s] = self.clips.get(s, 0) + k
            self.feature_bytes += k * self.feature_dim * 4
        self.readable_frames.append(good.select(FRAMES_SCHEMA.names).cast(FRAMES_SCHEMA))
        return bad

    def frames_table(self) -> pa.Table:
        """(video_id, frames, work_frames) of every readable video to do."""
        return (pa.concat_tables(self.readable_frames) if self.readable_frames
                else FRAMES_SCHEMA.empty_table())

    def text(self) -> str:
        per = ", ".join(f"{s} {self.clips.get(s, 0):,}" for s in self.streams)
        rate = f" at {self.fps:g} fps" if self.fps else ""
        lines = [
            f"videos in the manifest to extract: {self.videos:,} (the store already has "
            f"{self.in_store:,} (video, stream) pairs; {self.recorded_failed:,} are recorded as "
            "failed and are left out unless --retry-failed)",
            f"  readable: {self.readable:,}, {self.seconds / 3600:,.2f} hours of video "
            f"({_duration(self.seconds)})",
            f"  frames to decode{rate}: {self.frames:,} (summed over streams); clips: {per}; "
            f"flow pairs: {self.flow_pairs:,}",
            f"  features to write: {_size(self.feature_bytes)} ({self.feature_dim}-d float32 "
            "per clip; from the headers, an estimate)",
            f"  cannot be opened: {self.unreadable_count:,}"]
        lines += [f"    {path}: {why}" for path, why in self.unreadable]
        if self.unreadable_count > len(self.unreadable):
            lines.append(f"    ... and {self.unreadable_count - len(self.unreadable):,} more")
        return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


@dataclasses.dataclass
class Estimate:
    """The whole job's time from a calibration run (module docstring)."""

    stage_seconds: dict        # stage -> seconds worked on the calibration's videos
    sample_frames: int         # frames of work in the calibration (RGB frames x streams)
    wall_s: float              # its wall time, from the first work sent to the last row
    startup_s: float           # of which starting up (before the first row, less its own work)
    total_frames: int          # frames of work of the whole job (the dry run's)
    cpus: float
    gpus: float

    def stage_totals(self) -> dict[str, float]:
        """Each stage's seconds of work for the whole job, per worker slot it has."""
        scale = self.total_frames / max(self.sample_frames, 1)
        slots = {"decode": self.cpus, "flow": self.cpus,
                 "features": self.gpus if self.gpus else self.cpus}
        return {s: v * scale / max(slots[s], 1) for s, v in self.stage_seconds.items()}

    def bound(self, frames: int) -> float:
        """The pipeline's time for ``frames`` of work were it perfectly busy: CPU stages share
        the CPUs; a GPU stage runs beside them."""
        per = {s: v / max(self.sample_frames, 1) * frames for s, v in self.stage_seconds.items()}
        cpu_stages = ("decode", "flow") if self.gpus else ("decode", "flow", "features")
        cpu = sum(per.get(s, 0.0) for s in cpu_stages) / max(self.cpus, 1)
        gpu = per.get("features", 0.0) / self.gpus if self.gpus else 0.0
        return max(cpu, gpu)

    @property
    def efficiency(self) -> float:
        """How much longer the calibration took than its own bound (>= 1 in practice)."""
        return max(self.wall_s - self.startup_s, 1e-9) / max(self.bound(self.sample_frames), 1e-9)

    @property
    def eta_s(self) -> float:
        return self.startup_s + self.bound(self.total_frames) * self.efficiency

    @property
    def bottleneck(self) -> str:
        totals = self.stage_totals()
        return max(totals, key=totals.get)

    def text(self) -> str:
        totals = self.stage_totals()
        lines = [f"calibration: {self.sample_frames:,} frames of work in {self.wall_s:.1f} s "
                 f"({self.startup_s:.1f} s of it starting up)"]
        for stage, busy in self.stage_seconds.items():
            rate = self.sample_frames / busy if busy > 0 else float("inf")
            lines.append(f"  {stage:<8} {rate:>10,.1f} frames/s per worker; the whole job: "
                         f"{_duration(totals[stage])} per worker")
        lines.append(f"  bottleneck: {self.bottleneck}")
        lines.append(f"estimated time of the whole job on this cluster ({self.cpus:g} CPUs, "
                     f"{self.gpus:g} GPUs): {_duration(self.eta_s)} ({self.eta_s:,.0f} s)")
        return "\n".join(lines)


def _duration(s: float) -> str:
    s = int(round(s))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"
