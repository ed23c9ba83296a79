"""jobs/predict.py's and jobs/serve.py's settings."""

from __future__ import annotations

from dataclasses import dataclass

from .options import WINDOW_HELP, _check, _check_window, _positive, opt


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
    timeline: str | None = opt(None, "a folder: per video the running prediction after each of "
                               "the T steps with the seconds each covers (NAME.timeline.csv, "
                               ".json and .png)")
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
    chunk_videos: int = opt(128, "batch: predictions are written every N videos (what a "
                            "killed job loses at most)")
    window_videos: int | None = opt(None, "batch: " + WINDOW_HELP)
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
        _check_window(self)
        _check(self, not (self.timeline and self.manifest), "timeline",
               "works on the video files given on the command line, not with --manifest")
        _check(self, self.device is None or self.device == "cpu" or self.device.startswith("cuda"),
               "device", f"must be cpu or cuda[:N], got {self.device!r}")
        _check(self, self.min_frame_ratio is None or 0 < self.min_frame_ratio <= 1,
               "min_frame_ratio", f"must be in (0, 1], got {self.min_frame_ratio}")
        _check(self, self.actor_cpus is None or self.actor_cpus >= 0, "actor_cpus",
               f"must be >= 0, got {self.actor_cpus}")


@dataclass
class ServeConfig:
    """jobs/serve.py and ``serve run reslstm.distributed.serve.app:build``: the Ray Serve app
    (README "Serving": what each limit does and which answer a client gets)."""

    predict: PredictConfig | None = opt(None, cli=False)  # None: from RESLSTM_MODEL_URI
    host: str = opt("127.0.0.1", "address Serve's HTTP proxy listens on (0.0.0.0: every "
                    "interface, reachable from other machines: set a token)")
    port: int = opt(8000, "HTTP port")
    token_file: str | None = opt(None, "a file holding the bearer token every route but /health "
                                 "needs (or the RESLSTM_TOKEN variable); without one anyone who "
                                 "reaches the port may classify videos")
    allow_prefix: tuple[str, ...] = opt((), "a local folder or URI prefix (s3://bucket/in/) under "
                                        "which requests may name videos by path; repeatable. "
                                        "None: requests must upload the video", repeat=True)
    replicas: int = opt(1, "replicas, each with the model and extractors loaded once (a fixed "
                        "count; see --min-replicas/--max-replicas)")
    min_replicas: int | None = opt(None, "autoscaling: fewest replicas (with --max-replicas)")
    max_replicas: int | None = opt(None, "autoscaling: most replicas; Serve adds one when the "
                                   "ongoing requests per replica pass --target-ongoing")
    target_ongoing: float = opt(2.0, "autoscaling: ongoing requests per replica Serve aims at")
    replica_cpus: float = opt(1.0, "CPUs each replica reserves")
    replica_gpus: float = opt(0.0, "GPUs each replica reserves")
    max_ongoing_requests: int = opt(4, "requests a replica accepts at once (at least --max-batch; "
                                    "it decodes one at a time and batches their model steps)")
    max_queued_requests: int = opt(8, "requests held for busy replicas; one more gets 503 with "
                                   "Retry-After at once")
    retry_after: int = opt(2, "seconds a 503 asks the client to wait (Retry-After)")
    request_timeout: float = opt(300.0, "seconds a classification may take; then 504 and the "
                                 "replica moves on")
    max_batch: int = opt(4, "requests whose features and model step run together")
    batch_wait_ms: float = opt(10.0, "how long a batch waits for more requests, in ms")
    max_upload_mb: float = opt(200.0, "largest video accepted, in MiB (an upload, or a URI's "
                               "object); larger requests get 413")
    upload_dir: str | None = opt(None, "folder for uploads while they are classified (default: "
                                 "the system's temporary folder)")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)")

    def __post_init__(self):
        self.allow_prefix = tuple(self.allow_prefix or ())
        _positive(self, "port", "replicas", "max_ongoing_requests", "max_upload_mb",
                  "max_queued_requests", "request_timeout", "max_batch", "target_ongoing")
        _positive(self, "max_replicas", allow_none=True)
        _check(self, self.replica_cpus >= 0, "replica_cpus", f"must be >= 0, got {self.replica_cpus}")
        _check(self, self.replica_gpus >= 0, "replica_gpus", f"must be >= 0, got {self.replica_gpus}")
        _check(self, self.retry_after >= 0, "retry_after", f"must be >= 0, got {self.retry_after}")
        _check(self, self.batch_wait_ms >= 0, "batch_wait_ms", f"must be >= 0, got {self.batch_wait_ms}")
        _check(self, (self.min_replicas is None) == (self.max_replicas is None), "max_replicas",
               "autoscaling needs both --min-replicas and --max-replicas")
        if self.max_replicas is not None:
            _check(self, 0 <= self.min_replicas <= self.max_replicas, "min_replicas",
                   f"must be in 0..--max-replicas ({self.max_replicas}), got {self.min_replicas}")
        _check(self, self.max_ongoing_requests >= self.max_batch, "max_ongoing_requests",
               f"must be at least --max-batch ({self.max_batch}) for batches to fill, got "
               f"{self.max_ongoing_requests}")

    @property
    def autoscaling(self) -> dict | None:
        """Serve's autoscaling_config, or None for a fixed number of replicas."""
        if self.max_replicas is None:
            return None
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "target_ongoing_requests": self.target_ongoing}
