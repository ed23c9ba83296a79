"""Kinetics and Something-Something v2 manifests from tiny hand-written annotations in the real
formats, and jobs/manifest.py end to end (Kinetics, SSv2, UCF-101)."""

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reslstm.datasets import (MANIFEST_SCHEMA, ManifestError, manifest_notes, missing_videos,
                              read_kinetics, read_ssv2)
from jobs_loader import job
from test_manifest import UCF_CLASSES, make_ucf

FOOTBALL = "passing American football (in game)"
UKULELE = 'playing "ukulele", badly'
KINETICS_CLASSES = sorted(["abseiling", FOOTBALL, UKULELE])  # the label order

TRAIN_CSV = '''label,youtube_id,time_start,time_end,split
abseiling,---QUuC4vJs,3,13,train
abseiling,--33Lscn6sk,4,14,train
abseiling,-0lO_jHUU24,0,10,train
abseiling,a1b2c3d4e5f,120,130,train
"passing American football (in game)",f1,0,10,train
"passing American football (in game)",f2,5,15,train
"passing American football (in game)",f3,20,30,train
"passing American football (in game)",f4,1,11,train
"playing ""ukulele"", badly",u1,0,10,train
"playing ""ukulele"", badly",u2,7,17,train
'''
VALIDATE_CSV = '''label,youtube_id,time_start,time_end,split
abseiling,v1,0,10,val
"passing American football (in game)",v2,30,40,val
"playing ""ukulele"", badly",v3,2,12,val
"playing ""ukulele"", badly",v4,9,19,val
'''
TEST_CSV = '''youtube_id,time_start,time_end,split
t1,0,10,test
t2,3,13,test
'''
# not downloaded: one training clip, one validate clip
K_MISSING = {"f3_000020_000030", "v4_000009_000019"}


def clip_path(videos: Path, name: str, label: str | None) -> Path:
    """Training clips in per-class folders (the football class with underscores), validate
    clips flat in val/ as .mkv."""
    if name.startswith(("v", "t")):
        return videos / "val" / f"{name}.mkv"
    return videos / "train" / label.replace(" ", "_") / f"{name}.mp4"


def make_kinetics(tmp_path: Path) -> tuple[Path, Path]:
    ann, videos = tmp_path / "annotations", tmp_path / "kinetics400"
    ann.mkdir()
    for name, text in (("train", TRAIN_CSV), ("validate", VALIDATE_CSV), ("test", TEST_CSV)):
        (ann / f"kinetics_400_{name}.csv").write_text(text)
    for label, name, _ in kinetics_clips():
        if name not in K_MISSING:
            path = clip_path(videos, name, label)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    return ann, videos


def kinetics_clips():
    """(label, clip name, split) of the train and validate CSVs."""
    for text, split in ((TRAIN_CSV, "train"), (VALIDATE_CSV, "test")):
        for row in list(csv.DictReader(text.splitlines())):
            yield row["label"], f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}", split


def test_kinetics_rows_are_exact(tmp_path):
    ann, videos = make_kinetics(tmp_path)
    table = read_kinetics(ann, videos, val_fraction=0.0)
    assert table.schema == MANIFEST_SCHEMA
    expected = [{"video_id": name, "path": str(clip_path(videos.absolute(), name, label)),
                 "label": KINETICS_CLASSES.index(label), "label_name": label, "split": split}
                for label, name, split in kinetics_clips() if name not in K_MISSING]
    assert table.to_pylist() == expected
    assert table.to_pylist()[0]["video_id"] == "---QUuC4vJs_000003_000013"
    # the files may be given one by one, and in any order
    files = [ann / f"kinetics_400_{n}.csv" for n in ("validate", "train")]
    assert sorted(read_kinetics(files, videos, val_fraction=0.0).to_pylist(),
                  key=str) == sorted(table.to_pylist(), key=str)


def test_kinetics_missing_and_unlabelled_test_are_reported(tmp_path):
    ann, videos = make_kinetics(tmp_path)
    table = read_kinetics(ann, videos, val_fraction=0.0)
    missing = missing_videos(table)
    assert [(m["video_id"], m["label_name"], m["split"]) for m in missing] == [
        ("f3_000020_000030", FOOTBALL, "train"), ("v4_000009_000019", UKULELE, "test")]
    assert missing[0]["where"] == f"{ann / 'kinetics_400_train.csv'}:8"
    notes = manifest_notes(table)
    assert len(notes) == 1 and "kinetics_400_test.csv: 2 test videos without a label" in notes[0]


