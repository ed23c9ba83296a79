"""``storage.Location`` on a local disk and on the local S3 API (moto), with the same tests:
paths and URIs, writes that appear only when complete (also when the writing block fails),
listing, prefixes as directories, bounded ranged reads; ``resolve(like=)`` and printed URIs
without secrets. Then the users of storage on S3: manifests (relative video paths against the
manifest's prefix) and prediction reports (PNG and CSV written through the store's
filesystem, predictions read back from a URI) and the export of a store read from a URI."""

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from reslstm import storage
from reslstm.datasets.manifest import MANIFEST_SCHEMA, read_manifest, write_manifest
from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> storage.Location:
    """An empty directory: a local one, or a prefix in a bucket of the moto server."""
    if request.param == "local":
        return storage.resolve(tmp_path / "root")
    s3 = request.getfixturevalue("s3_server")
    s3.bucket("storage-tests")
    name = request.node.name.replace("[", "-").replace("]", "")  # pyarrow refuses [ in a URI
    return storage.resolve(s3.uri("storage-tests", f"t/{name}"))


def _all_files(loc: storage.Location) -> list[str]:
    infos = loc.filesystem.get_file_info(pafs.FileSelector(loc.path, recursive=True,
                                                           allow_not_found=True))
    return sorted(i.path[len(loc.path) + 1:] for i in infos if i.type == pafs.FileType.File)


def test_write_read_list_delete(root):
    assert not root.exists()
    f = root.join("a", "b.txt")
    f.write_text("hello")
    assert f.read_text() == "hello" and f.is_file() and f.size() == 5
    assert root.exists() and root.is_dir() and root.join("a").is_dir()  # a prefix is a directory
    root.join("a", "c.parquet").write_bytes(b"x")
    root.join("a", ".hidden.parquet").write_bytes(b"x")
    root.join("a", "_lock.parquet").write_bytes(b"x")
    names = lambda paths: [os.path.basename(p) for p in paths]  # noqa: E731
    assert names(root.join("a").list()) == ["b.txt", "c.parquet"]
    assert names(root.join("a").list(".parquet")) == ["c.parquet"]
    assert names(root.join("a").list(".parquet", hidden=True)) == [".hidden.parquet", "_lock.parquet"]
    assert root.join("nothing").list() == []
    f.delete()
    f.delete()  # absent: nothing to do
    assert not f.exists()
    root.join("a").delete_dir()
    assert _all_files(root) == []


def test_a_write_that_fails_leaves_nothing(root):
    """The block raises halfway through a file: neither the file nor a part of it appears
    (on S3, pyarrow's output stream would complete the upload when closed, even on an error)."""
    target = root.join("part.parquet")
    table = pa.table({"x": np.arange(100_000)})
    with pytest.raises(RuntimeError, match="halfway"):
        with target.open_output() as f:
            pq.write_table(table, f)
            raise RuntimeError("halfway")
    assert not target.exists()
    assert _all_files(root) == []
    with target.open_output() as f:
        pq.write_table(table, f)
    assert _all_files(root) == ["part.parquet"]  # no temporary left beside it
    assert pq.read_table(target.path, filesystem=target.filesystem).equals(table)


def test_a_large_object_is_spooled_to_disk_and_uploaded_whole(root, monkeypatch):
    """Past ``SPOOL_BYTES`` the content of an object being written moves from memory to a
    local temporary file; the object that appears is the whole content, byte for byte, and a
    failure after the spill still leaves nothing."""
    monkeypatch.setattr(storage, "SPOOL_BYTES", 1000)
    monkeypatch.setattr(storage, "COPY_BYTES", 777)  # several writes of the upload
    data = np.random.default_rng(0).bytes(10_000)
    target = root.join("big.bin")
    spilled = []
    with target.open_output() as f:
        f.write(data[:5000])
        f.write(data[5000:])
        spilled.append(getattr(f, "_rolled", True))
    assert target.read_bytes() == data
    if not root.local:
        assert spilled == [True]  # the spool went to disk
    with pytest.raises(RuntimeError, match="after the spill"):
        with root.join("half.bin").open_output() as f:
            f.write(data)
            raise RuntimeError("after the spill")
    assert _all_files(root) == ["big.bin"]


