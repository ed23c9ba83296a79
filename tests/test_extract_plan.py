"""Which (video, stream) pairs an extraction run takes on, and in what order."""

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from reslstm import features as fs
from reslstm import listing, storage
from reslstm.configs import ExtractConfig
from reslstm.datasets.manifest import MANIFEST_SCHEMA
from reslstm.extraction.driver import plan_work
from reslstm.extraction.segments import SEGMENT_SCHEMA


def _manifest(tmp_path, sizes):
    rows = []
    for name, size in sizes.items():
        path = tmp_path / f"{name}.mp4"
        if size is not None:
            path.write_bytes(b"\0" * size)
        rows.append({"video_id": name, "path": str(path), "label": 0, "label_name": "a",
                     "split": "train"})
    return pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)


def test_largest_files_first_streams_of_a_video_together_flow_first(tmp_path):
    manifest = _manifest(tmp_path, {"small": 10, "big": 1000, "missing": None, "mid": 100})
    cfg = ExtractConfig(manifest="m.parquet", out=str(tmp_path / "store"), streams=("rgb", "flow"))
    items, done, failed = plan_work(cfg, manifest)
    assert [(i["video_id"], i["stream"]) for i in items.to_pylist()] == [
        ("big", "flow"), ("big", "rgb"), ("mid", "flow"), ("mid", "rgb"),
        ("small", "flow"), ("small", "rgb"), ("missing", "flow"), ("missing", "rgb")]
    assert (done, failed) == (0, 0)


def test_written_and_failed_pairs_are_skipped_per_stream(tmp_path, monkeypatch):
    """Skipped pairs are found in the manifest's order, the rest come largest first."""
    manifest = _manifest(tmp_path, {"c": 10, "a": 30, "b": 20})
    out = tmp_path / "store"
    ids = lambda values: pa.array(values, pa.string())  # noqa: E731
    monkeypatch.setattr(fs.FeatureStore, "written_id_array",
                        lambda _, s: ids(["a"] if s == "rgb" else []))
    monkeypatch.setattr(fs.FeatureStore, "failed_id_array",
                        lambda _, s: ids(["b"] if s == "flow" else []))
    cfg = ExtractConfig(manifest="m.parquet", out=str(out), streams=("rgb", "flow"))
    items, done, failed = plan_work(cfg, manifest)
    assert [(i["video_id"], i["stream"]) for i in items.to_pylist()] == [
        ("a", "flow"), ("b", "rgb"), ("c", "flow"), ("c", "rgb")]
    assert (done, failed) == (1, 1)
    retry = ExtractConfig(manifest="m.parquet", out=str(out), streams=("rgb",), retry_failed=True)
    items, done, failed = plan_work(retry, manifest)
    assert [(i["video_id"], i["stream"]) for i in items.to_pylist()] == [("b", "rgb"), ("c", "rgb")]
    assert (done, failed) == (1, 0)


class _CountingFS(pafs.FileSystemHandler):
    """The local disk, counting the requests a planner makes (a stat or a listing each)."""

    def __init__(self):
        self.local, self.calls = pafs.LocalFileSystem(), []

    def get_type_name(self):
        return "counting"

    def get_file_info(self, paths):
        self.calls += [("stat", p) for p in paths]
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self.calls.append(("list", selector.base_dir))
        return self.local.get_file_info(selector)

    def normalize_path(self, path):
        return path

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other


for _name in sorted(_CountingFS.__abstractmethods__):  # the rest: the local disk's
    setattr(_CountingFS, _name, lambda self, *a, _n=_name: getattr(self.local, _n)(*a))
_CountingFS.__abstractmethods__ = frozenset()


def test_sizes_come_from_one_listing_per_folder(tmp_path):
    handler = _CountingFS()
    like = storage.Location(pafs.PyFileSystem(handler), str(tmp_path), "count://" + str(tmp_path))
    paths = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        for i in range(50):
            (tmp_path / folder / f"{i}.mp4").write_bytes(b"\0" * (i + 1))
            paths.append(f"count://{tmp_path}/{folder}/{i}.mp4")
    paths.append(f"count://{tmp_path}/a/missing.mp4")
    sizes = listing.file_sizes(paths, like=like)
    assert sorted(handler.calls) == [("list", str(tmp_path / "a")), ("list", str(tmp_path / "b"))]
    assert sizes[f"count://{tmp_path}/b/9.mp4"] == 10 and sizes[paths[-1]] == 0
    assert len(sizes) == 101


def test_local_paths_are_listed_once_per_folder_too(tmp_path, monkeypatch):
    """Local paths resolve to a new filesystem object each: they are one disk all the same,
    so one folder of 300 videos is one listing (not one per video: O(N^2) in the plan)."""
    calls: list = []
    local = pafs.LocalFileSystem

    class Disk(_CountingFS):  # every instance is the same disk, counted in one list
        def __init__(self):
            self.local, self.calls = local(), calls

        def __eq__(self, other):
            return isinstance(other, Disk)

        def __ne__(self, other):
            return not isinstance(other, Disk)

    for i in range(300):
        (tmp_path / f"{i}.mp4").write_bytes(b"\0" * (i + 1))
    paths = [str(tmp_path / f"{i}.mp4") for i in range(300)]
    monkeypatch.setattr(pafs, "LocalFileSystem", lambda: pafs.PyFileSystem(Disk()))
    sizes = listing.file_sizes(paths)
    monkeypatch.undo()
    assert calls == [("list", str(tmp_path))]
    assert [sizes[p] for p in paths] == list(range(1, 301))


