"""Batch prediction (``jobs/predict.py --manifest``) or extraction (``jobs/extract.py``, with
``--job extract``) at growing numbers of videos: time per video and the driver's peak RSS,
against the smallest N.

Each N runs in a fresh process on a local Ray of 2 CPUs: one short synthetic video (96x72,
tiny3d random-init features, DIS flow, one crop; for prediction the model is an untrained
late-product Res-LSTM: the costs, not results) hard-linked N times into a folder, then
``run_batch`` (predictions written every 256 videos) or ``run_extraction`` over a manifest of
them. The per-video work (decode, flow, CNN) is the same for every video, so the time per video
should stay flat and the driver's memory should not follow N (it holds the manifest's rows and
the ids it has seen, never features). Ray Data keeps statistics of every block in the driver
until its dataset ends; the pipeline keeps the last ones of each operator only
(``BoundedBlockStats``; ``--keep-block-stats`` turns that off, Ray Data's own behaviour, to
compare). The rest of what Ray holds for a dataset (its input blocks, made up front, and what
else still rises along it) lives until the dataset ends, so a job runs as one pipeline per
window of videos; ``--window-videos`` sets the videos per
pipeline (0: one pipeline for the job; default: the jobs' default, 2048 on this machine).

    python benchmarks/predict_scale.py                                  # N = 100, 400, 1600
    python benchmarks/predict_scale.py --window-videos 200              # 8 pipelines at 1600
    python benchmarks/predict_scale.py --job ray --videos 2000 --keep-block-stats
    python benchmarks/predict_scale.py --job extract --window-videos 0
    python benchmarks/predict_scale.py --job extract,extract-null,ray --videos 400,4000

What of the driver's growth is Ray's own: ``--job extract-null`` runs the same extraction job
(plan, windows, writer, progress) with stages that only replay the rows the real stages made
for one of the videos (its segments, with each video's id), and ``--job ray`` the same
pipelines of null stages with the rows only counted in the driver (no writer). The three run
the same blocks per video through the same operators and resources; what the driver's heap
does in ``ray`` is Ray Data's and Ray Core's, the difference to ``extract-null`` the project's
driver code, and the rest the real stages' (larger objects, longer runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil  # noqa: E402  (a core dependency)
from scale import each_in_a_process, memory_now, timed  # noqa: E402

from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest  # noqa: E402

CLASSES = ["grow_then_shrink", "slide_up", "rotate_cw_then_ccw"]


def model_file(path: Path) -> Path:
    """An untrained late-product model (h 8, L 2) with tiny3d's extraction settings."""
    import torch

    from reslstm.checkpoint import build_payload
    from reslstm.configs import ExtractConfig
    from reslstm.extraction.settings import resolve_settings
    from reslstm.model import ModelConfig, build_model

    _, settings = resolve_settings(ExtractConfig(manifest="unused", out="unused",
                                                 extractor="tiny3d", crops=1, flow="dis"))
    cfg = ModelConfig(input_dim=settings["rgb"].feature_dim, num_classes=len(CLASSES),
                      hidden_size=8, num_layers=2, input_proj="linear", fusion="late-product")
    torch.manual_seed(0)
    payload = build_payload(build_model(cfg), CLASSES,
                            features={s: dataclasses.asdict(settings[s]) for s in cfg.streams},
                            store="synthetic", train_config={"T": 4, "fusion": cfg.fusion},
                            epoch=1, metrics={})
    torch.save(payload, path)
    return path


REPLAY: dict = {}  # stream -> the feature-stage rows of one video (``--job extract-null``, ``ray``)


def _replay_decode(batch: pa.Table, cfg):
    """Null decode stage: the recorded rows of the item's stream, with its id and path."""
    vid, path = batch.column("video_id")[0], batch.column("path")[0]
    for row in REPLAY[batch.column("stream")[0].as_py()]:
        row = row.set_column(row.schema.get_field_index("video_id"), "video_id", pa.array([vid]))
        yield row.set_column(row.schema.get_field_index("path"), "path", pa.array([path]))


def _null_flow(batch: pa.Table, cfg) -> pa.Table:
    return batch


class _NullFeatures:
    def __init__(self, cfg, streams):
        pass

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch


def record_replay(cfg, path: Path) -> None:
    """The rows the real stages make for one video, per stream, into ``REPLAY``; the pipeline's
    stages replaced by null ones that replay them (module docstring)."""
    from reslstm.distributed.extract import pipeline
    from reslstm.extraction.settings import resolve_settings
    from reslstm.extraction.stages import FeatureStage, decode_segments, flow_stage

    stage, _ = resolve_settings(cfg)
    features = FeatureStage(stage, cfg.streams)
    for s in cfg.streams:
        item = pa.Table.from_pylist([{"video_id": "one", "stream": s, "path": str(path),
                                      "label": 0, "label_name": CLASSES[0], "split": "test"}])
        REPLAY[s] = [features(flow_stage(seg, stage)) for seg in decode_segments(item, stage)]
        assert all(r.column("kind")[0].as_py() == "segment" for r in REPLAY[s]), REPLAY[s]
    pipeline.decode_segments, pipeline.flow_stage = _replay_decode, _null_flow
    pipeline.FeatureStage = _NullFeatures


