"""Compaction: small part files merged into files of about a target size; every reader of the
store sees each row once before, during (a job killed between the merged file's commit and the
deletes) and after; the writer's parts are sized by bytes; the job's --compact-only step."""

import shutil

import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from reslstm import features as fs
from reslstm.extraction.writer import StoreWriter
from reslstm.features import compaction
from jobs_loader import job
from test_store_writer import SETTINGS, seg


def _write(store, n, rows_per_file=1, first=0, stream="rgb"):
    w = StoreWriter(store, SETTINGS, run_id="r", rows_per_file=rows_per_file)
    for i in range(first, first + n):
        k = 1 + i % 3
        spans = {"first_frame": [8 * j for j in range(k)], "last_frame": [8 * j + 15 for j in range(k)],
                 "start_s": [0.32 * j for j in range(k)], "end_s": [0.32 * j + 0.64 for j in range(k)]}
        w.consume(seg(0, 0, k, is_last=True, total_frames=16 + 8 * (k - 1), vid=f"v{i:03d}",
                      stream=stream, **spans)[0])
    w.close()
    return w


def _rows(store, stream="rgb"):
    table = fs.read_stream(store, stream)
    table = table.take(pc.sort_indices(table, [("video_id", "ascending")]))
    return table.select(["video_id", "num_clips", "features", *fs.SPAN_COLUMNS]).to_pylist()


def _names(directory):
    return [p.rsplit("/", 1)[-1] for p in directory.list(".parquet")]


def test_runs_merge_consecutive_small_files_up_to_the_target():
    def p(i):
        return f"part-{i:020d}-0000000{i % 10}.parquet"

    sizes = [(p(1), 10), (p(2), 10), (p(3), 60), (p(4), 10), (p(5), 30), (p(6), 30),
             (p(7), 40), ("notes.parquet", 1), (p(8), 10), (p(9), 10)]
    # 100 bytes: p3 (>= half) ends a run; p4+p5+p6 = 70 and p7 would pass 100; a name that is
    # not a part file ends a run too, so p7 is alone and left alone.
    assert compaction.runs(sizes, 100) == [[p(1), p(2)], [p(4), p(5), p(6)], [p(8), p(9)]]


def test_compaction_keeps_every_row_once_in_fewer_files(tmp_path):
    _write(tmp_path, 12)
    _write(tmp_path, 5, stream="flow")
    before = {s: _rows(tmp_path, s) for s in ("rgb", "flow")}
    failures = fs.read_failures(tmp_path).num_rows
    assert len(fs.stream_files(tmp_path, "rgb")) == 12
    biggest = max(f.stat().st_size for f in (tmp_path / "rgb").iterdir())
    done = fs.FeatureStore(tmp_path).compact(target_bytes=3 * biggest)  # 3 rows per file
    rgb = fs.stream_files(tmp_path, "rgb")
    assert len(rgb) == 4 and done["rgb"].after == 4 and done["rgb"].merged == 12
    assert all(compaction.MERGED.match(p.rsplit("/", 1)[-1]) for p in rgb)
    # Nothing replaced is left, and the plain Parquet dataset (no project code) reads each row once.
    assert _names(fs.FeatureStore(tmp_path).stream_dir("rgb")) == [p.rsplit("/", 1)[-1] for p in rgb]
    assert pads.dataset(str(tmp_path / "rgb"), format="parquet").count_rows() == 12
    assert {s: _rows(tmp_path, s) for s in ("rgb", "flow")} == before
    assert fs.read_failures(tmp_path).num_rows == failures
    assert fs.written_ids(tmp_path, "rgb") == {f"v{i:03d}" for i in range(12)}
    # Everything into one file per stream; a second compaction has nothing left to do.
    fs.FeatureStore(tmp_path).compact()
    (one,) = fs.stream_files(tmp_path, "rgb")
    assert _rows(tmp_path) == before["rgb"] and "~0002-" in one  # merged files merged again
    # Each merged name sorts after every file it replaced (stamps, then generation).
    last_of_run = sorted(p.rsplit("/", 1)[-1] for p in rgb)[-1]
    assert one.rsplit("/", 1)[-1] > last_of_run
    again = fs.FeatureStore(tmp_path).compact()
    assert not any(c.merged for c in again.values())


