"""Feature extraction on Ray Data: a manifest in, a Parquet feature store out.

Python API::

    from reslstm.configs import ExtractConfig
    from reslstm.distributed.extract.job import run_extraction
    summary = run_extraction(ExtractConfig(manifest="m.parquet", out="features/",
                                           extractor="i3d", weights="rgb_imagenet.pt",
                                           flow_weights="flow_imagenet.pt"))

One work item per (video, stream) runs through the stages of ``reslstm.extraction.stages`` as
the Ray Data pipeline of ``extract_pipeline`` (sized there, with why), and every output row goes
to the driver's ``StoreWriter`` (``reslstm.extraction.driver.drive``): one row per video, in
part files that appear atomically.

Fault tolerance: Ray Data retries the tasks of a lost node and restarts lost actors (it runs
them with ``max_restarts=-1, max_task_retries=-1``); lost blocks are rebuilt from their
lineage; the writer ignores segments that arrive twice. Should the pipeline still fail with a
cluster error (an object or actor lost for good), the driver runs it again on the pairs not
finished (``pipeline_retries``). Killing the driver loses only what was not yet committed:
a rerun extracts exactly what is missing. Rerunning on the same ``out`` extracts only what is
missing (failed videos again only with ``retry_failed``); settings that differ from the store's
are refused unless ``overwrite``.
"""

from __future__ import annotations

import logging
from collections import Counter

import ray

from reslstm import features as fs
from reslstm import storage
from reslstm.configs import ExtractConfig
from reslstm.configs.options import window_videos
from reslstm.distributed.extract.pipeline import PipelinePlan, build_pipeline, run_windows
from reslstm.distributed.runtime import cluster_cpus, cluster_gpus, init_ray
from reslstm.extraction.driver import ExtractSummary, compact, drive, read_manifest, start
from reslstm.extraction.settings import ExtractError
from reslstm.extraction.stages import StageConfig
from reslstm.flow.methods import needs_gpu

log = logging.getLogger(__name__)


def _check_cluster(cfg: ExtractConfig, stage: StageConfig) -> None:
    """Refuse RAFT without a GPU (unless allowed); say what tvl1-torch will cost on CPUs, and
    that it exists on a GPU cluster still running OpenCV's TV-L1 (never switched to by itself:
    see ``reslstm.flow.methods``)."""
    if "flow" not in cfg.streams:
        return
    gpus = cluster_gpus()
    if needs_gpu(stage.flow_method) and not gpus and not cfg.allow_cpu_raft:
        raise ExtractError(f"--flow {cfg.flow} needs a GPU and the cluster has none: pick tvl1, "
                           "tvl1-torch, farneback or dis, or pass --allow-cpu-raft (very slow)")
    if stage.flow_method == "tvl1-torch" and not gpus:
        log.warning("--flow tvl1-torch on a cluster without GPUs: the feature actors compute "
                    "the flow on their CPUs, correctly but several times slower than --flow "
                    "tvl1 (OpenCV)")
    elif stage.flow_method == "tvl1" and gpus:
        log.info("the flow is OpenCV's TV-L1 on the CPUs; --flow tvl1-torch computes the same "
                 "flow on the GPUs (a store records which one made its features)")


def run_extraction(cfg: ExtractConfig, subset=None) -> ExtractSummary:
    """Extract every (video, stream) of the manifest not yet in ``cfg.out``; log a summary.
    ``subset``: only these video_ids (``--calibrate``). The job is an MLflow run unless
    ``cfg.experiment`` is "none" (``reslstm.distributed.tracking.extraction``)."""
    mlrun = None
    if subset is None:
        from reslstm.distributed.tracking.extraction import ExtractionRun, wanted

        mlrun = ExtractionRun(cfg) if wanted(cfg) else None
    try:
        summary = _extract(cfg, subset, mlrun)
    except BaseException as exc:
        if mlrun is not None:
            mlrun.finish(getattr(exc, "summary", None), error=exc)
        raise
    if mlrun is not None:
        mlrun.finish(summary)
    return summary


