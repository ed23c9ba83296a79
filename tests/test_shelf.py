"""distributed.tune.shelf: a sweep's datasets built once, and each (streams, T) released from the
object store when no pending trial reads it."""

import gc
import time
from collections import Counter
from types import SimpleNamespace

import pytest
import ray

from featurestore_fixture import make_feature_store
from reslstm.configs import SweepConfig, TrainConfig
from reslstm.distributed.tune import shelf
from reslstm.distributed.tune.sweep import trial_counts


def _trial(fusion, T, status="RUNNING"):
    return SimpleNamespace(config={"fusion": fusion, "T": T}, status=status)


def test_trial_counts_know_every_grid_trials_data_and_only_the_number_of_random_ones():
    base = TrainConfig(features="f")
    grid = SweepConfig(base, hidden=[8, 16], depth=[1], T=[4, 5], seeds=3,
                       fusion=["rgb", "late-sum", "late-product"])
    total, keys = trial_counts(grid)
    # 2 hidden x 3 seeds per (fusion, T); the two late fusions read the same data.
    assert keys == Counter({"rgb/T4": 6, "rgb/T5": 6, "rgb+flow/T4": 12, "rgb+flow/T5": 12})
    assert total == 36
    rand = SweepConfig(base, hidden=[8, 16], T=[4, 5], search="random", num_samples=5, seeds=2)
    assert trial_counts(rand) == (10, None)


def test_pending_keys_are_those_a_running_or_future_trial_reads():
    grid = Counter({"rgb/T4": 2, "rgb/T5": 1})
    trials = [_trial("rgb", 4, "TERMINATED"), _trial("rgb", 5)]
    # One T=4 trial is not created yet: both keys are pending.
    assert shelf.pending_keys(trials, 3, grid) == {"rgb/T4", "rgb/T5"}
    trials.append(_trial("rgb", 4, "ERROR"))
    assert shelf.pending_keys(trials, 3, grid) == {"rgb/T5"}
    # The trial that is ending right now counts as ended (Tune marks it after the callback).
    assert shelf.pending_keys(trials, 3, grid, ended=trials[1]) == set()
    paused = _trial("rgb", 4, "PAUSED")
    assert shelf.pending_keys([*trials, paused], 4, grid + Counter({"rgb/T4": 1})) == {
        "rgb/T4", "rgb/T5"}
    # Random search: until every trial exists, any key may be drawn.
    assert "*" in shelf.pending_keys(trials[:2], 3, None)
    assert shelf.pending_keys(trials, 3, None) == {"rgb/T5"}


def _live(object_ids: list[str]) -> set[str]:
    """The ids among ``object_ids`` that some process still references: their owner (this
    process: the datasets were built here) keeps an entry per object while it or a borrower,
    such as the shelf, holds a reference. (Ray's state API truncates object lists.)"""
    counts = ray._private.worker.global_worker.core_worker.get_all_reference_counts()
    live = {k.decode() if isinstance(k, bytes) else str(k) for k in counts}  # hex ids
    return {oid for oid in object_ids if oid in live}


@pytest.mark.integration
def test_a_released_key_leaves_the_object_store_while_the_others_stay(ray_local, tmp_path):
    store = make_feature_store(tmp_path / "store", seed=3)
    handle, kept = shelf.build_shelf("t-shelf", str(store.root), ["rgb", "late-sum"], [3],
                             pca=([0], 64))
    try:
        assert set(kept) == {"rgb/T3", "rgb+flow/T3"}
        assert all(not k.datasets and k.pca for k in kept.values())  # index and PCA only
        blocks = {}
        for key in kept:
            run = shelf.shelved("t-shelf", key)
            assert set(run.datasets) == {"train", "val"} and run.T == 3
            blocks[key] = [r.hex() for s in ("train", "val")
                           for r in run.datasets[s].get_internal_block_refs()]
            del run
        gc.collect()
        everything = [b for ids in blocks.values() for b in ids]
        assert _live(everything) == set(everything)

        release = shelf.ReleaseData("t-shelf", 2, Counter({"rgb/T3": 1, "rgb+flow/T3": 1}))
        trials = [_trial("rgb", 3), _trial("late-sum", 3)]
        release.on_trial_complete(0, trials, trials[0])
        deadline = time.monotonic() + 20
        while _live(blocks["rgb/T3"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _live(blocks["rgb/T3"]) == set()
        assert _live(blocks["rgb+flow/T3"]) == set(blocks["rgb+flow/T3"])
        with pytest.raises(ray.exceptions.RayTaskError, match="released"):
            shelf.shelved("t-shelf", "rgb/T3")
        # After the sweep, val and test of a key are read again from the store.
        run = shelf.evaluation_data(str(store.root), kept["rgb+flow/T3"])
        assert {s: run.datasets[s].count() for s in run.datasets} == {
            s: kept["rgb+flow/T3"].index.count(s) for s in ("val", "test")}
    finally:
        shelf.close_shelf(handle)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            ray.get_actor(shelf.shelf_name("t-shelf"), namespace=shelf.NAMESPACE)
        except ValueError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the closed shelf is still alive")
