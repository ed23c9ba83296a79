"""The body of ``jobs/export.py``: a feature store -> one .npy per video and stream with an
index.csv, or one HDF5 file (``reslstm.features.export``), with progress while it runs and a
summary at the end. No Ray is needed: the store is read one row at a time, from a local folder
or an object-store URI."""

from __future__ import annotations

import logging
import time

from reslstm.errors import ConfigError
from reslstm.features.export import FORMATS, ExportSummary, export_hdf5, export_npy

log = logging.getLogger(__name__)
PROGRESS_S = 10.0


def export_store(store: str, fmt: str, out: str, streams=None) -> ExportSummary:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    last = [time.monotonic()]

    def progress(arrays: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_S:
            last[0] = time.monotonic()
            log.info(f"{arrays} arrays written")

    log.info(f"exporting {store} as {fmt} to {out}")
    run = export_npy if fmt == "npy" else export_hdf5
    summary = run(store, out, streams, progress)
    per_stream = ", ".join(f"{s} {n}" for s, n in summary.arrays.items())
    log.info(f"{summary.videos} videos ({per_stream} arrays, {summary.bytes / 2 ** 20:.1f} MiB of "
             f"features) in {summary.out}")
    return summary
