"""The one family of project errors.

Every error the project raises on purpose derives from ``ReslstmError``: bad input (a manifest,
a video, a store, an option), a model that does not fit the features, a job that cannot go on.
Its message names the file or option and what to do. Entry points (``reslstm.cli.run_job``)
print a ``ReslstmError`` as one line and exit with its ``exit_code`` (2 unless the class says
otherwise); anything else is a bug and keeps its full traceback.

The specific classes live with the code that raises them (``VideoDecodeError`` in
``reslstm.video.failures``, ``StoreError`` in ``reslstm.features.schema``, ...); the errors
that have no better home live here. Many also derive from ``ValueError`` or ``RuntimeError``
for callers that caught those before.
"""

from __future__ import annotations


class ReslstmError(Exception):
    """Base of every project error: an expected failure whose message says what is wrong and
    what to do. ``exit_code`` is what an entry point exits with."""

    exit_code = 2


class ConfigError(ReslstmError, ValueError):
    """A setting that cannot work: an option out of range, two options that contradict each
    other, a name that is not one of the choices, a URI or Ray address that cannot be opened.
    Raised where a config is made, and by the factories that take a user's name (fusion,
    extractor, flow method, categories) or location. Checks that only a bug can fail (tensor
    shapes and dtypes inside the model, metrics, TV-L1) stay plain ``ValueError``."""


class DeviceUnavailable(ConfigError, RuntimeError):
    """A step was asked to run on a device this machine does not have (CUDA for RAFT or TV-L1
    in PyTorch): choose the CPU method or run where a GPU is."""


class RunFailed(ReslstmError, RuntimeError):
    """A job ran but has nothing usable to show: no trial of a sweep reported a checkpoint, a
    training run ended without one. The message says where the run's logs are."""

    exit_code = 1
