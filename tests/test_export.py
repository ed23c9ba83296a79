"""Exporting a feature store (reslstm.features.export, jobs/export.py): one .npy per video and
stream with an index, or one HDF5 file; the arrays equal the store's bit for bit, ids that are
not file names stay distinct, nothing partial is left, a missing h5py names the extra."""

import csv
import json
import sys

import numpy as np
import pytest

from featurestore_fixture import make_feature_store
from jobs_loader import job as load_job
from reslstm.errors import ConfigError
from reslstm.features import FeatureStore
from reslstm.features.export import (INDEX_FIELDS, export_hdf5, export_npy, iter_rows,
                                     safe_name)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_feature_store(tmp_path_factory.mktemp("store") / "s", seed=6,
                              split_sizes={"train": 2, "val": 1, "test": 1})


def test_safe_names_keep_ids_apart():
    assert safe_name("v_ApplyEyeMakeup_g08_c01") == "v_ApplyEyeMakeup_g08_c01"
    names = {safe_name(v) for v in ("a/b", "a_b", "a:b", "a b", "../x", ".hidden", "a/b/")}
    assert len(names) == 7 and "a_b" in names
    for name in names:
        assert "/" not in name and not name.startswith(".") and " " not in name


def test_rows_come_one_at_a_time_with_the_stored_features(store):
    got = {row["video_id"]: feats for row, feats in iter_rows(store.root, "flow")}
    assert got.keys() == store.features["flow"].keys()
    for vid, feats in got.items():
        assert feats.dtype == np.float32
        np.testing.assert_array_equal(feats, store.features["flow"][vid])


def test_npy_export_equals_the_store_bit_for_bit(store, tmp_path):
    summary = export_npy(store.root, tmp_path / "out")
    with open(tmp_path / "out" / "index.csv", newline="") as fh:
        index = list(csv.DictReader(fh))
    assert tuple(index[0]) == INDEX_FIELDS
    expected = {(v, s) for s in ("rgb", "flow") for v in store.features[s]}
    assert {(r["video_id"], r["stream"]) for r in index} == expected and len(index) == len(expected)
    assert len({r["file"] for r in index}) == len(index)
    for r in index:
        array = np.load(tmp_path / "out" / r["file"])
        want = store.features[r["stream"]][r["video_id"]]
        assert array.dtype == np.float32 and array.tobytes() == want.tobytes()
        assert array.shape == want.shape and int(r["num_clips"]) == len(want)
        assert int(r["label"]) == store.labels[r["video_id"]]
        assert r["split"] == store.splits[r["video_id"]]
    assert summary.videos == len(store.features["rgb"])
    assert summary.arrays == {"rgb": len(store.features["rgb"]), "flow": len(store.features["flow"])}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporaries
    only = export_npy(store.root, tmp_path / "rgb", streams=["rgb"])
    assert set(only.arrays) == {"rgb"}


def test_hdf5_export_equals_the_store_bit_for_bit(store, tmp_path):
    h5py = pytest.importorskip("h5py", reason="h5py (the dev extra installs it)")
    out = tmp_path / "features.h5"
    export_hdf5(store.root, out)
    with h5py.File(out, "r") as h5:
        assert json.loads(h5.attrs["store_metadata"]) == FeatureStore(store.root).metadata_doc() != {}
        groups = h5["videos"]
        assert len(groups) == len(store.features["rgb"])
        for vid, want in store.features["rgb"].items():
            g = groups[safe_name(vid)]
            assert g.attrs["video_id"] == vid and g.attrs["label"] == store.labels[vid]
            assert g.attrs["split"] == store.splits[vid]
            for stream in ("rgb", "flow"):
                data = g[stream]
                assert data.dtype == np.float32
                assert data[()].tobytes() == store.features[stream][vid].tobytes()
                assert data.attrs["num_clips"] == len(store.features[stream][vid])
    assert [p.name for p in tmp_path.iterdir()] == ["features.h5"]  # no temporary left


def test_missing_h5py_names_the_extra(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ConfigError, match=r"\.\[hdf5\]"):
        export_hdf5(store.root, tmp_path / "x.h5")
    assert not list(tmp_path.iterdir())


def test_the_job_prints_a_summary_and_refuses_what_is_not_a_store(store, tmp_path, capsys):
    export = load_job("export")
    assert export.main(["--store", str(store.root), "--format", "npy",
                        "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "index.csv").exists()
    assert export.main(["--store", str(tmp_path / "nothing"), "--format", "npy",
                        "--out", str(tmp_path / "p")]) == 2
    assert "no feature store here" in capsys.readouterr().err
    assert export.main(["--store", str(store.root), "--format", "npy", "--streams", "depth",
                        "--out", str(tmp_path / "q")]) == 2
    assert "has no depth rows" in capsys.readouterr().err