def test_kinetics_val_is_a_seeded_share_of_train_per_class(tmp_path):
    ann, videos = make_kinetics(tmp_path)
    table = read_kinetics(ann, videos, val_fraction=0.25, seed=5)
    rows = table.to_pylist()
    val = [r for r in rows if r["split"] == "val"]
    # downloaded train videos per class: 4, 3, 2 -> round half up of 25 %: 1 each
    assert sorted(r["label_name"] for r in val) == KINETICS_CLASSES
    assert {r["split"] for r in rows if r["video_id"].startswith("v")} == {"test"}
    assert read_kinetics(ann, videos, val_fraction=0.25, seed=5).equals(table)
    others = {tuple(read_kinetics(ann, videos, val_fraction=0.25, seed=s).column("split").to_pylist())
              for s in range(6, 12)}
    assert len(others | {tuple(table.column("split").to_pylist())}) > 1, "the seed changes nothing"


def test_kinetics_700_2020_names_and_labelled_test(tmp_path):
    """train.csv / validate.csv with the split word only in the file name; a labelled test
    row is "unused"."""
    videos = tmp_path / "flat"
    videos.mkdir()
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end\nabseiling,a,0,10\n"
                                        "abseiling,b,0,10\n")
    (tmp_path / "validate.csv").write_text("label,youtube_id,time_start,time_end\nabseiling,c,0,10\n")
    (tmp_path / "test.csv").write_text("label,youtube_id,time_start,time_end\nabseiling,d,0,10\n")
    for v in "abcd":
        (videos / f"{v}_000000_000010.webm").touch()
    table = read_kinetics(tmp_path, videos, val_fraction=0.0)
    assert dict(zip(table.column("video_id").to_pylist(), table.column("split").to_pylist())) == {
        "a_000000_000010": "train", "b_000000_000010": "train", "c_000000_000010": "test",
        "d_000000_000010": "unused"}
    assert missing_videos(table) == [] and manifest_notes(table) == []


@pytest.mark.parametrize("row, message", [
    ("abseiling,x1,3s,13,train", "time_start '3s' is not a whole number of seconds"),
    ("abseiling,x1,3,13", "4 fields, the header has 5"),
    ("abseiling,x1,13,3,train", "time_end 3 is not after time_start 13"),
    ("abseiling,x1,3,13,holdout", "split 'holdout' is not one of"),
    (",x1,3,13,train", "a train row needs a label"),
    ("tai chi,x1,3,13,val", "unknown label 'tai chi'"),
])
def test_kinetics_corrupt_row_names_file_and_line(tmp_path, row, message):
    ann, videos = make_kinetics(tmp_path)
    path = ann / ("kinetics_400_validate.csv" if row.endswith(",val") else "kinetics_400_train.csv")
    path.write_text(path.read_text() + row + "\n")
    line = len(path.read_text().splitlines())
    with pytest.raises(ManifestError) as err:
        read_kinetics(ann, videos)
    assert f"{path}:{line}: " in str(err.value) and message in str(err.value)


