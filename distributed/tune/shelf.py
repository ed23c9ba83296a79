"""A sweep's datasets: built once per (streams, T), shared by its trials, released when no
pending trial needs them.

- ``data_key(fusion, T)``: the key of the data a trial reads (``"rgb+flow/T25"``).
- ``build_shelf(name, features, fusions, Ts, pca)``: the driver builds and materializes the
  train and val datasets of every key once (``train.data.load_data``; and, with ``pca``, the
  PCA basis of every stream and seed, so every trial takes its top h rows), hands them to a
  ``DataShelf`` actor named after the sweep, and keeps only what evaluating a checkpoint needs
  afterwards: each key's index and PCA bases (``RunData`` without datasets). ``close_shelf``
  ends it when the trials are over.
- ``DataShelf``: the actor (no CPU) that holds the datasets' block references. A trial asks it
  for its key's ``RunData`` (``shelved``); ``drop(key)`` lets the blocks go. It is the only
  holder of those blocks once the driver has handed them over, so dropping a key frees its
  share of the object store while the sweep goes on.
- ``ReleaseData``: a Tune callback; whenever a trial ends (finished, stopped by ASHA or
  failed) it works out which keys a trial still running, paused or not yet created may read
  (``pending_keys``) and drops every other one. With grid search every trial's key is known in
  advance; with random search a key is released once all ``num_samples`` trials exist and none
  of those that read it is pending. The callback names the shelf (it does not hold a handle),
  so a resumed sweep, whose callbacks Tune restores from the sweep's folder, finds the shelf
  the resuming driver built.

Trials must not start Ray Data reads of their own (see ``sweep``'s module docstring); they
iterate the materialized blocks the shelf holds. After the sweep, a checkpoint's val and test
are read again from the store (``evaluation_data``): a tenth and a fifth of the videos, lazily.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable, Sequence

import ray
from ray import tune

from reslstm.distributed.train.data import RunData, build_datasets, load_data
from reslstm.fusion import streams_of

log = logging.getLogger(__name__)

FINISHED = ("TERMINATED", "ERROR")  # Tune's Trial.status of a trial that will not run again


def data_key(fusion: str, T: int) -> str:
    return f"{'+'.join(streams_of(fusion))}/T{int(T)}"


NAMESPACE = "reslstm"  # the shelves' (a trial's actors may run in another namespace)


def shelf_name(sweep: str) -> str:
    return f"reslstm-data-{sweep}"


def _shelf(sweep: str):
    return ray.get_actor(shelf_name(sweep), namespace=NAMESPACE)


@ray.remote(num_cpus=0)
class DataShelf:
    """Holds the sweep's datasets {key: RunData (train, val)} until each is dropped."""

    def __init__(self, data: dict):
        self.data = data

    def get(self, key: str) -> RunData:
        if key not in self.data:
            raise KeyError(f"the sweep's data {key} was released: no pending trial needed it")
        return self.data[key]

    def drop(self, keys: Sequence[str]) -> list[str]:
        return [k for k in keys if self.data.pop(k, None) is not None]

    def keys(self) -> list[str]:
        return sorted(self.data)


def shelved(sweep: str, key: str) -> RunData:
    """A trial's data: its key's ``RunData`` from the sweep's shelf."""
    return ray.get(_shelf(sweep).get.remote(key))


def build_shelf(sweep: str, features: str, fusions: Iterable[str], Ts: Iterable[int],
                pca: tuple[Sequence[int], int] | None = None) -> tuple[object, dict[str, RunData]]:
    """Build every key's data once and shelve the datasets (module docstring). ``pca`` =
    (seeds, max vectors) fits the PCA bases here. Returns the shelf (the caller keeps this
    handle for the sweep: the actor ends with its last handle) and {key: RunData} without
    datasets (the index, T and the PCA bases), for evaluating checkpoints after the sweep."""
    data: dict[str, RunData] = {}
    for fusion in fusions:
        for T in Ts:
            key = data_key(fusion, T)
            if key in data:
                continue
            data[key] = run = load_data(features, streams_of(fusion), T, splits=("train", "val"))
            if pca is not None:
                seeds, max_vectors = pca
                for stream in run.index.streams:
                    for seed in seeds:
                        run.pca_basis(stream, seed, max_vectors)
            log.info(f"data {key}: videos " + str({s: run.index.count(s)
                                                   for s in ("train", "val", "test")}))
    handle = DataShelf.options(name=shelf_name(sweep), namespace=NAMESPACE).remote(data)
    return handle, {k: run.only(()) for k, run in data.items()}


def close_shelf(handle) -> None:
    """End the shelf and let go of whatever it still holds (the sweep ended, or failed)."""
    ray.kill(handle)


def evaluation_data(features: str, run: RunData) -> RunData:
    """Val and test of one key, read lazily from the store when a checkpoint is evaluated."""
    return RunData(run.index, build_datasets(features, run.index.streams, run.T, ("val", "test"),
                                             run.index, lazy=("val", "test")), run.T, run.pca)


def pending_keys(trials, total: int, grid_keys: Counter | None, ended=None) -> set[str]:
    """The keys a trial may still read: those of created trials that have not finished (nor are
    ``ended``: Tune calls back before it marks the ending trial), and of trials not yet created
    (``grid_keys``: the key of every trial of a grid search, with multiplicity; without it,
    with fewer than ``total`` trials created, every key: ``"*"``)."""
    keys = [data_key(t.config["fusion"], t.config["T"]) for t in trials]
    pending = {k for k, t in zip(keys, trials) if t.status not in FINISHED and t is not ended}
    if grid_keys is not None:
        pending |= set((grid_keys - Counter(keys)).keys())
    elif len(trials) < total:
        pending |= {"*"}
    return pending


class ReleaseData(tune.Callback):
    """Drops a key's datasets from the sweep's shelf when no pending trial reads it."""

    def __init__(self, sweep: str, total: int, grid_keys: Counter | None):
        self.sweep, self.total, self.grid_keys = sweep, total, grid_keys

    def _release(self, trials, ended) -> None:
        pending = pending_keys(trials, self.total, self.grid_keys, ended)
        if "*" in pending:
            return
        try:
            shelf = _shelf(self.sweep)
        except ValueError:  # no shelf (it is gone with its driver): nothing held
            return
        held = ray.get(shelf.keys.remote())
        dropped = ray.get(shelf.drop.remote([k for k in held if k not in pending]))
        for key in dropped:
            log.info(f"data {key} released: no pending trial reads it")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trials, trial)