def test_mkdir_makes_no_object_on_object_storage(root):
    root.join("x", "y").mkdir()
    if root.object_store:
        assert not root.exists()
    else:
        assert root.join("x", "y").is_dir()


def test_join_resolves_dots_and_keeps_the_scheme(root):
    j = root.join("videos/../data", "./m.parquet")
    assert j.path == root.path + "/data/m.parquet"
    assert j.uri == root.uri + "/data/m.parquet"
    assert root.join("a").parent().path == root.path and root.join("") == root
    if not root.local:
        assert j.uri.startswith("s3://storage-tests/")


def test_open_input_reads_ranges_with_a_bounded_cache(root):
    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    loc = root.join("blob.bin")
    loc.write_bytes(data)
    with loc.open_input() as f:
        assert f.read(10) == data[:10]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]
        f.seek(123_456)
        assert f.tell() == 123_456 and f.read(1000) == data[123_456:124_456]
    if root.local:
        return
    # Object storage: 64 kB blocks, at most 2 kept; a sequential read costs one request a block.
    with loc.open_input(block_size=65536, max_blocks=2) as f:
        assert isinstance(f, storage.BlockReader) and f.size() == len(data)
        out = b"".join(iter(lambda: f.read(4096), b""))
        assert out == data
        assert f.requests == -(-len(data) // 65536) and len(f._cache) == 2
        f.seek(0)
        f.read(10)  # block 0 was evicted: fetched again
        assert f.requests == -(-len(data) // 65536) + 1


def test_resolve_like_and_printed_uris(s3_server):
    s3_server.bucket("resolve-tests")
    with pytest.raises(ValueError) as bad:  # pyarrow cannot parse it: no secret in the error
        storage.resolve(s3_server.uri("resolve-tests", "a[1]"))
    assert s3_server.secret_key.replace("/", "%2F") not in str(bad.value)
    assert s3_server.access_key not in str(bad.value) and "s3://resolve-tests/a[1]" in str(bad.value)
    secret_uri = s3_server.uri("resolve-tests", "m/manifest.parquet")
    loc = storage.resolve(secret_uri)
    # What is printed (and recorded in metadata) names the object, never keys or endpoint.
    assert str(loc) == loc.uri == "s3://resolve-tests/m/manifest.parquet"
    assert s3_server.secret_key not in str(loc) and "127.0.0.1" not in str(loc)
    assert storage.display(secret_uri) == loc.uri
    assert storage.display("/a/b") == "/a/b"
    # An option-free URI of the same scheme is read with like's filesystem (its credentials).
    loc.parent().join("videos", "a#1.mp4").write_bytes(b"abc")
    video = storage.resolve("s3://resolve-tests/m/videos/a#1.mp4", like=loc.parent())
    assert video.filesystem is loc.filesystem and video.path == "resolve-tests/m/videos/a#1.mp4"
    assert video.read_bytes() == b"abc"
    # Anything else resolves on its own: options or credentials of its own, another scheme,
    # a local path.
    own = storage.resolve(s3_server.uri("resolve-tests", "m/videos"), like=loc)
    assert own.filesystem is not loc.filesystem
    assert storage.resolve("/tmp/x.mp4", like=loc).local
    assert storage.resolve("s3://resolve-tests/x?region=us-east-1",
                           like=storage.resolve("/tmp")).filesystem is not loc.filesystem


# ---------------------------------------------------------------------------------------------
# Manifests and reports on S3
# ---------------------------------------------------------------------------------------------

def _manifest_rows(paths):
    return pa.Table.from_pylist(
        [{"video_id": f"c/v{i}", "path": p, "label": 0, "label_name": "c", "split": "train"}
         for i, p in enumerate(paths)], schema=MANIFEST_SCHEMA)


def test_manifest_on_s3_resolves_relative_paths_against_its_prefix(s3_server, tmp_path):
    s3_server.bucket("manifests")
    uri = s3_server.uri("manifests", "data/ucf/manifest.parquet")
    table = _manifest_rows(["videos/a.mp4", "../other/b.mp4", "s3://elsewhere/c.mp4", "/abs/d.mp4"])
    assert write_manifest(table, uri) == uri
    back = read_manifest(uri)
    assert back.column("path").to_pylist() == [
        "s3://manifests/data/ucf/videos/a.mp4", "s3://manifests/data/other/b.mp4",
        "s3://elsewhere/c.mp4", "/abs/d.mp4"]
    assert read_manifest(storage.resolve(uri)).equals(back)  # a Location too
    # Nothing local was written; a local manifest keeps URIs as they are.
    assert list(tmp_path.iterdir()) == []
    write_manifest(_manifest_rows(["s3://b/x.mp4", "v/y.mp4"]), tmp_path / "m.parquet")
    assert read_manifest(tmp_path / "m.parquet").column("path").to_pylist() == [
        "s3://b/x.mp4", str(tmp_path / "v" / "y.mp4")]
    with pytest.raises(Exception, match="manifest not found: s3://manifests/nope.parquet"):
        read_manifest(s3_server.uri("manifests", "nope.parquet"))


def test_prediction_reports_to_and_from_s3(s3_server, tmp_path):
    from reslstm.reports.predictions import evaluate_fusion, evaluate_run, load_predictions, prediction_table

    s3_server.bucket("reports")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 12)
    names = ["a", "b", "c"]
    ids = [f"v{i:02d}" for i in range(12)]
    for run in ("rgb", "flow"):
        probs = rng.dirichlet(np.ones(3), 12).astype(np.float32)
        table = prediction_table(ids, labels, names, "test", {"fused": probs})
        with storage.resolve(s3_server.uri("reports", f"runs/{run}/predictions/test.parquet")).open_output() as f:
            pq.write_table(table, f)
    rgb, flow = s3_server.uri("reports", "runs/rgb"), s3_server.uri("reports", "runs/flow")
    assert load_predictions(rgb).num_rows == 12
    out = s3_server.uri("reports", "out")
    fused = evaluate_fusion(rgb, flow, "product", out_dir=out, categories=None)
    single = evaluate_run(rgb, out_dir=out)
    files = _all_files(storage.resolve(out))
    assert files == ["confusion_fused-product.png", "confusion_fused.png",
                     "per_class_fused-product.csv", "per_class_fused.csv"]
    assert fused.files["confusion_fused-product"] == "s3://reports/out/confusion_fused-product.png"
    png = storage.resolve(out).join("confusion_fused.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    csv_text = storage.resolve(out).join("per_class_fused.csv").read_text()
    assert csv_text.splitlines()[0].startswith("class") and len(csv_text.splitlines()) == 4
    assert single.rows["fused"]["n"] == 12
    assert list(tmp_path.iterdir()) == []


def test_a_store_on_s3_exports_as_it_does_on_disk(s3_server, tmp_path):
    """jobs/export.py reads a store from an object-store URI one row at a time: the arrays equal
    the local store's bit for bit."""
    from featurestore_fixture import make_feature_store
    from reslstm.features.export import export_npy

    local = make_feature_store(tmp_path / "store", seed=9, split_sizes={"train": 1, "test": 1})
    s3_server.bucket("export")
    uri = s3_server.uri("export", "features/tiny")
    target = storage.resolve(uri)
    pafs.copy_files(str(local.root), target.path, destination_filesystem=target.filesystem)
    export_npy(uri, tmp_path / "out")
    lines = (tmp_path / "out" / "index.csv").read_text().splitlines()[1:]
    assert len(lines) == 2 * len(local.features["rgb"])
    for line in lines:
        vid, stream, *_, name = line.split(",")
        assert np.load(tmp_path / "out" / name).tobytes() == local.features[stream][vid].tobytes()
