"""jobs/demo.py's and jobs/paper.py's settings."""

from __future__ import annotations

from dataclasses import dataclass

from reslstm.flow.methods import FLOW_METHODS
from reslstm.fusion import PROJECTIONS

from .options import _one_of, _positive, opt
from .train import parse_bool


@dataclass
class DemoConfig:
    """jobs/demo.py: the whole pipeline on the built-in synthetic set."""

    out: str = opt("demo_output", "output directory")
    videos_per_class: int = opt(40, "synthetic videos per class (11 classes)")
    seed: int = opt(0, "data, weights and shuffling seed")
    flow: str = opt("dis", "optical flow (dis: fast on a CPU)", choices=tuple(FLOW_METHODS))
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


PRESET_NAMES = ("hidden", "depth", "T", "fusion", "final")


@dataclass
class PaperConfig:
    """jobs/paper.py: one of the paper's experiments as a sweep over seeds, with its report
    (``reslstm.paper.presets``, ``distributed.tune.paper_runs``)."""

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
