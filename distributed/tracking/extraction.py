"""The MLflow run of an extraction (``jobs/extract.py``; experiment ``reslstm-extraction`` by
default, ``--experiment none`` for no run).

``ExtractionRun`` opens the run before the store is touched, and the store's metadata.json
records it (``record``: run id, experiment, tracking URI, start) in ``extraction_runs``, one
entry per job that wrote into the store. Once the store is prepared the run gets:

- params: the store, manifest, streams, extractor, each stream's weights id, crops, clip length
  and stride, decoding size, flow method, ``fps`` (the rate, or ``native``);
- the store as a dataset input (``lineage.feature_input``, context ``extraction``): the same
  name and digest every training run on the store logs, and the MLflow datasets table lists it;
- system metrics of the driver's node while it runs (``lineage.SystemMetrics``).

At the end (``finish``): metrics (rows written per stream, clips, failures, warnings, seconds,
videos/s and clips/s, and per stage the seconds worked, the seconds per video and the videos
per second one worker of that stage does), the store's failures table as artifacts
(``failures.csv`` and ``failures.parquet``, the pairs still failed after this run), and FINISHED,
or FAILED (KILLED when interrupted) with the error's first line as the tag ``error``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from reslstm import features as fs
from reslstm.configs import ExtractConfig

from .experiments import ensure_experiment, param_value, tracking_uri
from .lineage import EXTRACTION_CONTEXT, SystemMetrics, feature_input, source_tags

EXPERIMENT = "reslstm-extraction"
KIND_TAG = "reslstm.kind"


def wanted(cfg: ExtractConfig) -> bool:
    """Whether the job logs a run (``--experiment none`` turns it off)."""
    return bool(cfg.experiment) and cfg.experiment.lower() != "none"


class ExtractionRun:
    """One extraction job's MLflow run (module docstring)."""

    def __init__(self, cfg: ExtractConfig):
        self.cfg = cfg
        self.uri = tracking_uri(cfg.mlflow_uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = ensure_experiment(self.client, cfg.experiment)
        store = fs.FeatureStore(cfg.out)
        run = self.client.create_run(self.experiment_id, run_name=f"extract {store.root.name}",
                                     tags={KIND_TAG: "extraction", "features.store": str(store),
                                           **source_tags()})
        self.run_id = run.info.run_id
        self.record = {"run_id": self.run_id, "experiment_id": self.experiment_id,
                       "tracking_uri": self.uri, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.system = SystemMetrics(self.run_id, self.uri).start()

    def started(self, store: fs.FeatureStore, settings: dict[str, fs.StreamSettings]) -> None:
        """The run's params and its dataset, once the store holds this job's settings."""
        cfg = self.cfg
        first = next(iter(settings.values()))
        params = {"store": str(store), "manifest": cfg.manifest, "streams": ",".join(settings),
                  "extractor": first.extractor, "crops": first.crops, "clip_len": first.clip_len,
                  "clip_stride": first.clip_stride, "size": first.resize_short,
                  "fps": first.fps or "native",
                  **{f"weights_id.{s}": v.weights_id for s, v in settings.items()},
                  "flow_method": settings["flow"].flow_method if "flow" in settings else ""}
        self.client.log_batch(self.run_id, params=[Param(k, param_value(v))
                                                   for k, v in sorted(params.items())])
        # The store as the job opened it (cfg.out: a URI may carry its endpoint and credentials;
        # str(store) is the form for people, without them).
        self.client.log_inputs(self.run_id, datasets=[feature_input(cfg.out, EXTRACTION_CONTEXT)])

    def finish(self, summary=None, error: BaseException | None = None) -> None:
        """Metrics of ``summary`` (an ``ExtractSummary``), the failures table, the status."""
        self.system.stop()
        try:
            if summary is not None:
                self._log_summary(summary)
            self._log_failures()
        finally:
            if error is not None:
                first = (str(error).strip().splitlines() or [type(error).__name__])[0]
                self.client.set_tag(self.run_id, "error", first[:5000])
            status = ("FINISHED" if error is None else
                      "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            self.client.set_terminated(self.run_id, status)

    def _log_summary(self, summary) -> None:
        now = int(time.time() * 1000)
        values = {"videos_written": summary.videos, "clips": summary.clips,
                  "failed": sum(summary.failed.values()), "warnings": summary.warnings,
                  "seconds": summary.seconds, "videos_per_s": summary.videos_per_s,
                  "clips_per_s": summary.clips / summary.seconds if summary.seconds > 0 else 0.0,
                  "skipped_done": summary.skipped_done, "skipped_failed": summary.skipped_failed,
                  **{f"videos_written_{s}": n for s, n in summary.written.items()}}
        for stage, busy in summary.stage_seconds.items():
            values[f"{stage}_seconds"] = busy
            if summary.videos and busy > 0:
                values[f"{stage}_s_per_video"] = busy / summary.videos
                values[f"{stage}_videos_per_s"] = summary.videos / busy  # one worker of it
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0)
                                                    for k, v in values.items()],
                              tags=[RunTag("failures_table", summary.failures_path)])

    def _log_failures(self) -> None:
        table = fs.read_failures(self.cfg.out)
        if table.num_rows == 0:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name, write in (("failures.parquet", pq.write_table),
                                ("failures.csv", pacsv.write_csv)):
                write(table, str(Path(tmp) / name))
                self.client.log_artifact(self.run_id, str(Path(tmp) / name))
