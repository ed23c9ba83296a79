"""What every MLflow run records besides its own metrics: the data it read and where that came
from (lineage), and the machine it ran on (system metrics).

- ``source_tags``: the entry point and its git commit.
- ``feature_tags`` / ``feature_input``: the feature store a run reads, as tags (one column per
  stream setting in the runs table) and as an MLflow dataset input (``features:<name>``, digest
  of its recorded settings). The extraction run that wrote the store logs the same dataset
  (context ``extraction``) and the store's metadata.json names every such run
  (``extraction_runs``), so a training run carries ``features.extraction_run``: from a
  registered model to its source run, to the extraction that made its features.
- ``SystemMetrics``: MLflow's system metrics monitor (CPU, memory, disk, network; GPU when
  NVML finds one) on a run, sampled every ``SYSTEM_METRICS_S`` seconds on the node of the
  process that logs the run (the job's driver; for a Tune trial, the sweep's driver).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag

from reslstm import features as fs

SYSTEM_METRICS_S = 10.0
EXTRACTION_CONTEXT = "extraction"
TRAINING_CONTEXT = "training"


def source_tags(entry_point: str | None = None) -> dict[str, str]:
    """Where a run comes from: the entry point and, when it lies in a git checkout, the
    commit."""
    entry = entry_point or (os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "python")
    tags = {"mlflow.source.name": str(entry), "mlflow.source.type": "LOCAL"}
    try:
        from mlflow.utils.git_utils import get_git_commit

        commit = get_git_commit(str(Path(entry).parent)) if os.path.exists(entry) else None
    except Exception:  # no git, or not a checkout
        commit = None
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def feature_tags(store: str) -> dict[str, str]:
    """The feature store a run reads and how each stream was made, as tags (columns in the
    runs table: two runs on different features are never compared by accident)."""
    settings = fs.FeatureStore(store).read_metadata()
    tags = {"features.store": str(fs.FeatureStore(store))}
    runs = extraction_runs(store)
    if runs:  # the latest run that wrote into the store; all of them are in its metadata.json
        tags["features.extraction_run"] = runs[-1]["run_id"]
        tags["features.extraction_runs"] = ",".join(r["run_id"] for r in runs)[:5000]
    for stream, s in sorted(settings.items()):
        for key in ("extractor", "weights_id", "flow_method", "crops", "clip_len", "clip_stride"):
            value = getattr(s, key)
            if value is not None:
                tags[f"features.{stream}.{key}"] = str(value)
    return tags


def feature_input(store: str, context: str = TRAINING_CONTEXT) -> DatasetInput:
    """The feature store as an MLflow dataset input (digest: its recorded settings); the
    extraction that writes it logs it with ``context = "extraction"``."""
    fstore = fs.FeatureStore(store)
    settings = {s: vars(v) for s, v in sorted(fstore.read_metadata().items())}
    profile = json.dumps(settings, sort_keys=True, default=str)
    digest = hashlib.sha256(profile.encode()).hexdigest()[:8]
    source_type = "local" if fstore.root.local else fstore.root.uri.split("://", 1)[0]
    dataset = Dataset(name=f"features:{fstore.root.name}", digest=digest, source_type=source_type,
                      source=json.dumps({"uri": str(fstore)}), profile=profile)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])




def extraction_runs(store) -> list[dict]:
    """The MLflow runs that extracted into ``store``, oldest first, as its metadata.json records
    them ({run_id, experiment_id, tracking_uri, started})."""
    return list(fs.FeatureStore(store).read_metadata_extra().get("extraction_runs", []))


class SystemMetrics:
    """MLflow's system metrics monitor on one run (module docstring); ``start`` / ``stop`` (also
    as a context manager). Never fails the run it watches: a monitor that cannot start (no
    psutil) is logged once and skipped."""

    def __init__(self, run_id: str, tracking_uri: str, interval_s: float = SYSTEM_METRICS_S):
        self.run_id, self.tracking_uri, self.interval_s = run_id, tracking_uri, interval_s
        self._monitor = None

    def start(self) -> "SystemMetrics":
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        quiet = logging.getLogger("mlflow.system_metrics")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # "Started monitoring system metrics." per run
        try:
            self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=self.interval_s,
                                                 tracking_uri=self.tracking_uri)
            self._monitor.start()
        except Exception as exc:  # noqa: BLE001 - metrics of the machine are a bonus
            logging.getLogger(__name__).warning(f"no system metrics for run {self.run_id}: {exc}")
            self._monitor = None
        finally:
            quiet.setLevel(level)
        return self

    def stop(self) -> None:
        if self._monitor is None:
            return
        quiet = logging.getLogger("mlflow.system_metrics")
        level = quiet.level
        quiet.setLevel(logging.WARNING)
        try:
            self._monitor.finish()
        finally:
            quiet.setLevel(level)
            self._monitor = None

    def __enter__(self) -> "SystemMetrics":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
