"""The settings of every job, as typed dataclasses: extraction, training, sweeps, the demo.

Each field carries its command-line help in its metadata (``opt``), so ``reslstm.cli`` turns a
config into arguments and back without restating it, and every job documents the same
defaults. Configs check their values where they are made (``__post_init__``): a bad value
fails at once with the option's name, not later inside a Ray worker. Ray workers receive these
objects as they are (``train_loop_config``); nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reslstm.fusion import FUSION_NAMES

STREAMS = ("rgb", "flow")
CROPS = (1, 10)
PROJECTIONS = ("pca", "linear", "none")
ARCHS = ("reslstm", "meanpool")
USE_GPU = ("auto", "yes", "no")
SEARCHES = ("grid", "random")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory=None, **meta) -> Any:
    """A dataclass field with command-line metadata: ``help``; ``flag`` (another option name);
    ``choices``; ``items`` (element type of a comma list); ``cli=False`` (not an option). A
    field without a default is a required option."""
    kwargs = {"default_factory": factory} if factory is not None else {"default": default}
    return field(**kwargs, metadata={"help": help, **meta})


def flag_of(cls_or_cfg, name: str) -> str:
    """The command-line option of field ``name``: ``--batch-size``, or its ``flag`` metadata."""
    meta = {f.name: f.metadata for f in dataclasses.fields(cls_or_cfg)}.get(name, {})
    return "--" + meta.get("flag", name).replace("_", "-")


def _check(cfg, ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{flag_of(cfg, name)}: {message}")


def _positive(cfg, *names: str, allow_none: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None and allow_none:
            continue
        _check(cfg, value is not None and value > 0, name, f"must be > 0, got {value!r}")


def _one_of(cfg, name: str, choices) -> None:
    value = getattr(cfg, name)
    _check(cfg, value in choices, name,
           f"must be one of {', '.join(map(str, choices))}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

@dataclass
class ExtractConfig:
    """jobs/extract.py: a manifest in, a feature store out (``distributed.extract``)."""

    out: str = opt(help="feature store directory or URI (created; reruns resume)")
    manifest: str | None = opt(None, "manifest Parquet (video_id, path, label, label_name, split)")
    streams: tuple[str, ...] = opt(("rgb", "flow"), "comma list of rgb, flow", items=str)
    extractor: str = opt("i3d", "3D CNN: i3d, c3d, r3d_18, mc3_18, r2plus1d_18, s3d, swin3d_t, tiny3d")
    weights: str | None = opt(None, "RGB weights: a file, a torchvision name (KINETICS400_V1) "
                              "or 'none' (random init, recorded as random-init)")
    flow_weights: str | None = opt(None, "flow weights, likewise")
    flow: str = opt("tvl1", "optical flow: tvl1 (OpenCV's TV-L1 on CPUs, what pretrained flow "
                    "models expect), farneback, dis (CPU); tvl1-torch (the same TV-L1 in PyTorch, "
                    "in the feature actors: on their GPUs), raft (GPU)",
                    choices=("tvl1", "farneback", "dis", "tvl1-torch", "raft"))
    clip_len: int | None = opt(None, "frames per clip (default: the model's, 16)")
    clip_stride: int = opt(8, "a clip starts every N frames")
    crops: int = opt(10, "10 crops (eq. 5) or the centre crop", choices=CROPS)
    size: int | None = opt(None, "short side frames are decoded at (default: the model's)")
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
    raft_size: str = opt("large", "RAFT model", choices=("small", "large"))
    raft_weights: str | None = opt("C_T_V2", "RAFT weights: a torchvision Raft_*_Weights name "
                                   "(from torchvision's cache), a file, or 'none' (tests only)")
    object_store_limit_gb: float | None = opt(None, "cap on the segments held in the object "
                                              "store (default: 8 segments per worker, at most "
                                              "half the object store)")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    rows_per_file: int = opt(256, cli=False)
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
        _one_of(self, "raft_size", ("small", "large"))
        _positive(self, "clip_stride", "batch_size", "clips_per_segment", "rows_per_file")
        _positive(self, "clip_len", "size", "actors", "object_store_limit_gb", allow_none=True)
        _check(self, self.actor_cpus is None or self.actor_cpus >= 0, "actor_cpus",
               f"must be >= 0, got {self.actor_cpus}")
        _check(self, self.min_frame_ratio is None or 0 < self.min_frame_ratio <= 1, "min_frame_ratio",
               f"must be in (0, 1], got {self.min_frame_ratio}")
        _check(self, self.pipeline_retries >= 0, "pipeline_retries", "must be >= 0")
        _check(self, 0 <= self.max_failed <= 1, "max_failed",
               f"must be a share in [0, 1], got {self.max_failed}")


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    """One training run (jobs/train.py, and each trial of a sweep). ``fusion`` (``--stream``)
    is one stream, a mid fusion (one Res-LSTM on the fused inputs) or a late fusion (one
    Res-LSTM per stream, softmaxes fused)."""

    features: str = opt(help="feature store (jobs/extract.py --out)")
    out: str = opt("runs/train", "run directory (predictions/, summary.json)")
    fusion: str = opt("rgb", "one stream, mid fusion or late fusion", flag="stream",
                      choices=FUSION_NAMES)
    hidden: int = opt(1024, "hidden size h")
    depth: int = opt(2, "stacked LSTM layers L")
    T: int = opt(25, "clips sampled per video")
    input_proj: str = opt("pca", "d_f -> h: PCA fitted on training clips (as the paper), a "
                          "learned linear map, or none (needs d_f == h)", choices=PROJECTIONS)
    residual: bool = opt(True, "residual connections between layers")
    dropout: float = opt(0.0, "dropout on x^0 and m_T^L")
    arch: str = opt("reslstm", "reslstm, or meanpool (mean over t + linear: the order-blind "
                    "baseline)", choices=ARCHS)
    epochs: int = opt(20, "epochs")
    batch_size: int = opt(32, "videos per batch and worker")
    lr: float = opt(1e-3, "RMSProp learning rate")
    seed: int = opt(0, "initial weights, shuffling and PCA sample")
    workers: int = opt(2, "data-parallel workers")
    use_gpu: str = opt("auto", "one GPU per worker, NCCL (auto: when the cluster has GPUs)",
                       choices=USE_GPU)
    storage_path: str | None = opt(None, "Ray Train storage for checkpoints (default "
                                   "OUT/ray_results; s3://... or NFS on a multi-node cluster)")
    pca_max_vectors: int = opt(50_000, "training clip vectors PCA is fitted on, at most")
    cpus_per_worker: float | None = opt(None, "CPUs each worker reserves (default: min(1, "
                                        "cluster CPUs / workers))")
    cache_data: bool = opt(True, "workers keep their data shard in memory after the first epoch")
    name: str | None = opt(None, "a fixed run name: rerunning with the same name and storage "
                           "continues the run where it stopped (default: a new unique name)")
    max_failures: int = opt(3, "restarts of the worker group after a worker or node is lost; "
                            "training resumes from the latest checkpoint (-1: no limit)")

    def __post_init__(self):
        _one_of(self, "fusion", FUSION_NAMES)
        _one_of(self, "input_proj", PROJECTIONS)
        _one_of(self, "arch", ARCHS)
        _one_of(self, "use_gpu", USE_GPU)
        _positive(self, "hidden", "depth", "T", "epochs", "batch_size", "lr", "workers",
                  "pca_max_vectors")
        _positive(self, "cpus_per_worker", allow_none=True)
        _check(self, 0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self, self.max_failures >= -1, "max_failures", f"must be >= -1, got {self.max_failures}")
        _check(self, self.name is None or (self.name.strip() and "/" not in self.name), "name",
               f"must be a non-empty name without '/', got {self.name!r}")

    def resolved_storage(self) -> str:
        """Where Ray Train keeps checkpoints: an absolute local path or a URI."""
        if self.storage_path:
            sp = self.storage_path
            return sp if "://" in sp else str(Path(sp).expanduser().resolve())
        return str((Path(self.out) / "ray_results").resolve())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SEARCHED = ("hidden", "depth", "T", "fusion", "residual")  # SweepConfig's comma lists


def parse_bool(text: str) -> bool:
    """on/off, true/false, yes/no, 1/0 (a value of a comma list of booleans)."""
    value = str(text).strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"{text!r} is not on/off")


@dataclass
class SweepConfig:
    """jobs/tune.py: the base run and the values searched (comma lists on the command line)."""

    base: TrainConfig = opt(cli=False)
    hidden: tuple[int, ...] = opt((1024,), "hidden sizes h", items=int)
    depth: tuple[int, ...] = opt((2,), "depths L", items=int)
    T: tuple[int, ...] = opt((25,), "clips per video", items=int)
    fusion: tuple[str, ...] = opt(("late-product",), f"of {', '.join(FUSION_NAMES)}", items=str)
    residual: tuple[bool, ...] = opt((True,), "residual connections: on, off or on,off",
                                     items=parse_bool)
    seeds: int = opt(1, "seeds per configuration (--seed, --seed + 1, ...); results are "
                     "reported as mean +- std over them")
    scheduler: str = opt("asha", "asha: stop weak trials early; none: train every trial to the "
                         "end (compare configurations fairly)", choices=("asha", "none"))
    test_all: bool = opt(False, "evaluate every trial on test (default: only the best)")
    search: str = opt("grid", "grid: every combination (x --num-samples); random: "
                      "--num-samples draws from the lists", choices=SEARCHES)
    num_samples: int = opt(1, "see --search")
    grace_period: int = opt(1, "ASHA: epochs before a trial may be stopped")
    max_concurrent: int | None = opt(None, "trials at once (default: what the cluster fits, "
                                     "each trial holding 1 CPU for its driver plus its workers')")
    mlflow_uri: str | None = opt(None, "MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    experiment: str | None = opt(None, "MLflow experiment (default reslstm-sweep-<timestamp>)")
    name: str | None = opt(None, "a fixed sweep name: the same command again resumes the sweep "
                           "(finished trials are kept, unfinished ones continue from their last "
                           "checkpoint); default: a new unique name")
    retry_errored: bool = opt(False, "when resuming, also rerun the trials that failed")
    register_model: str | None = opt("reslstm", "register the best model under this name in "
                                     "MLflow's model registry, alias 'champion' ('none': don't)")

    def __post_init__(self):
        if self.register_model is not None and self.register_model.lower() in ("", "none"):
            self.register_model = None
        for name in SEARCHED:
            values = tuple(getattr(self, name))
            _check(self, bool(values), name, "needs at least one value")
            setattr(self, name, values)
            for v in values:  # each value must make a valid run
                try:
                    dataclasses.replace(self.base, **{name: v})
                except ValueError as exc:
                    message = str(exc).split(": ", 1)[-1]
                    raise ValueError(f"{flag_of(self, name)}: value {v!r} {message}") from None
        _one_of(self, "search", SEARCHES)
        _one_of(self, "scheduler", ("asha", "none"))
        _positive(self, "seeds")
        _check(self, self.name is None or (self.name.strip() and "/" not in self.name), "name",
               f"must be a non-empty name without '/', got {self.name!r}")
        _positive(self, "num_samples", "grace_period")
        _positive(self, "max_concurrent", allow_none=True)


# ---------------------------------------------------------------------------------------------
# The demo
# ---------------------------------------------------------------------------------------------

@dataclass
class DemoConfig:
    """jobs/demo.py: the whole pipeline on the built-in synthetic set."""

    out: str = opt("demo_output", "output directory")
    videos_per_class: int = opt(40, "synthetic videos per class (11 classes)")
    seed: int = opt(0, "data, weights and shuffling seed")
    flow: str = opt("dis", "optical flow (dis: fast on a CPU)", choices=("tvl1", "farneback", "dis"))
    hidden: tuple[int, ...] = opt((64, 128), "hidden sizes to sweep", items=int)
    depth: tuple[int, ...] = opt((1, 2), "depths to sweep", items=int)
    T: tuple[int, ...] = opt((8,), "clips per video to sweep", items=int)
    fusion: tuple[str, ...] = opt(("late-product",), "fusions to sweep", items=str)
    epochs: int = opt(30, "epochs per trial")
    grace_period: int = opt(10, "ASHA compares trials only after this many epochs")
    batch_size: int = opt(16, "videos per batch")
    workers: int = opt(1, "training workers per trial")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    mlflow_uri: str | None = opt(None, "MLflow tracking URI (default sqlite:///<out>/mlflow.db)")
    synth_workers: int = opt(2, cli=False)

    def __post_init__(self):
        _positive(self, "videos_per_class", "epochs", "grace_period", "batch_size", "workers")
        for name in ("hidden", "depth", "T", "fusion"):
            setattr(self, name, tuple(getattr(self, name)))


# ---------------------------------------------------------------------------------------------
# The paper's experiments
# ---------------------------------------------------------------------------------------------

PRESET_NAMES = ("hidden", "depth", "T", "fusion", "final")


@dataclass
class PaperConfig:
    """jobs/paper.py: one of the paper's experiments as a sweep over seeds, with its report
    (``reslstm.presets``, ``distributed.paper``)."""

    preset: str = opt(help="the experiment: hidden (Fig. 3a), depth (Fig. 3b-c), T (Table 1), "
                      "fusion (Table 2), final (Tables 3-4, Figs. 4-5)", choices=PRESET_NAMES)
    features: str = opt(help="feature store (jobs/extract.py --out)")
    out: str = opt("runs/paper", "output directory: OUT/<preset>/ holds the runs and the report")
    seeds: int = opt(3, "seeds per configuration; results are mean +- std over them")
    quick: bool = opt(False, "the synthetic scale: h / 16, T mapped to ~12 clips, 12 epochs, "
                      "2 seeds, 1 worker (minutes on 2 cores)")
    epochs: int | None = opt(None, "epochs per run (default 20; 12 with --quick)")
    hidden: tuple[int, ...] | None = opt(None, "override the preset's h values", items=int)
    depth: tuple[int, ...] | None = opt(None, "override the preset's L values", items=int)
    T: tuple[int, ...] | None = opt(None, "override the preset's T values", items=int)
    fusion: tuple[str, ...] | None = opt(None, "override the preset's fusions", items=str)
    residual: tuple[bool, ...] | None = opt(None, "override: residual on, off or on,off",
                                            items=parse_bool)
    lr: float = opt(1e-3, "RMSProp learning rate (the paper's 1e-3)")
    batch_size: int = opt(32, "videos per batch and worker")
    input_proj: str = opt("pca", "d_f -> h (the paper: PCA)", choices=PROJECTIONS)
    workers: int | None = opt(None, "workers per run (default 2; 1 with --quick)")
    seed: int = opt(0, "first seed")
    categories: str | None = opt(None, "final: accuracy per coarse category of this data set",
                                 choices=("ucf101", "hmdb51", "synthetic"))
    examples: int = opt(8, "final: example videos in the Fig. 4 sheet")
    max_concurrent: int | None = opt(None, "runs at once (default: what the cluster fits)")
    mlflow_uri: str | None = opt(None, "MLflow tracking URI (default sqlite:///<cwd>/mlflow.db)")
    experiment: str | None = opt(None, "MLflow experiment (default reslstm-paper-<preset>)")
    name: str | None = opt(None, "a fixed sweep name: the same command again resumes it")
    storage_path: str | None = opt(None, "Ray Train / Tune storage (s3://... on a cluster)")

    def __post_init__(self):
        _one_of(self, "preset", PRESET_NAMES)
        _positive(self, "seeds", "lr", "batch_size", "examples")
        _positive(self, "epochs", "workers", "max_concurrent", allow_none=True)
        for name in ("hidden", "depth", "T", "fusion", "residual"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))


# ---------------------------------------------------------------------------------------------
# Prediction and serving
# ---------------------------------------------------------------------------------------------

@dataclass
class PredictConfig:
    """jobs/predict.py and the Serve app: a trained model classifies new videos, extracting
    their features exactly as its training features were (``reslstm.predict``)."""

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
    """jobs/serve.py and ``serve run reslstm.distributed.serve:build``: the Ray Serve app."""

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
