"""jobs/train.py's and jobs/tune.py's settings: one run, and a sweep of runs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from reslstm.errors import ConfigError
from reslstm.fusion import ARCHS, FUSION_NAMES, PROJECTIONS

from .options import (SEARCHES, USE_GPU, _check, _one_of, _positive, flag_of, opt)


@dataclass
class TrainConfig:
    """One training run (jobs/train.py, and each trial of a sweep). ``fusion`` (``--stream``)
    is one stream, a mid fusion (one Res-LSTM on the fused inputs) or a late fusion (one
    Res-LSTM per stream, softmaxes fused)."""

    features: str = opt(help="feature store (jobs/extract.py --out)")
    out: str = opt("runs/train", "run directory or URI, e.g. s3://bucket/runs/late "
                   "(predictions/, summary.json, and by default ray_results/)")
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
        if "://" in self.out:  # a run directory on object storage keeps its checkpoints there
            from reslstm.storage import join

            return join(self.out, "ray_results")
        return str((Path(self.out) / "ray_results").resolve())

    def to_dict(self) -> dict:
        """The settings as recorded (checkpoints, summary.json, MLflow params): locations
        without credentials or endpoint options (``storage.display``)."""
        from reslstm.storage import display

        doc = dataclasses.asdict(self)
        for key in ("features", "out", "storage_path"):
            if doc[key] is not None:
                doc[key] = display(doc[key])
        return doc


SEARCHED = ("hidden", "depth", "T", "fusion", "residual")  # SweepConfig's comma lists


def parse_bool(text: str) -> bool:
    """on/off, true/false, yes/no, 1/0 (a value of a comma list of booleans)."""
    value = str(text).strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"{text!r} is not on/off")


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
                    raise ConfigError(f"{flag_of(self, name)}: value {v!r} {message}") from None
        _one_of(self, "search", SEARCHES)
        _one_of(self, "scheduler", ("asha", "none"))
        _positive(self, "seeds")
        _check(self, self.name is None or (self.name.strip() and "/" not in self.name), "name",
               f"must be a non-empty name without '/', got {self.name!r}")
        _positive(self, "num_samples", "grace_period")
        _positive(self, "max_concurrent", allow_none=True)
        # The sweep's reports and best-model files are local (MLflow carries them to its
        # artifact store); its checkpoints go where --storage-path says, s3:// included.
        _check(self.base, "://" not in self.base.out, "out",
               f"must be a local directory for a sweep, got {self.base.out!r}: give object "
               "storage as --storage-path (Ray Tune's checkpoints) and an MLflow server with "
               "S3 artifacts for the reports (README: Storage on S3)")
