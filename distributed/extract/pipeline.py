"""The Ray Data pipeline of extraction: the stages of ``reslstm.extraction.stages`` with their
resources, block size and object-store budget.

    from_items -> decode_segments (CPU tasks, PyAV)
               -> flow_stage      (CPU tasks, flow stream with a CPU flow method)
               -> FeatureStage    (autoscaling actor pool: num_gpus=1 each on a GPU cluster;
                                   computes the flow of a device method, tvl1-torch or RAFT)

``PipelinePlan.make(...)`` sizes it once (actors, the bytes of a segment, the block target and
the budget) from the stage config and the cluster; ``build_pipeline(items, plan)`` returns the
lazy dataset of feature-stage output rows; ``run_windows(items, size, build)`` runs a job as one
such dataset per window of its items.

Windows: Ray Data keeps statistics of every block a dataset has produced in the driver until the
dataset is gone (ray#66016; here 8 ``BlockStats`` per video, each segment being a block, about
1.2 KB each): an operator appends each output block's to a list read only for
``Dataset.stats()``. ``BoundedBlockStats``, an execution callback the pipeline's context
registers, keeps the last ``KEEP_BLOCK_STATS`` of each operator's, which leaves the driver's
Python heap flat along a dataset of any length. What still follows a dataset's length: its
input, a block per work item made up front (about 5 KB of the driver's heap each), and a rise
``benchmarks/predict_scale.py --job ray --window-videos 0`` still shows over one long dataset
of null stages (14 KB per video over 4 000 videos, 21 without the bound; README: "The driver's
memory during extraction and batch prediction"). A job therefore runs as consecutive datasets
over windows of ``--window-videos`` videos (by default ``reslstm.configs.options.window_videos``:
2048, or 32 per CPU on larger clusters, so a window lasts long next to the few seconds its
actor pool takes to start); each window's dataset is dropped before the next starts, and its
actors (and their models) are built again for it.

Resources: only the flow tasks reserve a CPU (one each, one thread). Decoding is cheap next to
optical flow (under 1 % of TV-L1's time), and the feature actor on a CPU-only cluster is idle
most of the time: a CPU reserved for either sat unused while flow tasks queued for the others
(on 2 CPUs the pipeline ran at the speed of one). Decode tasks are capped at one per CPU instead
and share the cores. It also makes the pipeline deadlock-free: a decode task paused by
backpressure holds no CPU, so the flow tasks that drain it can always start, also after a node
is lost. Stages differ in resources, so Ray Data never fuses them. ``actor_cpus`` reserves CPUs
(and torch threads) per actor when the model is the slow stage (I3D on a CPU). With a device
flow method (tvl1-torch, RAFT) there is no flow task: the actors compute the flow where the
model runs, so on GPUs decoded uint8 frames go to the device once and the flow never queues
for CPUs; on a CPU-only cluster the actors are then the flow stage and reserve one CPU each
(one actor per CPU), as the flow tasks would.

Memory does not grow with the length of a video: every task holds one segment at a time; every
row a stage emits leaves it as a block of its own (``DataContext.target_max_block_size`` below
one segment, where Ray Data's 128 MiB default packs a long video's segments into one block:
measured at 72x96, the actor's peak RSS was 1.4 GB for a 1-minute video and 3.0 GB for 20
minutes); a task pauses once two of its blocks wait to be taken, and Ray Data takes blocks only
while the dataset stays within its object-store budget (``SEGMENTS_IN_FLIGHT`` segments per
worker, at most half the cluster's object store, or ``--object-store-limit-gb``).
``benchmarks/memory.py`` measures it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Callable, Iterator, Sequence

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy
from ray.data._internal.execution.execution_callback import ExecutionCallback

from reslstm.extraction.stages import FeatureStage, StageConfig, decode_segments, flow_stage
from reslstm.memory import release_free_heap

MAX_BLOCKS = 20_000
TASK_BASE_BYTES = 256 * 1024 ** 2    # a Ray worker with PyAV, NumPy, Arrow and OpenCV loaded
ACTOR_BASE_BYTES = 1024 ** 3         # ... with torch and an extractor
SEGMENTS_IN_FLIGHT = 8               # object-store budget per worker, in segments
KEEP_BLOCK_STATS = 1000              # block statistics kept per operator (module docstring)
# Where a Ray Data operator keeps its output blocks' statistics (ray/data/_internal/execution/
# operators/map_operator.py in Ray 2.60); a test in tests/test_extract.py fails if it moves.
BLOCK_STATS_ATTR = "_output_blocks_stats"


def trim_block_stats(op, keep: int) -> int:
    """Drop all but the last ``keep`` block statistics of a Ray Data operator once it holds
    twice as many (so trimming costs O(1) per block); how many were dropped."""
    stats = getattr(op, BLOCK_STATS_ATTR, None)
    if not isinstance(stats, list) or len(stats) <= 2 * keep:
        return 0
    drop = len(stats) - keep
    del stats[:drop]
    return drop


class BoundedBlockStats(ExecutionCallback):
    """Ray Data execution callback: after each scheduling step, every operator of the dataset
    keeps the statistics of its last ``KEEP_BLOCK_STATS`` output blocks (module docstring).
    ``Dataset.stats()`` then describes those blocks, not the whole job."""

    keep = KEEP_BLOCK_STATS
    dropped = 0   # statistics dropped in this process (for tests and benchmarks)

    def on_execution_step(self, executor) -> None:
        for op in getattr(executor, "_topology", None) or ():  # Ray's private field, too
            BoundedBlockStats.dropped += trim_block_stats(op, self.keep)


def segment_bytes(stage: StageConfig, stream: str) -> int:
    """Bytes of one full segment of decoded frames (the largest row a stage emits)."""
    side = stage.resize_short[stream]
    frames = (stage.clips_per_segment - 1) * stage.clip_stride + stage.clip_len + 1 + stage.clip_stride
    return frames * side * (side * 16 // 9) * 3  # widest common aspect ratio


def actor_resources(gpus: int, actor_cpus: float | None, computes_flow: bool = False) -> dict:
    """Ray resources of one feature actor: with GPUs one GPU and (by default) one CPU to feed
    it; on a CPU-only cluster no reserved CPU by default (see the module docstring), but one
    when the actors compute the flow (a device flow method on CPUs): then they are the flow
    stage."""
    if gpus:
        return {"num_gpus": 1, "num_cpus": 1 if actor_cpus is None else actor_cpus}
    default = 1 if computes_flow else 0
    return {"num_cpus": default if actor_cpus is None else actor_cpus}


@dataclasses.dataclass(frozen=True)
class PipelinePlan:
    """The pipeline's sizes, worked out once for a stage config and a cluster."""

    stage: StageConfig             # with the thread counts the reserved CPUs allow
    streams: tuple[str, ...]
    cpus: int
    actors: int                    # actor pool's maximum size
    actor_resources: dict
    segment_bytes: int             # the largest segment of any stream
    block_bytes: int               # Ray Data's block target: below any segment
    object_store_bytes: int        # the dataset's object-store budget

    @classmethod
    def make(cls, stage: StageConfig, streams: tuple[str, ...], cpus: int, gpus: int,
             cluster_store_bytes: float, actors: int | None = None,
             actor_cpus: float | None = None, limit_gb: float | None = None) -> "PipelinePlan":
        actor_flow = "flow" in streams and stage.flow_on_device
        resources = actor_resources(gpus, actor_cpus, actor_flow)
        # A task that reserved one CPU (or none) runs torch and OpenCV on one thread.
        stage = dataclasses.replace(stage, task_threads=1,
                                    actor_threads=max(1, int(round(resources["num_cpus"]))))
        # Actors that compute the flow on CPUs take every CPU, one each, as flow tasks would.
        n_actors = actors or gpus or (max(1, cpus) if actor_flow else max(1, cpus // 2))
        seg = max(segment_bytes(stage, s) for s in streams)
        budget = (int(limit_gb * 1024 ** 3) if limit_gb else
                  int(min(SEGMENTS_IN_FLIGHT * seg * max(cpus + n_actors, 1),
                          0.5 * cluster_store_bytes)))
        # One clip of flow at the smallest side: every segment leaves its task as its own block.
        block = min(stage.clip_len * stage.resize_short[s] ** 2 * 2 for s in streams)
        return cls(stage, tuple(streams), cpus, n_actors, resources, seg, block, budget)

    @property
    def cpu_flow(self) -> bool:
        return "flow" in self.streams and not self.stage.flow_on_device


@contextlib.contextmanager
def _pipeline_context(plan: PipelinePlan):
    """Set the DataContext fields the pipeline needs while its source is created (a Dataset
    copies the current context then, and every stage after it keeps that copy); the caller's
    context is restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    saved = ctx.target_max_block_size, ctx.execution_options, ctx.custom_execution_callback_classes
    try:
        ctx.custom_execution_callback_classes = [*saved[2], BoundedBlockStats]
        # Ray Data packs the rows a task emits into blocks of up to target_max_block_size
        # before yielding them: a decode task would hold 128 MiB of a long video's segments in
        # its output buffer, and the feature actor receive them as one block.
        ctx.target_max_block_size = plan.block_bytes
        ctx.execution_options = copy.deepcopy(saved[1])
        if plan.object_store_bytes:
            # Ray Data stops reading task outputs and starting tasks when the dataset holds
            # this much: decoded frames wait in the object store for at most this many bytes.
            ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
                object_store_memory=plan.object_store_bytes)
        yield
    finally:
        (ctx.target_max_block_size, ctx.execution_options,
         ctx.custom_execution_callback_classes) = saved


def build_pipeline(items: pa.Table | list[dict], plan: PipelinePlan) -> "ray.data.Dataset":
    """The lazy Ray Dataset of feature-stage output rows (segments and failures) of the work
    items (one per (video, stream): a table or dicts, with the manifest's columns and stream).
    ``from_items``, not ``from_arrow``: that runs a Ray task per block to read its metadata and
    keeps what they return (measured: +380 MiB in the driver for 8 000 one-item blocks)."""
    stage, seg = plan.stage, plan.segment_bytes
    rows = items.to_pylist() if isinstance(items, pa.Table) else list(items)
    with _pipeline_context(plan):
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), MAX_BLOCKS)))
    # `memory` is what a worker holds at most: the process itself plus the segments in hand
    # (decode: the segment being filled, the next one, and the one being sent; flow: the RGB
    # segment in and the flow segment out, with their copies; features: two queued inputs).
    ds = ds.map_batches(decode_segments, fn_kwargs={"cfg": stage}, batch_size=1,
                        batch_format="pyarrow", num_cpus=0,
                        compute=TaskPoolStrategy(size=max(1, plan.cpus)),
                        memory=TASK_BASE_BYTES + 3 * seg)
    if plan.cpu_flow:
        ds = ds.map_batches(flow_stage, fn_kwargs={"cfg": stage}, batch_size=1,
                            batch_format="pyarrow", num_cpus=1, memory=TASK_BASE_BYTES + 4 * seg)
    pool = ActorPoolStrategy(min_size=1, max_size=plan.actors)
    return ds.map_batches(FeatureStage, fn_constructor_kwargs={"cfg": stage, "streams": plan.streams},
                          compute=pool, batch_size=1, batch_format="pyarrow",
                          memory=ACTOR_BASE_BYTES + 3 * seg, **plan.actor_resources)


def windows(items: Sequence | pa.Table, size: int) -> Iterator:
    """Consecutive slices of ``size`` items (0: one slice of all), in order."""
    step = size or max(1, len(items))
    for lo in range(0, len(items), step):
        yield items[lo:lo + step]


def run_windows(items: Sequence | pa.Table, size: int,
                build: Callable[[Sequence], "ray.data.Dataset"]) -> Iterator[pa.Table]:
    """The output blocks of ``build(window)`` for each of ``windows(items, size)``, in order. A
    window's dataset is dropped before the next one is built, so what Ray Data keeps per block
    lives for one window (module docstring); the C heap's free pages go back to the OS after
    each (``memory.release_free_heap``)."""
    for window in windows(items, size):
        ds = build(window)
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
        del ds
        release_free_heap()