def test_a_plan_reads_the_written_and_failed_ids_once_per_stream(tmp_path, monkeypatch):
    manifest = _manifest(tmp_path, {f"v{i}": 10 + i for i in range(40)})
    reads = []

    def once(kind):
        return lambda _, s: reads.append((kind, s)) or pa.array(["v1", "v2"], pa.string())

    monkeypatch.setattr(fs.FeatureStore, "written_id_array", once("written"))
    monkeypatch.setattr(fs.FeatureStore, "failed_id_array", once("failed"))
    cfg = ExtractConfig(manifest="m.parquet", out=str(tmp_path / "store"), streams=("rgb", "flow"))
    items, done, failed = plan_work(cfg, manifest)
    assert sorted(reads) == [("failed", "flow"), ("failed", "rgb"), ("written", "flow"),
                             ("written", "rgb")]
    assert (len(items), done, failed) == (76, 4, 0)


def test_a_job_runs_as_one_dataset_per_window_in_order(monkeypatch):
    """``run_windows`` builds a dataset per window (the last one shorter), one after the other:
    the previous one is gone before the next is built, and the C heap trimmed after each; 0 is
    one window of everything. The default window is 2048 videos, or 32 per CPU."""
    from reslstm.configs.options import window_videos
    from reslstm.distributed.extract import pipeline
    from reslstm.distributed.extract.pipeline import run_windows

    live, trims = [], []
    monkeypatch.setattr(pipeline, "release_free_heap", lambda: trims.append(list(live)))

    class Fake:
        def __init__(self, window):
            self.window = list(window)

        def iter_batches(self, batch_size, batch_format):
            assert live == [] and batch_format == "pyarrow"
            live.append(self)
            yield pa.table({"i": self.window})
            live.remove(self)

    built = []

    def build(window):
        built.append(list(window))
        return Fake(window)

    got = [t.column("i").to_pylist() for t in run_windows(list(range(7)), 3, build)]
    assert got == built == [[0, 1, 2], [3, 4, 5], [6]]
    assert trims == [[], [], []]  # once per window, its dataset already done
    built.clear()
    assert [t.num_rows for t in run_windows(list(range(7)), 0, build)] == [7] and len(built) == 1
    assert list(run_windows([], 3, build)) == [] and len(built) == 1
    assert (window_videos(None, 2), window_videos(None, 100), window_videos(5, 100),
            window_videos(0, 100)) == (2048, 3200, 5, 0)


def test_block_stats_are_trimmed_to_the_last_ones_in_amortized_steps():
    from reslstm.distributed.extract.pipeline import BLOCK_STATS_ATTR, trim_block_stats

    class Op:
        pass

    op = Op()
    setattr(op, BLOCK_STATS_ATTR, list(range(8)))
    assert trim_block_stats(op, 4) == 0 and getattr(op, BLOCK_STATS_ATTR) == list(range(8))
    getattr(op, BLOCK_STATS_ATTR).append(8)
    assert trim_block_stats(op, 4) == 5 and getattr(op, BLOCK_STATS_ATTR) == [5, 6, 7, 8]
    assert trim_block_stats(Op(), 4) == 0  # an operator without the list is left alone


def test_sizes_resolve_each_folder_once_and_match_per_path_resolution(tmp_path, monkeypatch):
    """A folder is resolved once however many videos it holds; relative paths, a bare file
    name and a path through '..' get the sizes that resolving each path would give."""
    (tmp_path / "v").mkdir()
    for i in range(20):
        (tmp_path / "v" / f"{i}.mp4").write_bytes(b"\0" * (i + 1))
    (tmp_path / "top.mp4").write_bytes(b"\0" * 7)
    monkeypatch.chdir(tmp_path)
    paths = [f"v/{i}.mp4" for i in range(20)] + ["top.mp4", "v/../top.mp4", "v/none.mp4",
                                                 str(tmp_path / "v" / "3.mp4")]
    resolved = []
    real = storage.resolve
    monkeypatch.setattr(storage, "resolve", lambda p, like=None: resolved.append(p) or real(p, like))
    sizes = listing.file_sizes(paths)
    assert sorted(resolved) == sorted(["v", "top.mp4", "v/..", str(tmp_path / "v")])
    assert sizes == {p: (real(p).size() if real(p).is_file() else 0) for p in paths}
    assert [sizes[p] for p in paths[:3]] == [1, 2, 3] and sizes["v/../top.mp4"] == 7


