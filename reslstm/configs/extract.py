"""jobs/extract.py's settings."""

from __future__ import annotations

from dataclasses import dataclass

from reslstm.flow.methods import METHODS, RAFT_SIZES
from reslstm.fusion import STREAMS
from reslstm.video.clips import CROPS

from .options import WINDOW_HELP, _check, _check_window, _one_of, _positive, opt


@dataclass
class ExtractConfig:
    """jobs/extract.py: a manifest in, a feature store out (``distributed.extract.job``)."""

    out: str = opt(help="feature store directory or URI (created; reruns resume)")
    manifest: str | None = opt(None, "manifest Parquet (video_id, path, label, label_name, split)")
    streams: tuple[str, ...] = opt(STREAMS, f"comma list of {', '.join(STREAMS)}", items=str)
    extractor: str = opt("i3d", "3D CNN: i3d, c3d, r3d_18, mc3_18, r2plus1d_18, s3d, swin3d_t, tiny3d")
    weights: str | None = opt(None, "RGB weights: a file, a torchvision name (KINETICS400_V1) "
                              "or 'none' (random init, recorded as random-init)")
    flow_weights: str | None = opt(None, "flow weights, likewise")
    flow: str = opt("tvl1", "optical flow: tvl1 (OpenCV's TV-L1 on CPUs, what pretrained flow "
                    "models expect), farneback, dis (CPU); tvl1-torch (the same TV-L1 in PyTorch, "
                    "in the feature actors: on their GPUs), raft (GPU)",
                    choices=METHODS)
    clip_len: int | None = opt(None, "frames per clip (default: the model's, 16)")
    clip_stride: int = opt(8, "a clip starts every N frames")
    crops: int = opt(10, "10 crops (eq. 5) or the centre crop", choices=CROPS)
    size: int | None = opt(None, "short side frames are decoded at (default: the model's)")
    fps: float | None = opt(None, "take frames at this many per second, picked by timestamp "
                            "(no re-encoding), so clips span the same seconds in every video; "
                            "above a video's own rate frames repeat and its rows say so "
                            "(default: every decoded frame)")
    batch_size: int = opt(32, "clips per forward pass")
    actors: int | None = opt(None, "feature actors at most (default: one per GPU, or CPUs / 2)")
    actor_cpus: float | None = opt(None, "CPUs each feature actor reserves (default: 1 with "
                                   "GPUs, 0 on a CPU-only cluster; raise it when the model is "
                                   "the slow stage)")
    clips_per_segment: int = opt(32, "clips decoded and extracted together (bounds memory "
                                 "for long videos)")
    min_frame_ratio: float | None = opt(0.9, "fail a video that decodes fewer than this share "
                                        "of its declared frames; above it the row carries a warning")
    max_failed: float = opt(0.1, "exit with status 1 when more than this share of the (video, "
                            "stream) pairs a run attempts fail (what could be extracted stays "
                            "written; the failures table says why each failed)")
    retry_failed: bool = opt(False, "retry the videos that failed before")
    overwrite: bool = opt(False, "discard the streams' rows when the settings differ")
    allow_cpu_raft: bool = opt(False, "let --flow raft run without a GPU (very slow)")
    raft_size: str = opt("large", "RAFT model", choices=RAFT_SIZES)
    raft_weights: str | None = opt("C_T_V2", "RAFT weights: a torchvision Raft_*_Weights name "
                                   "(from torchvision's cache), a file, or 'none' (tests only)")
    window_videos: int | None = opt(None, WINDOW_HELP)
    object_store_limit_gb: float | None = opt(None, "cap on the segments held in the object "
                                              "store (default: 8 segments per worker, at most "
                                              "half the object store)")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    mlflow_uri: str | None = opt(None, "MLflow tracking URI of the extraction's run (default: "
                                 "MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db)")
    experiment: str = opt("reslstm-extraction", "MLflow experiment of the extraction's run "
                          "('none': no run)")
    part_mib: float = opt(128.0, "a part file is written when a stream holds this many MiB of "
                          "rows (and at least once a minute, so a killed job loses little)")
    compact: bool = opt(True, "at the end of the job, merge the store's small part files into "
                        "files of about --part-mib (atomically: a reader sees each row once)")
    rows_per_file: int | None = opt(None, cli=False)  # also flush at this many rows (tests)
    progress_every_s: float = opt(10.0, cli=False)
    pipeline_retries: int = opt(2, cli=False)  # reruns of unfinished pairs after a cluster failure
    extractor_options: dict = opt(factory=dict, cli=False)

    def __post_init__(self):
        _check(self, bool(self.manifest), "manifest", "is required (it lists the videos to extract)")
        self.streams = tuple(self.streams)
        _check(self, bool(self.streams) and all(s in STREAMS for s in self.streams)
               and len(set(self.streams)) == len(self.streams), "streams",
               f"must be a comma list of {', '.join(STREAMS)}, got {','.join(self.streams)!r}")
        _one_of(self, "crops", CROPS)
        _one_of(self, "raft_size", RAFT_SIZES)
        _positive(self, "clip_stride", "batch_size", "clips_per_segment", "part_mib")
        _positive(self, "clip_len", "size", "actors", "object_store_limit_gb", "fps",
                  "rows_per_file", allow_none=True)
        _check(self, self.actor_cpus is None or self.actor_cpus >= 0, "actor_cpus",
               f"must be >= 0, got {self.actor_cpus}")
        _check(self, self.min_frame_ratio is None or 0 < self.min_frame_ratio <= 1, "min_frame_ratio",
               f"must be in (0, 1], got {self.min_frame_ratio}")
        _check(self, self.pipeline_retries >= 0, "pipeline_retries", "must be >= 0")
        _check_window(self)
        _check(self, 0 <= self.max_failed <= 1, "max_failed",
               f"must be a share in [0, 1], got {self.max_failed}")
