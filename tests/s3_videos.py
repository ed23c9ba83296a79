"""The synthetic data set on the local S3 API, for the tests that extract from object storage:
the videos under ``<prefix>/videos/``, a manifest at ``<prefix>/manifest.parquet`` that lists
them by path relative to itself (so it names no endpoint and no credentials), plus one listed
video that is not in the bucket."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reslstm.datasets.manifest import MANIFEST_SCHEMA, write_manifest

MISSING_ID = "gone/gone_000"


def synthetic_on_s3(s3_server, bucket: str, prefix: str, local_dir: Path, seed: int = 7,
                    every_split: bool = False) -> dict:
    """Generate 1 video per class in ``local_dir``, upload it; returns ``manifest`` (the S3 URI,
    credentials included), ``local_manifest`` (the same videos on the local disk) and ``ids``
    (the video ids present in the bucket). ``every_split``: the S3 manifest puts every fourth
    video in val and the one after it in test (one video per class leaves val and test empty
    otherwise), for a training run on the features."""
    from reslstm.datasets.synthetic import generate_synthetic

    local_manifest = generate_synthetic(local_dir, videos_per_class=1, seed=seed)
    s3_server.bucket(bucket)
    pafs.copy_files(str(Path(local_dir) / "videos"), f"{bucket}/{prefix}/videos",
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3_server.filesystem())
    rows = pq.read_table(local_manifest).select(MANIFEST_SCHEMA.names).to_pylist()
    for i, r in enumerate(rows):
        r["path"] = os.path.relpath(r["path"], local_dir)
        if every_split:
            r["split"] = {1: "val", 2: "test"}.get(i % 4, "train")
    ids = {r["video_id"] for r in rows}
    rows.append({**rows[0], "video_id": MISSING_ID, "path": "videos/gone/gone_000.mp4"})
    manifest = s3_server.uri(bucket, f"{prefix}/manifest.parquet")
    write_manifest(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    return {"manifest": manifest, "local_manifest": local_manifest, "ids": ids}
