"""The local S3 API of ``s3_fixture``: Parquet through pyarrow's S3 filesystem and through an
``s3://`` URI (a small file and one large enough for a multipart upload), listing, a missing
key, refused credentials, and Ray Data reading and writing with ``filesystem=``."""

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from s3_fixture import s3_server_fixture  # noqa: F401  (the fixture s3_server)



def _table(n_bytes: int, seed: int) -> pa.Table:
    # Random float64: Parquet cannot compress it, so the file is about n_bytes.
    return pa.table({"x": np.random.default_rng(seed).standard_normal(n_bytes // 8)})


@pytest.mark.parametrize("size", [1000, 12 * 2 ** 20], ids=["1kB", "12MB"])
def test_parquet_through_filesystem_and_uri(s3_server, size):
    fs = s3_server.filesystem()
    s3_server.bucket("roundtrip")
    small, big = _table(size, 0), _table(size, 1)
    pq.write_table(small, f"roundtrip/{size}/fs.parquet", filesystem=fs)
    uri_fs, base = pafs.FileSystem.from_uri(s3_server.uri("roundtrip", str(size)))
    assert base == f"roundtrip/{size}"
    pq.write_table(big, f"{base}/uri.parquet", filesystem=uri_fs)
    # Each read back through the other way in.
    assert pq.read_table(f"roundtrip/{size}/uri.parquet", filesystem=fs).equals(big)
    assert pq.read_table(f"{base}/fs.parquet", filesystem=uri_fs).equals(small)
    listed = fs.get_file_info(pafs.FileSelector(f"roundtrip/{size}"))
    assert sorted(i.base_name for i in listed) == ["fs.parquet", "uri.parquet"]
    assert all(i.size >= size for i in listed)


def test_missing_key_and_wrong_credentials(s3_server):
    fs = s3_server.filesystem()
    s3_server.bucket("misc")
    with pytest.raises(FileNotFoundError):
        fs.open_input_file("misc/not/there.parquet")
    pq.write_table(_table(1000, 2), "misc/t.parquet", filesystem=fs)
    # The server checks signatures: other keys are refused, so credentials that reach a
    # reader are really the ones that worked.
    wrong = s3_server.filesystem(access_key=s3_server.access_key, secret_key="not-the-secret")
    with pytest.raises(OSError, match="SIGNATURE_DOES_NOT_MATCH|ACCESS_DENIED"):
        wrong.get_file_info("misc/t.parquet")


def test_uri_without_credentials_takes_them_from_env(s3_server, tmp_path):
    fs = s3_server.filesystem()
    s3_server.bucket("envcreds")
    pq.write_table(_table(1000, 3), "envcreds/t.parquet", filesystem=fs)
    code = ("import sys, pyarrow.fs as f, pyarrow.parquet as pq\n"
            "fs, p = f.FileSystem.from_uri(sys.argv[1])\n"
            "print(pq.read_table(p + '/t.parquet', filesystem=fs).num_rows)\n")
    uri = s3_server.uri("envcreds", credentials=False)
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    base["HOME"] = str(tmp_path)  # no ~/.aws of the user's
    ok = subprocess.run([sys.executable, "-c", code, uri], env={**base, **s3_server.env()},
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.strip() == "125"
    denied = subprocess.run([sys.executable, "-c", code, uri],
                            env={**base, "AWS_EC2_METADATA_DISABLED": "true"},
                            capture_output=True, text=True, timeout=120)
    assert denied.returncode != 0


@pytest.mark.integration
def test_ray_data_reads_and_writes_with_filesystem(ray_local, s3_server):
    import ray

    fs = s3_server.filesystem()
    s3_server.bucket("raydata")
    rows = [{"video_id": f"v{i:03d}", "label": i % 5} for i in range(200)]
    # The filesystem is pickled to the write tasks: its credentials go with it.
    ray.data.from_items(rows).repartition(4).write_parquet("raydata/out", filesystem=fs)
    written = fs.get_file_info(pafs.FileSelector("raydata/out"))
    assert len(written) >= 2 and all(i.base_name.endswith(".parquet") for i in written)
    back = ray.data.read_parquet("raydata/out", filesystem=fs).to_pandas()
    assert sorted(back["video_id"]) == [r["video_id"] for r in rows]
    assert back["label"].sum() == sum(r["label"] for r in rows)