def _extract(cfg: ExtractConfig, subset, mlrun) -> ExtractSummary:
    where = None

    def check(stage: StageConfig) -> None:
        nonlocal where
        where = init_ray(cfg.address)
        _check_cluster(cfg, stage)

    with start(cfg, check, subset, mlrun.record if mlrun else None) as run:
        if mlrun is not None:
            mlrun.started(run.store, run.settings)
        plan = PipelinePlan.make(run.stage, cfg.streams, cluster_cpus(), cluster_gpus(),
                                 ray.cluster_resources().get("object_store_memory", 0),
                                 cfg.actors, cfg.actor_cpus, cfg.object_store_limit_gb)
        log.info(where)
        if mlrun is not None:
            log.info(f"MLflow run {mlrun.run_id} in experiment {cfg.experiment!r} ({mlrun.uri})")
        log.info(f"{len(run.items)} (video, stream) pairs to extract with {cfg.extractor} "
                 f"(weights {', '.join(f'{s}={v.weights_id}' for s, v in run.settings.items())}), "
                 f"crops={cfg.crops}, clips of {run.stage.clip_len} every {run.stage.clip_stride} "
                 "frames" + (f" at {cfg.fps:g} fps" if cfg.fps else "")
                 + (f", flow={cfg.flow}" if "flow" in cfg.streams else ""))
        log.info(f"segments in the object store: at most {plan.object_store_bytes / 2 ** 20:,.0f} "
                 "MiB" + ("" if cfg.object_store_limit_gb else " (--object-store-limit-gb to change)"))
        window = window_videos(cfg.window_videos, cluster_cpus())
        if window and len(run.items) > window * len(cfg.streams):
            log.info(f"one pipeline per {window} videos (--window-videos): the driver's memory "
                     "follows the window, not the job")
        return drive(run, lambda todo: run_windows(todo, window * len(cfg.streams),
                                                   lambda w: build_pipeline(w, plan)),
                     retry_if=cluster_failure)


def cluster_failure(exc: BaseException) -> bool:
    """A failure of the cluster (a node, a worker or an object lost), not of our code: the
    stages turn every error of theirs into a failure row, so nothing else reaches the driver."""
    import ray.exceptions as rex

    if isinstance(exc, rex.RayTaskError):
        return isinstance(exc.cause, rex.RayError) and cluster_failure(exc.cause)
    if isinstance(exc, rex.RayActorError) and exc.actor_init_failed:
        return False  # a feature actor that cannot start (e.g. its weights): ours, not the cluster's
    return isinstance(exc, (rex.ObjectLostError, rex.RayActorError, rex.NodeDiedError,
                            rex.WorkerCrashedError, rex.LocalRayletDiedError, rex.RaySystemError))


def failure_counts(store) -> Counter:
    """Current failures of a store by error type."""
    return Counter(fs.read_failures(store).column("error_type").to_pylist())


def compact_store(out: str, part_mib: float) -> dict:
    """Merge the small part files of the store at ``out`` (``--compact-only``), under its lock."""
    store = fs.FeatureStore(out)
    if not store.root.join(fs.METADATA_FILE).exists():
        raise ExtractError(f"{store}: no {fs.METADATA_FILE}; not a feature store")
    with store.lock():
        done = compact(store, part_mib)
    if not any(c.merged for c in done.values()):
        log.info(f"{store}: nothing to compact (" + "; ".join(
            c.line(name) for name, c in done.items()) + ")")
    return done


def verify(out: str, manifest: str | None = None) -> bool:
    """Check a feature store row by row (``features.verify_store``) against its manifest
    (the one recorded in its metadata unless given); log the report; True when all is well."""
    store = fs.FeatureStore(out)
    if not store.root.join(fs.METADATA_FILE).exists():
        raise ExtractError(f"{store}: no {fs.METADATA_FILE}; not a feature store")
    manifest = manifest or store.read_metadata_extra().get("manifest")
    # A recorded manifest on the store's object storage is read with the store's filesystem.
    table = read_manifest(storage.resolve(manifest, like=store.root)) if manifest else None
    report = fs.verify_store(store, table)
    log.info(f"[verify] {store}" + (f" against {storage.display(manifest)}" if manifest
                                  else " (no manifest to check coverage)"), extra={"block": True})
    log.info(report.text(), extra={"block": True})
    return report.ok