def test_kinetics_bad_files(tmp_path):
    ann, videos = make_kinetics(tmp_path)
    (ann / "kinetics_400_train.csv").write_text("label,id,start,end\nabseiling,a,0,10\n")
    with pytest.raises(ManifestError, match=r"kinetics_400_train.csv: missing columns \['youtube_id'"):
        read_kinetics(ann, videos)
    with pytest.raises(ManifestError, match="no Kinetics annotation CSV files"):
        read_kinetics(videos, videos)
    with pytest.raises(ManifestError, match="video folder not found"):
        read_kinetics(ann / "kinetics_400_validate.csv", tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# Something-Something v2
# ---------------------------------------------------------------------------------------------

SSV2_LABELS = {"Approaching something with your camera": "0",
               "Holding something next to something": "1",
               "Putting something on a surface": "2"}
TEMPLATES = {0: "Approaching [something] with your camera",
             1: "Holding [something] next to [something]", 2: "Putting [something] on a surface"}
SSV2_TRAIN = [("78687", 1), ("42326", 1), ("100904", 1), ("80715", 0), ("34899", 0), ("1001", 2),
              ("1002", 2)]
SSV2_VAL = [("74225", 0), ("116154", 1), ("198186", 2)]
SSV2_MISSING = {"1002"}
SSV2_NAMES = list(SSV2_LABELS)


def make_ssv2(tmp_path: Path) -> tuple[Path, Path]:
    ann, videos = tmp_path / "ssv2", tmp_path / "20bn-something-something-v2"
    ann.mkdir()
    videos.mkdir()
    (ann / "something-something-v2-labels.json").write_text(json.dumps(SSV2_LABELS, indent=1))
    for name, entries in (("train", SSV2_TRAIN), ("validation", SSV2_VAL)):
        doc = [{"id": vid, "label": f"a {TEMPLATES[label].lower()}", "template": TEMPLATES[label],
                "placeholders": ["potato"] * TEMPLATES[label].count("[")} for vid, label in entries]
        (ann / f"something-something-v2-{name}.json").write_text(json.dumps(doc, indent=1))
    (ann / "something-something-v2-test.json").write_text(json.dumps([{"id": "9001"}, {"id": "9002"}]))
    for vid, _ in SSV2_TRAIN + SSV2_VAL:
        if vid not in SSV2_MISSING:
            (videos / f"{vid}.webm").touch()
    return ann, videos


def test_ssv2_rows_are_exact(tmp_path):
    ann, videos = make_ssv2(tmp_path)
    table = read_ssv2(ann, videos, val_fraction=0.0)
    assert table.schema == MANIFEST_SCHEMA
    expected = [{"video_id": vid, "path": str(videos.absolute() / f"{vid}.webm"), "label": label,
                 "label_name": SSV2_NAMES[label], "split": split}
                for entries, split in ((SSV2_TRAIN, "train"), (SSV2_VAL, "test"))
                for vid, label in entries if vid not in SSV2_MISSING]
    assert table.to_pylist() == expected
    assert [(m["video_id"], m["split"]) for m in missing_videos(table)] == [("1002", "train")]
    assert missing_videos(table)[0]["where"] == f"{ann / 'something-something-v2-train.json'}: entry 7 (id 1002)"
    notes = manifest_notes(table)
    assert len(notes) == 1 and "something-something-v2-test.json: 2 test videos without a label" in notes[0]
    # explicit files and labels
    files = [ann / "something-something-v2-train.json", ann / "something-something-v2-validation.json"]
    again = read_ssv2(files, videos, labels=ann / "something-something-v2-labels.json", val_fraction=0.0)
    assert again.equals(table)


def test_ssv2_val_is_a_seeded_share_of_train_per_class(tmp_path):
    ann, videos = make_ssv2(tmp_path)
    table = read_ssv2(ann, videos, val_fraction=0.4, seed=1)
    val = [r for r in table.to_pylist() if r["split"] == "val"]
    # downloaded train per class: 2, 3, 1 -> 1, 1, 0 (a class keeps one training video)
    assert sorted(r["label"] for r in val) == [0, 1]
    assert read_ssv2(ann, videos, val_fraction=0.4, seed=1).equals(table)


@pytest.mark.parametrize("entry, message", [
    ({"id": "5", "template": "Dropping [something]"}, "unknown label: template 'Dropping [something]'"),
    ({"id": "5", "label": "x"}, "no 'template'; validation entries need one"),
    ({"template": "Putting [something] on a surface"}, "expected an object with an 'id'"),
])
def test_ssv2_corrupt_entry_names_file_and_entry(tmp_path, entry, message):
    ann, videos = make_ssv2(tmp_path)
    path = ann / "something-something-v2-validation.json"
    doc = json.loads(path.read_text()) + [entry]
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError) as err:
        read_ssv2(ann, videos)
    assert f"{path}: entry {len(doc)}" in str(err.value) and message in str(err.value)


