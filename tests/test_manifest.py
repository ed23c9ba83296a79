"""Manifests from tiny fixtures in the official UCF-101 / HMDB-51 formats, folders and CSV."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reslstm.datasets import (
    MANIFEST_SCHEMA,
    ManifestError,
    label_names,
    read_csv,
    read_folder_per_class,
    read_hmdb51,
    read_manifest,
    read_ucf101,
    stratified_split,
    write_manifest,
)

UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "YoYo"]
TRAIN_GROUPS, TEST_GROUPS, CLIPS = range(8, 13), range(1, 3), range(1, 4)


def make_ucf(tmp_path: Path, newline: str = "\r\n") -> tuple[Path, Path]:
    """classInd + trainlist01 + testlist01 (CRLF, like the official files) and empty videos."""
    splits, videos = tmp_path / "ucfTrainTestlist", tmp_path / "UCF-101"
    splits.mkdir()
    (splits / "classInd.txt").write_text(
        "".join(f"{i} {c}{newline}" for i, c in enumerate(UCF_CLASSES, 1)), newline="")
    train, test = [], []
    for i, cls in enumerate(UCF_CLASSES, 1):
        (videos / cls).mkdir(parents=True)
        for groups, out in ((TRAIN_GROUPS, train), (TEST_GROUPS, test)):
            for g in groups:
                for c in CLIPS:
                    name = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}.avi"
                    (videos / name).touch()
                    out.append(f"{name} {i}" if out is train else name)
    (splits / "trainlist01.txt").write_text("".join(f"{line}{newline}" for line in train), newline="")
    (splits / "testlist01.txt").write_text("".join(f"{line}{newline}" for line in test), newline="")
    return splits, videos


def append_line(path: Path, line: str) -> int:
    """Append a line; returns its 1-based line number."""
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [line]) + "\n")
    return len(lines) + 1


def test_ucf101_reads_official_lists(tmp_path):
    splits, videos = make_ucf(tmp_path)
    table = read_ucf101(splits, videos, split=1, val_fraction=0.0)
    assert table.schema == MANIFEST_SCHEMA
    rows = table.to_pylist()
    assert len(rows) == len(UCF_CLASSES) * (len(TRAIN_GROUPS) + len(TEST_GROUPS)) * len(CLIPS)
    row = next(r for r in rows if r["video_id"] == "Archery/v_Archery_g01_c02")
    assert row == {"video_id": "Archery/v_Archery_g01_c02", "path": str(videos / "Archery/v_Archery_g01_c02.avi"),
                   "label": 1, "label_name": "Archery", "split": "test"}
    assert {r["split"] for r in rows if "_g08_" in r["video_id"]} == {"train"}
    assert label_names(table) == UCF_CLASSES
    # the folder above ucfTrainTestlist works too
    assert read_ucf101(tmp_path, videos, val_fraction=0.0).equals(table)


def test_ucf101_val_holds_out_whole_groups(tmp_path):
    splits, videos = make_ucf(tmp_path)
    table = read_ucf101(splits, videos, val_fraction=0.4, seed=3)
    sides: dict[str, set] = {}
    for r in table.to_pylist():
        group = r["video_id"].rsplit("_c", 1)[0]
        sides.setdefault(group, set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values()), "a group straddles two splits"
    for cls in UCF_CLASSES:  # 5 train groups per class, 40 % -> 2 groups of 3 clips in val
        val_groups = [g for g, s in sides.items() if g.startswith(f"{cls}/") and s == {"val"}]
        assert len(val_groups) == 2
    assert read_ucf101(splits, videos, val_fraction=0.4, seed=3).equals(table)
    others = [read_ucf101(splits, videos, val_fraction=0.4, seed=s).column("split") for s in range(4, 9)]
    assert any(not col.equals(table.column("split")) for col in others)


def test_ucf101_missing_videos_listed_with_count(tmp_path):
    splits, videos = make_ucf(tmp_path)
    gone = sorted((videos / "YoYo").iterdir())[:13]
    for p in gone:
        p.unlink()
    with pytest.raises(ManifestError) as err:
        read_ucf101(splits, videos)
    msg = str(err.value)
    assert "13 of 63" in msg and str(gone[0]) in msg and "and 3 more" in msg and "check_files=False" in msg
    assert "trainlist01.txt:" in msg or "testlist01.txt:" in msg
    assert read_ucf101(splits, videos, check_files=False).num_rows == 63


def test_ucf101_duplicate_ids(tmp_path):
    splits, videos = make_ucf(tmp_path)
    n = append_line(splits / "trainlist01.txt", "YoYo/v_YoYo_g09_c01.avi 3")
    with pytest.raises(ManifestError, match=rf"(?s)duplicate.*YoYo/v_YoYo_g09_c01.*trainlist01.txt:{n}"):
        read_ucf101(splits, videos)


def test_ucf101_unknown_label(tmp_path):
    splits, videos = make_ucf(tmp_path)
    n = append_line(splits / "testlist01.txt", "Bogus/v_Bogus_g01_c01.avi")
    with pytest.raises(ManifestError, match=rf"testlist01.txt:{n}: unknown label.*'Bogus'.*classInd.txt"):
        read_ucf101(splits, videos)


@pytest.mark.parametrize("line, problem", [
    ("YoYo/v_YoYo_g20_c01.avi", "malformed line"),  # train lines need a label
    ("v_YoYo_g20_c01.avi 3", "malformed line"),  # no class folder
    ("YoYo/v_YoYo_g20_c01.avi x", "malformed label"),
    ("YoYo/v_YoYo_g20_c01.avi 1", "label 1 disagrees with class folder 'YoYo'"),
])
def test_ucf101_malformed_line_names_file_and_line(tmp_path, line, problem):
    splits, videos = make_ucf(tmp_path)
    n = append_line(splits / "trainlist01.txt", line)
    with pytest.raises(ManifestError, match=rf"trainlist01.txt:{n}: {problem}"):
        read_ucf101(splits, videos, check_files=False)


def test_ucf101_malformed_class_index(tmp_path):
    splits, videos = make_ucf(tmp_path)
    append_line(splits / "classInd.txt", "five Bogus")
    with pytest.raises(ManifestError, match=r"classInd.txt:4: expected"):
        read_ucf101(splits, videos)


def test_ucf101_missing_split_files(tmp_path):
    splits, videos = make_ucf(tmp_path)
    with pytest.raises(ManifestError, match=r"test list for split 2 not found: .*testlist02.txt|"
                                            r"train list for split 2 not found: .*trainlist02.txt"):
        read_ucf101(splits, videos, split=2)
    (splits / "testlist01.txt").unlink()
    with pytest.raises(ManifestError, match=r"not found: .*testlist01.txt"):
        read_ucf101(splits, videos)
    with pytest.raises(ManifestError, match=r"classInd.txt"):
        read_ucf101(tmp_path / "nowhere", videos)
    with pytest.raises(ManifestError, match="split must be 1, 2 or 3"):
        read_ucf101(splits, videos, split=4)


def test_ucf101_flat_video_folder(tmp_path):
    splits, videos = make_ucf(tmp_path)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in videos.rglob("*.avi"):
        p.rename(flat / p.name)
    table = read_ucf101(splits, flat)
    assert all(Path(p).parent == flat for p in table.column("path").to_pylist())


HMDB = {"brush_hair": "1111201", "cartwheel": "1112220", "wave": "2111102"}  # one code per video


def make_hmdb(tmp_path: Path) -> tuple[Path, Path]:
    splits, videos = tmp_path / "testTrainMulti_7030_splits", tmp_path / "hmdb51"
    splits.mkdir()
    for cls, codes in HMDB.items():
        (videos / cls).mkdir(parents=True)
        names = [f"{cls}_clip#{i}_u_nm_np1_fr_goo_{i}.avi" for i in range(len(codes))]
        for name in names:
            (videos / cls / name).touch()
        for n in (1, 2):  # trailing space, as in the official files
            (splits / f"{cls}_test_split{n}.txt").write_text("".join(f"{v} {c} \n" for v, c in zip(names, codes)))
    return splits, videos


def test_hmdb51_reads_split_files(tmp_path):
    splits, videos = make_hmdb(tmp_path)
    table = read_hmdb51(tmp_path, videos, split=1, val_fraction=0.0)  # finds the splits sub-folder
    rows = table.to_pylist()
    assert label_names(table) == sorted(HMDB)
    got = {cls: "".join({"train": "1", "test": "2", "unused": "0"}[r["split"]]
                        for r in rows if r["label_name"] == cls) for cls in HMDB}
    assert got == HMDB
    assert rows[0]["video_id"] == "brush_hair/brush_hair_clip#0_u_nm_np1_fr_goo_0"
    assert rows[0]["path"] == str(videos / "brush_hair" / "brush_hair_clip#0_u_nm_np1_fr_goo_0.avi")


def test_hmdb51_val_is_stratified_per_class(tmp_path):
    splits, videos = make_hmdb(tmp_path)
    table = read_hmdb51(splits, videos, val_fraction=0.25, seed=0)
    for cls, codes in HMDB.items():
        splits_of = [r["split"] for r in table.to_pylist() if r["label_name"] == cls]
        n_train = codes.count("1")  # 5, 3 and 4 train videos: 25 % rounds to one each
        assert splits_of.count("val") == 1
        assert splits_of.count("train") == n_train - splits_of.count("val")
        assert splits_of.count("test") == codes.count("2")


def test_hmdb51_bad_inputs(tmp_path):
    splits, videos = make_hmdb(tmp_path)
    with pytest.raises(ManifestError, match="no HMDB-51 split files '<class>_test_split3.txt'"):
        read_hmdb51(splits, videos, split=3)
    (splits / "wave_test_split2.txt").unlink()
    with pytest.raises(ManifestError, match=r"1 HMDB-51 split files are missing:\n.*wave_test_split2.txt"):
        read_hmdb51(splits, videos, split=2)
    n = append_line(splits / "cartwheel_test_split1.txt", "extra.avi 3")
    with pytest.raises(ManifestError, match=rf"cartwheel_test_split1.txt:{n}: malformed line"):
        read_hmdb51(splits, videos)
    (splits / "cartwheel_test_split1.txt").write_text("extra.avi 1\n")
    with pytest.raises(ManifestError, match=r"1 of 15 listed video files are missing:\n.*cartwheel/extra.avi"):
        read_hmdb51(splits, videos)


def make_folders(tmp_path: Path, per_class: int = 10) -> Path:
    root = tmp_path / "videos"
    for cls in ("zebra", "apple"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            (root / cls / f"{cls}_{i}.{'mp4' if i % 2 else 'AVI'}").touch()
        (root / cls / "notes.txt").touch()
        (root / cls / ".hidden.mp4").touch()
    (root / "empty_class").mkdir()
    return root


def test_folder_per_class_stratified(tmp_path):
    root = make_folders(tmp_path)
    table = read_folder_per_class(root, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert label_names(table) == ["apple", "zebra"]
    assert table.num_rows == 20
    for cls in ("apple", "zebra"):
        splits = [r["split"] for r in table.to_pylist() if r["label_name"] == cls]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (7, 1, 2)
    assert read_folder_per_class(root, seed=0).equals(table)
    assert not read_folder_per_class(root, seed=1).column("split").equals(table.column("split"))


def test_folder_per_class_split_file(tmp_path):
    root = make_folders(tmp_path, per_class=3)
    split_file = tmp_path / "splits.txt"
    split_file.write_text("apple/apple_0.AVI test\napple/apple_1.mp4 train\nzebra/zebra_2.AVI train\n")
    table = read_folder_per_class(root, split_file=split_file, val_fraction=0.0)
    got = {r["video_id"]: r["split"] for r in table.to_pylist()}
    assert got == {"apple/apple_0": "test", "apple/apple_1": "train", "apple/apple_2": "unused",
                   "zebra/zebra_0": "unused", "zebra/zebra_1": "unused", "zebra/zebra_2": "train"}
    split_file.write_text("apple/apple_0.AVI test\napple/apple_9.mp4 train\n")
    with pytest.raises(ManifestError, match=r"1 video files listed in .*splits.txt are missing:\n.*apple_9.mp4 "
                                            r"\(listed at .*splits.txt:2\)"):
        read_folder_per_class(root, split_file=split_file)
    split_file.write_text("apple/apple_0.AVI holdout\n")
    with pytest.raises(ManifestError, match=r"splits.txt:1: malformed line"):
        read_folder_per_class(root, split_file=split_file)


def test_csv_reader(tmp_path):
    (tmp_path / "v").mkdir()
    for name in "abcdef":
        (tmp_path / "v" / f"{name}.mp4").touch()
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("path,label_name,split\nv/a.mp4,run,train\nv/b.mp4,jump,train\nv/c.mp4,run,test\n"
                        f"{tmp_path / 'v' / 'd.mp4'},jump,test\nv/e.mp4,run,train\nv/f.mp4,jump,train\n")
    table = read_csv(csv_path, seed=0)  # no val rows: 10 % of each class's train -> at least one
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert rows["run/a"]["label"] == 1 and rows["jump/b"]["label"] == 0  # sorted names
    assert rows["jump/d"]["path"] == str(tmp_path / "v" / "d.mp4")
    assert [r["split"] for r in rows.values()].count("val") == 2
    assert {rows["run/c"]["split"], rows["jump/d"]["split"]} == {"test"}

    csv_path.write_text("path,label_name,label,video_id\nv/a.mp4,run,0,x1\nv/b.mp4,jump,1,x2\n")
    table = read_csv(csv_path, val_fraction=0.0, test_fraction=0.0)
    assert table.to_pylist()[1] == {"video_id": "x2", "path": str(tmp_path / "v" / "b.mp4"), "label": 1,
                                    "label_name": "jump", "split": "train"}

    csv_path.write_text("path,label_name,label\nv/a.mp4,run,0\nv/b.mp4,jump,0\n")
    with pytest.raises(ManifestError, match=r"list.csv:3: conflicting label: 'jump' -> 0"):
        read_csv(csv_path)
    csv_path.write_text("file,label_name\nv/a.mp4,run\n")
    with pytest.raises(ManifestError, match=r"list.csv: missing column 'path'"):
        read_csv(csv_path)
    csv_path.write_text("path,label_name,split\nv/a.mp4,run,train\nv/zz.mp4,run,validation\n")
    with pytest.raises(ManifestError, match=r"list.csv:3: split 'validation' is not one of"):
        read_csv(csv_path)
    csv_path.write_text("path,label_name\nv/a.mp4,run\nv/missing.mp4,run\n")
    with pytest.raises(ManifestError, match=r"1 of 2 listed video files are missing:\n.*missing.mp4 \(listed at .*list.csv:3\)"):
        read_csv(csv_path)


def test_stratified_split_counts_and_seed():
    ids = [f"c{c}/{i}" for c in range(3) for i in range(9)]
    names = [v.split("/")[0] for v in ids]
    splits = stratified_split(ids, names, val_fraction=0.2, test_fraction=0.3, seed=5)
    for c in range(3):
        mine = [s for s, n in zip(splits, names) if n == f"c{c}"]
        assert (mine.count("train"), mine.count("val"), mine.count("test")) == (4, 2, 3)
    # the rule does not depend on the listing order
    assert stratified_split(ids[::-1], names[::-1], 0.2, 0.3, 5) == splits[::-1]
    tiny = stratified_split(["a", "b"], ["x", "x"], 0.2, 0.3, 0)
    assert sorted(tiny) == ["test", "train"]  # a class keeps a training video
    with pytest.raises(ManifestError, match="val_fraction"):
        stratified_split(ids, names, val_fraction=1.2)


def test_manifest_round_trip_and_schema_errors(tmp_path):
    splits, videos = make_ucf(tmp_path)
    table = read_ucf101(splits, videos)
    out = write_manifest(table, tmp_path / "out" / "manifest.parquet")
    back = read_manifest(out)
    assert back.equals(table) and back.schema == MANIFEST_SCHEMA

    def broken(name, t):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(t, path)
        return path

    with pytest.raises(ManifestError, match=r"missing column 'split'"):
        read_manifest(broken("nosplit", table.drop_columns(["split"])))
    bad_label = table.set_column(2, "label", pa.array(["x"] * table.num_rows))
    with pytest.raises(ManifestError, match=r"column 'label' has type string, expected int32"):
        read_manifest(broken("strlabel", bad_label))
    dup = pa.concat_tables([table, table.slice(0, 2)])
    with pytest.raises(ManifestError, match=r"column 'video_id' has 2 duplicate ids"):
        write_manifest(dup, tmp_path / "dup.parquet")
    bad_split = table.set_column(4, "split", pa.array(["training"] * table.num_rows))
    with pytest.raises(ManifestError, match=r"column 'split' has values \['training'\]"):
        write_manifest(bad_split, tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="junk.parquet: not a readable Parquet manifest"):
        read_manifest(tmp_path / "junk.parquet")

    # int64 labels are cast; relative paths resolve against the manifest's folder
    loose = pa.table({"video_id": ["a/x"], "path": ["clips/x.mp4"], "label": pa.array([0], pa.int64()),
                      "label_name": ["a"], "split": ["train"]})
    back = read_manifest(broken("loose", loose))
    assert back.schema == MANIFEST_SCHEMA
    assert back.column("path").to_pylist() == [str(tmp_path / "clips" / "x.mp4")]


def test_validation_names_each_broken_rule_and_resolves_paths_in_order(tmp_path, monkeypatch):
    """The manifest's checks (Arrow kernels, no Python per video) and the relative paths
    resolved a chunk at a time, each path in its own row."""
    from reslstm.datasets import manifest as mf

    monkeypatch.setattr(mf, "CHUNK_ROWS", 2)  # several chunks
    n = 7
    paths = ["clips/a.mp4", "/abs/b.mp4", "s3://bucket/c.mp4", "./d.mp4", "sub/../e.mp4",
             "f.mp4", "/abs/g.mp4"]
    good = pa.table({"video_id": [f"v{i}" for i in range(n)], "path": paths,
                     "label": pa.array([0, 1, 0, 1, 2, 2, 0], pa.int32()),
                     "label_name": ["a", "b", "a", "b", "c", "c", "a"], "split": ["train"] * n})
    path = tmp_path / "m" / "manifest.parquet"
    path.parent.mkdir()
    pq.write_table(good, path)
    got = mf.read_manifest(path).column("path").to_pylist()
    folder = str(tmp_path / "m")
    assert got == [f"{folder}/clips/a.mp4", "/abs/b.mp4", "s3://bucket/c.mp4", f"{folder}/d.mp4",
                   f"{folder}/e.mp4", f"{folder}/f.mp4", "/abs/g.mp4"]
    assert mf.label_names(good) == ["a", "b", "c"]

    def fails(match, **column):
        (name, values), = column.items()
        broken = good.set_column(good.schema.get_field_index(name), name,
                                 pa.array(values, good.schema.field(name).type))
        with pytest.raises(ManifestError, match=match):
            mf.validate_manifest(broken)

    fails(r"'video_id' has 1 duplicate ids:\n.*v0", video_id=["v0", "v1", "v0", "v3", "v4", "v5", "v6"])
    fails("'video_id' or 'path' has empty strings", path=[*paths[:6], ""])
    fails("'video_id' or 'path' has empty strings", video_id=["", *[f"v{i}" for i in range(1, n)]])
    fails("'label' has negative values", label=[0, 1, 0, 1, -2, -2, 0])
    fails("not one-to-one", label_name=["a", "b", "a", "b", "c", "c", "b"])
    fails("not one-to-one", label=[0, 1, 0, 1, 2, 2, 2])
