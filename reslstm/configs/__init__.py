"""The settings of every job, as typed dataclasses: extraction, training, sweeps, the demo.

Each field carries its command-line help in its metadata (``opt``), so ``reslstm.cli`` turns a
config into arguments and back without restating it, and every job documents the same
defaults. Configs check their values where they are made (``__post_init__``): a bad value
fails at once with the option's name, not later inside a Ray worker. Ray workers receive these
objects as they are (``train_loop_config``); nothing here imports Ray.

May import: the method's names (``reslstm.fusion``), ``reslstm.video.clips``
(crops), ``reslstm.flow.methods`` (flow methods), ``reslstm.storage``, ``reslstm.errors``.
Nothing here builds a model or reads data.
"""

from .experiments import PRESET_NAMES, DemoConfig, PaperConfig
from .extract import ExtractConfig
from .options import SEARCHES, USE_GPU, flag_of, opt
from .predict import PredictConfig, ServeConfig
from .train import SEARCHED, SweepConfig, TrainConfig, parse_bool

__all__ = ["SEARCHED", "SEARCHES", "USE_GPU", "PRESET_NAMES", "DemoConfig", "ExtractConfig",
           "PaperConfig", "PredictConfig", "ServeConfig", "SweepConfig", "TrainConfig", "flag_of",
           "opt", "parse_bool"]
