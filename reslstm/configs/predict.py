"""jobs/predict.py's and jobs/serve.py's settings."""

from __future__ import annotations

from dataclasses import dataclass

from .options import _check, _positive, opt


@dataclass
class PredictConfig:
    """jobs/predict.py and the Serve app: a trained model classifies new videos, extracting
    their features exactly as its training features were (``reslstm.inference.predictor``)."""

    model: str = opt(help="the model: a run directory of jobs/train.py, a checkpoint "
                     "directory, a model.pt file (path or URI), or models:/NAME@ALIAS")
    videos: tuple[str, ...] = opt((), cli=False)  # the job's positional VIDEO arguments
    manifest: str | None = opt(None, "batch on Ray: a manifest Parquet (video_id, path) or a "
                               "folder of videos")
    out: str | None = opt(None, "batch: output directory (predictions/, failures/; a rerun "
                          "predicts only what is missing)")
    top_k: int = opt(5, "classes listed per stream and fused")
    as_json: bool = opt(False, "print one JSON object per video", flag="json")
    sheet: str | None = opt(None, "also draw a PNG: a few frames and the top-k bars of each video")
    weights: str | None = opt(None, "RGB extractor weights, when the model's features came from a "
                              "weights file (checked against the sha256 recorded with the model)")
    flow_weights: str | None = opt(None, "flow extractor weights, likewise")
    raft_weights: str | None = opt(None, "RAFT weights file, when the model's flow came from one")
    device: str | None = opt(None, "device of the extractors: cpu or cuda (default: cuda when "
                             "there is one)")
    batch_size: int = opt(32, "clips per forward pass of the 3D CNN")
    clips_per_segment: int = opt(32, "clips decoded and extracted together (bounds memory)")
    min_frame_ratio: float | None = opt(0.9, "fail a video that decodes fewer than this share of "
                                        "its declared frames")
    allow_cpu_raft: bool = opt(False, "let a RAFT-flow model run RAFT without a GPU (slow)")
    mlflow_uri: str | None = opt(None, "MLflow tracking URI for models:/ references (default: "
                                 "MLFLOW_TRACKING_URI)")
    actors: int | None = opt(None, "batch: feature actors at most (default: one per GPU, or "
                             "CPUs / 2)")
    actor_cpus: float | None = opt(None, "batch: CPUs each feature actor reserves")
    chunk_videos: int = opt(128, "batch: videos per pipeline run; each run's predictions are "
                            "written when it ends (what a killed job loses at most)")
    retry_failed: bool = opt(False, "batch: predict the videos that failed before again")
    overwrite: bool = opt(False, "batch: discard --out's predictions when they came from "
                          "another model")
    address: str | None = opt(None, "batch: Ray cluster address (default: RAY_ADDRESS, else a "
                              "local Ray)")

    def __post_init__(self):
        _check(self, bool(self.model), "model", "is required (a run directory, checkpoint, "
               "model.pt or models:/NAME@ALIAS)")
        self.videos = tuple(self.videos)
        _positive(self, "top_k", "batch_size", "clips_per_segment", "chunk_videos")
        _positive(self, "actors", allow_none=True)
        _check(self, self.device is None or self.device == "cpu" or self.device.startswith("cuda"),
               "device", f"must be cpu or cuda[:N], got {self.device!r}")
        _check(self, self.min_frame_ratio is None or 0 < self.min_frame_ratio <= 1,
               "min_frame_ratio", f"must be in (0, 1], got {self.min_frame_ratio}")
        _check(self, self.actor_cpus is None or self.actor_cpus >= 0, "actor_cpus",
               f"must be >= 0, got {self.actor_cpus}")


@dataclass
class ServeConfig:
    """jobs/serve.py and ``serve run reslstm.distributed.serve.app:build``: the Ray Serve app."""

    predict: PredictConfig | None = opt(None, cli=False)  # None: from RESLSTM_MODEL_URI
    host: str = opt("127.0.0.1", "address Serve's HTTP proxy listens on (0.0.0.0: every "
                    "interface, reachable from other machines)")
    port: int = opt(8000, "HTTP port")
    replicas: int = opt(1, "replicas, each with the model and extractors loaded once")
    replica_cpus: float = opt(1.0, "CPUs each replica reserves")
    replica_gpus: float = opt(0.0, "GPUs each replica reserves")
    max_ongoing_requests: int = opt(4, "requests a replica accepts at once (it classifies one "
                                    "at a time; the others wait in it)")
    max_upload_mb: float = opt(200.0, "largest video accepted, in MiB (an upload, or a URI's "
                               "object); larger requests get 413")
    allow_paths: bool = opt(True, "accept requests that name a path or URI the replicas read")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self):
        _positive(self, "port", "replicas", "max_ongoing_requests", "max_upload_mb")
        _check(self, self.replica_cpus >= 0, "replica_cpus", f"must be >= 0, got {self.replica_cpus}")
        _check(self, self.replica_gpus >= 0, "replica_gpus", f"must be >= 0, got {self.replica_gpus}")