def ray_only(cfg) -> int:
    """The job's pipelines over its windows, rows counted, nothing written (``--job ray``);
    the driver's heap printed at every fifth window's end."""
    import ray

    from reslstm.configs.options import window_videos
    from reslstm.distributed.extract.pipeline import PipelinePlan, build_pipeline, run_windows
    from reslstm.distributed.runtime import cluster_cpus, cluster_gpus
    from reslstm.extraction.driver import start

    me, ends = psutil.Process(), []

    def build(items):  # a window's pipeline is built when the one before has ended
        ends.append(memory_now(me)[1])
        if len(ends) % 5 == 0:
            print(f"    after {len(ends) - 1} windows: heap {ends[-1] / 2**20:,.0f} MiB "
                  f"(lowest of the last 5: {min(ends[-5:]) / 2**20:,.0f})", flush=True)
        return build_pipeline(items, plan)

    with start(cfg) as run:
        plan = PipelinePlan.make(run.stage, cfg.streams, cluster_cpus(), cluster_gpus(),
                                 ray.cluster_resources().get("object_store_memory", 0))
        window = window_videos(cfg.window_videos, cluster_cpus()) * len(cfg.streams)
        return sum(b.num_rows for b in run_windows(run.items, window, build))


def run(n: int, root: Path, results: dict, job: str, window: int | None,
        keep_stats: bool) -> None:
    import ray

    from reslstm.configs import ExtractConfig, PredictConfig
    from reslstm.datasets.synthetic import synthesize_video, write_mp4
    from reslstm.distributed.extract.job import run_extraction
    from reslstm.distributed.extract.pipeline import BoundedBlockStats
    from reslstm.distributed.predict.batch import run_batch

    videos = root / "videos"
    videos.mkdir(parents=True)
    one = root / "one.mp4"
    write_mp4(synthesize_video("slide_up", 0, seed=3, height=72, width=96), one)
    rows = []
    for i in range(n):
        path = videos / f"v{i:07d}.mp4"
        os.link(one, path)
        rows.append({"video_id": f"v{i:07d}", "path": str(path), "label": i % 3,
                     "label_name": CLASSES[i % 3], "split": "test"})
    manifest = root / "manifest.parquet"
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    if job == "predict":
        cfg = PredictConfig(model=str(model_file(root / "model.pt")), manifest=str(manifest),
                            out=str(root / "out"), chunk_videos=256, window_videos=window)
    else:
        cfg = ExtractConfig(manifest=str(manifest), out=str(root / "store"), extractor="tiny3d",
                            flow="dis", crops=1, window_videos=window, experiment="none")
    if job in ("extract-null", "ray"):
        record_replay(cfg, one)
    if keep_stats:
        BoundedBlockStats.keep = 2 ** 62
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray.data", "reslstm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        if job == "predict":
            summary = timed("batch predict", results, n, lambda: run_batch(cfg))
            done, failed = summary.predicted, summary.failed
        elif job == "ray":
            rows = timed(job, results, n, lambda: ray_only(cfg))
            per_video = sum(len(r) for r in REPLAY.values())
            done, failed = rows // per_video, f"{rows} rows of {n * per_video}"
        else:
            summary = timed(job, results, n, lambda: run_extraction(cfg))
            done, failed = min(summary.written.values()), summary.failed
    finally:
        ray.shutdown()
    if done != n:
        sys.exit(f"{done} of {n} videos done; failures: {failed}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", default="100,400,1600", help="comma list of N")
    p.add_argument("--job", default="predict",
                   help="predict, extract, extract-null or ray, or a comma list of them (module "
                        "docstring)")
    p.add_argument("--window-videos", type=int, default=None,
                   help="videos per Ray Data pipeline (0: one for the whole job)")
    p.add_argument("--keep-block-stats", action="store_true",
                   help="keep every block's statistics, as Ray Data does (module docstring)")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one N in this process
    a = p.parse_args()
    if a.one:
        root = Path(tempfile.mkdtemp(prefix="predict-scale-"))
        results: dict = {}
        try:
            run(a.one, root, results, a.job, a.window_videos, a.keep_block_stats)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print("RESULT " + json.dumps({k: v[a.one] for k, v in results.items()}), flush=True)
        return
    sizes = [int(v) for v in a.videos.split(",")]
    jobs = a.job.split(",")
    if set(jobs) - set(JOBS):
        p.error(f"--job: {', '.join(sorted(set(jobs) - set(JOBS)))} unknown; one of {JOBS}")
    small, large = sizes[0], sizes[-1]
    creep = {}
    for job in jobs:
        args = ["--job", job] + ([] if a.window_videos is None else [
            "--window-videos", str(a.window_videos)]) + (
            ["--keep-block-stats"] if a.keep_block_stats else [])
        results = each_in_a_process(__file__, sizes, args, " ".join([job] + args[2:]))
        stage = "batch predict" if job == "predict" else job
        (t0, m0, o0, _), (t1, m1, o1, c1) = results[stage][small][:4], results[stage][large][:4]
        creep[job] = c1
        print(f"\n{job}: N = {large:,} against N = {small:,}: time per video "
              f"{(t1 / large) / (t0 / small):.2f}x, driver peak RSS growth {m1 / max(m0, 1):.2f}x "
              f"({m0 / 2**20:.0f} -> {m1 / 2**20:.0f} MiB), of its heap (RssAnon: without "
              f"libraries and object-store pages) {o1 / max(o0, 1):.2f}x ({o0 / 2**20:.0f} -> "
              f"{o1 / 2**20:.0f} MiB); from 50 to 90 % of the run at N = {large:,} the heap rose "
              f"{c1 / 1024:+.1f} KB per video ({1e3 * t1 / large:.0f} ms per video)\n",
              flush=True)
    if len(creep) > 1:
        print(f"heap rise per video from 50 to 90 % of the run at N = {large:,}: " + ", ".join(
            f"{job} {c / 1024:+.1f} KB" for job, c in creep.items()))


JOBS = ("predict", "extract", "extract-null", "ray")


if __name__ == "__main__":
    main()