def test_size_array_follows_the_paths_order(tmp_path, monkeypatch):
    """Sizes in the order given: duplicates, a missing file, a bare name (the working folder),
    a folder spelled two ways (one listing), a folder path (not a file) and a null all agree
    with one stat per path."""
    (tmp_path / "d").mkdir()
    for i in range(5):
        (tmp_path / "d" / f"{i}.mp4").write_bytes(b"\0" * (10 + i))
    (tmp_path / "bare.mp4").write_bytes(b"\0" * 7)
    monkeypatch.chdir(tmp_path)
    paths = [str(tmp_path / "d" / "3.mp4"), "bare.mp4", str(tmp_path / "d" / "gone.mp4"),
             str(tmp_path / "d" / "3.mp4"), f"{tmp_path}/./d/1.mp4", str(tmp_path / "d"),
             "d/4.mp4", None]
    sizes = listing.file_size_array(pa.array(paths, pa.string()))
    assert sizes.dtype == np.int64
    assert sizes.tolist() == [13, 7, 0, 13, 11, 0, 14, 0]
    assert listing.file_sizes(paths[:-1]) == dict(zip(paths[:-1], [13, 7, 0, 13, 11, 0, 14]))


def test_release_free_heap_gives_free_pages_back():
    """Freed blocks between live ones stay in glibc's heap (resident) until trimmed."""
    import ctypes

    from reslstm.memory import release_free_heap

    def anon() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) * 1024

    try:
        ctypes.CDLL("libc.so.6").malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        pytest.skip("needs Linux with glibc (elsewhere release_free_heap does nothing)")
    blocks = [bytearray(b"x" * (1 << 16)) for _ in range(2048)]  # 128 MiB in 64 KiB blocks
    del blocks[::2]  # 64 MiB free, each block between two live ones
    before = anon()
    assert release_free_heap()
    assert before - anon() > 32 * 2**20
    del blocks


def test_while_a_job_runs_the_driver_holds_its_work_items_only(tmp_path):
    """Once planned, the job holds its items: not the manifest nor the store's ids (here half
    the videos written, long paths and ids so each copy would show)."""
    from reslstm.datasets.manifest import write_manifest
    from reslstm.extraction.driver import start
    from reslstm.extraction.settings import resolve_settings
    from reslstm.extraction.writer import StoreWriter

    n, long = 3000, "x" * 120
    rows = [{"video_id": f"{long}{i:05d}", "path": str(tmp_path / f"{long}{i:05d}.mp4"),
             "label": 0, "label_name": "a", "split": "train"} for i in range(n)]
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), tmp_path / "m.parquet")
    cfg = ExtractConfig(manifest=str(tmp_path / "m.parquet"), out=str(tmp_path / "store"),
                        extractor="tiny3d", streams=("rgb",))
    _, settings = resolve_settings(cfg)
    store = fs.FeatureStore(cfg.out)
    store.prepare(settings)
    w = StoreWriter(store, settings, run_id="r0")
    dim = settings["rgb"].feature_dim
    for r in rows[: n // 2]:
        w.consume(pa.Table.from_pylist([{
            **r, "stream": "rgb", "kind": "segment", "seg_index": 0, "first_clip": 0,
            "num_clips": 1, "is_last": True, "total_frames": 16, "padded": False, "fps": 25.0,
            "warning": None, "data": np.zeros(dim, np.float32).tobytes(), "shape": [1, dim]}],
            schema=SEGMENT_SCHEMA))
    w.close()
    del w, rows
    before = pa.total_allocated_bytes()
    with start(cfg) as run:
        held = pa.total_allocated_bytes() - before
        assert len(run.items) == n // 2
        assert run.store._written is None and run.store._failures is None
        # The items' buffers and a few KiB; the manifest would add about 2x, the ids 0.5x.
        assert held < 1.1 * run.items.get_total_buffer_size() + 64 * 1024, (
            held, run.items.get_total_buffer_size())


def test_a_local_folder_is_listed_a_chunk_at_a_time_as_pyarrow_lists_it(tmp_path, monkeypatch):
    """``os.scandir`` in chunks of 2 gives the files pyarrow's listing gives: files and links
    to files with their sizes; no folders, no dangling links; a missing folder is empty."""
    import os

    for i in range(6):  # 7 files with the link: 3 chunks of 2 and the rest
        (tmp_path / f"v{i}.mp4").write_bytes(b"\0" * (10 + i))
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "v1.mp4", tmp_path / "link.mp4")
    os.symlink(tmp_path / "gone.mp4", tmp_path / "dangling.mp4")
    monkeypatch.setattr(listing, "CHUNK", 2)
    names, sizes = listing._listing(pafs.LocalFileSystem(), str(tmp_path))
    got = sorted(zip(names.to_pylist(), sizes.tolist()))
    assert got == sorted([(f"v{i}.mp4", 10 + i) for i in range(6)] + [("link.mp4", 11)])
    wrapped = pafs.SubTreeFileSystem("/", pafs.LocalFileSystem())  # pyarrow's listing
    ref_names, ref_sizes = listing._listing(wrapped, str(tmp_path).lstrip("/"))
    assert got == sorted(zip(ref_names.to_pylist(), ref_sizes.tolist()))
    empty = listing._listing(pafs.LocalFileSystem(), str(tmp_path / "missing"))
    assert len(empty[0]) == 0 and len(empty[1]) == 0