def test_a_compaction_killed_between_commit_and_deletes_reads_each_row_once(tmp_path):
    """The state a kill leaves after the merged file's commit: the replaced files still there.
    The store's readers skip them; the next job on the store deletes them."""
    fs.write_metadata(tmp_path, {"rgb": SETTINGS["rgb"]})
    _write(tmp_path, 6)
    before = _rows(tmp_path)
    saved = tmp_path.parent / "saved"
    shutil.copytree(tmp_path / "rgb", saved)
    fs.FeatureStore(tmp_path).compact()
    for f in saved.iterdir():  # as if the deletes never happened
        shutil.copy(f, tmp_path / "rgb" / f.name)
    names = _names(fs.FeatureStore(tmp_path).stream_dir("rgb"))
    assert len(names) == 7
    merged = next(n for n in names if "~" in n)
    # The merged name sorts right after its last file: a paged listing cannot miss a row.
    assert sorted(names)[-1] == merged
    assert _rows(tmp_path) == before and fs.written_ids(tmp_path, "rgb") == {r["video_id"] for r in before}
    assert fs.verify_store(tmp_path).ok
    assert pads.dataset(str(tmp_path / "rgb"), format="parquet").count_rows() == 12  # raw: twice
    # The next job (``prepare`` under the lock) finishes the deletes; a rerun plans nothing.
    store = fs.FeatureStore(tmp_path)
    with store.lock():
        store.prepare({"rgb": SETTINGS["rgb"]})
        items, done, _ = store.plan([{"video_id": r["video_id"]} for r in before], ["rgb"])
    assert _names(store.stream_dir("rgb")) == [merged] and (items.num_rows, done) == (0, 6)


def test_a_compaction_killed_before_its_commit_leaves_nothing_to_read(tmp_path, monkeypatch):
    _write(tmp_path, 4)
    before = _rows(tmp_path)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt  # the job stops while the merged file is written

    monkeypatch.setattr(pq.ParquetWriter, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        fs.FeatureStore(tmp_path).compact()
    monkeypatch.undo()
    assert _rows(tmp_path) == before and len(fs.stream_files(tmp_path, "rgb")) == 4


def test_old_and_new_schema_files_merge_with_null_spans_for_old_rows(tmp_path):
    _write(tmp_path, 3)
    first = fs.stream_files(tmp_path, "rgb")[0]
    old = pq.read_table(first).drop_columns(list(fs.SPAN_COLUMNS))
    pq.write_table(old, first)  # a row written before the clip-span columns existed
    fs.FeatureStore(tmp_path).compact()
    (merged,) = fs.stream_files(tmp_path, "rgb")
    table = pq.read_table(merged)
    assert table.num_rows == 3 and table.column("first_frame").null_count == 1


def test_the_writer_flushes_a_part_per_target_bytes(tmp_path):
    w = StoreWriter(tmp_path, SETTINGS, run_id="r", part_bytes=2 * 3 * 4)  # 2 clips of d = 3
    for i in range(4):
        w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid=f"v{i}")[0])
    assert len(fs.stream_files(tmp_path, "rgb")) == 2 and w.held["rgb"] == 0
    w.consume(seg(0, 0, 1, is_last=True, total_frames=16, vid="v4")[0])
    assert len(fs.stream_files(tmp_path, "rgb")) == 2 and w.held["rgb"] == 12  # held, not yet due
    w.close()
    assert len(fs.stream_files(tmp_path, "rgb")) == 3


def test_compact_only_merges_a_store_from_the_command_line(tmp_path, capsys):
    extract = job("extract")
    fs.write_metadata(tmp_path, {"rgb": SETTINGS["rgb"]})
    _write(tmp_path, 5)
    before = _rows(tmp_path)
    assert extract.main(["--compact-only", "--out", str(tmp_path)]) == 0
    assert len(fs.stream_files(tmp_path, "rgb")) == 1 and _rows(tmp_path) == before
    assert extract.main(["--compact-only", "--out", str(tmp_path)]) == 0
    assert extract.main(["--compact-only", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "extract: " in err and "not a feature store" in err