def test_ssv2_bad_labels_and_json(tmp_path):
    ann, videos = make_ssv2(tmp_path)
    labels = ann / "something-something-v2-labels.json"
    labels.write_text(json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(ManifestError, match="indices must run 0..1 without gaps"):
        read_ssv2(ann, videos)
    labels.write_text("{not json")
    with pytest.raises(ManifestError, match=f"{labels}: not valid JSON"):
        read_ssv2(ann, videos)
    labels.unlink()
    with pytest.raises(ManifestError, match="no '\\*labels.json' files"):
        read_ssv2(ann, videos)


# ---------------------------------------------------------------------------------------------
# jobs/manifest.py
# ---------------------------------------------------------------------------------------------

def test_job_kinetics(tmp_path, capsys):
    ann, videos = make_kinetics(tmp_path)
    out = tmp_path / "m" / "k400.parquet"
    rc = job("manifest").main(["kinetics", "--annotations", str(ann), "--videos", str(videos),
                               "--out", str(out), "--val-fraction", "0.25", "--seed", "5"])
    printed = capsys.readouterr().out
    assert rc == 0
    table = pq.read_table(out)
    assert table.equals(read_kinetics(ann, videos, val_fraction=0.25, seed=5).replace_schema_metadata())
    missing_csv = tmp_path / "m" / "k400.missing.csv"
    with missing_csv.open() as fh:
        assert [(r["video_id"], r["label_name"], r["split"]) for r in csv.DictReader(fh)] == [
            ("f3_000020_000030", FOOTBALL, "train"), ("v4_000009_000019", UKULELE, "test")]
    lines = printed.splitlines()
    assert lines[0] == f"kinetics: 12 videos of 3 classes -> {out}"
    assert lines[1] == "videos per split: train 6, val 3, test 3, unused 0"
    assert "  1 passing American football (in game) (4 videos)" in lines
    assert f"missing: 2 listed videos not found, left out (all in {missing_csv}):" in lines
    assert any(ln.startswith("note: ") and "2 test videos without a label" in ln for ln in lines)


def test_job_ssv2(tmp_path, capsys):
    ann, videos = make_ssv2(tmp_path)
    out, missing = tmp_path / "ssv2.parquet", tmp_path / "lists" / "not-downloaded.csv"
    rc = job("manifest").main(["ssv2", "--annotations", str(ann / "something-something-v2-train.json"),
                               "--annotations", str(ann / "something-something-v2-validation.json"),
                               "--labels", str(ann / "something-something-v2-labels.json"),
                               "--videos", str(videos), "--out", str(out), "--missing-list", str(missing)])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert pq.read_table(out).num_rows == 9
    assert lines[:2] == [f"ssv2: 9 videos of 3 classes -> {out}", "videos per split: train 4, val 2, test 3, unused 0"]
    assert "  0 Approaching something with your camera (3 videos)" in lines
    assert f"  1002 ({ann / 'something-something-v2-train.json'}: entry 7 (id 1002))" in lines
    assert missing.read_text().splitlines()[0] == "video_id,label,label_name,split,path,where"


def test_job_ucf101(tmp_path, capsys):
    splits, videos = make_ucf(tmp_path)
    out = tmp_path / "ucf.parquet"
    rc = job("manifest").main(["ucf101", "--annotations", str(splits), "--videos", str(videos),
                               "--split", "1", "--out", str(out), "--val-fraction", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and pq.read_table(out).num_rows == 63
    assert lines[:2] == [f"ucf101: 63 videos of 3 classes -> {out}",
                         "videos per split: train 45, val 0, test 18, unused 0"]
    assert [ln.strip() for ln in lines[3:6]] == [f"{i} {c} (21 videos)" for i, c in enumerate(UCF_CLASSES)]
    assert "missing: none" in lines
    assert not list(tmp_path.glob("*.missing.csv"))


@pytest.mark.parametrize("argv, message", [
    (["kinetics", "--labels", "l.json"], "kinetics takes no --labels (it is for ssv2)"),
    (["ssv2", "--split", "2"], "ssv2 takes no --split (it is for hmdb51, ucf101)"),
    (["ucf101"], "ucf101 takes exactly one --annotations, got 0"),
])
def test_job_refuses_options_of_other_readers(tmp_path, capsys, argv, message):
    rc = job("manifest").main([*argv, "--videos", str(tmp_path), "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"manifest: {message}\n"


def test_job_corrupt_row_is_one_line_naming_file_and_line(tmp_path, capsys):
    ann, videos = make_kinetics(tmp_path)
    path = ann / "kinetics_400_train.csv"
    path.write_text(path.read_text() + "abseiling,x1,three,13,train\n")
    rc = job("manifest").main(["kinetics", "--annotations", str(ann), "--videos", str(videos),
                               "--out", str(tmp_path / "m.parquet")])
    assert rc == 2
    assert capsys.readouterr().err == (f"manifest: {path}:12: time_start 'three' is not a whole "
                                       "number of seconds\n")
    assert not (tmp_path / "m.parquet").exists()
