"""The feature store: schema, layout, reading, writing and checking (``FeatureStore``).

Modules: ``schema`` (Arrow schemas, ``StreamSettings``, the features column), ``store``
(``FeatureStore``: layout, metadata, id sets, lock, preparation; atomic part files),
``compaction`` (small part files merged, each row read once meanwhile), ``reader`` (rows,
failures, the training index, verification) and ``sampled`` (where each video's row is, and
the T sampled clips read straight from there, both streams at the same clips); the writer that joins
extracted segments into rows is extraction's (``reslstm.extraction.writer``). Everything is
re-exported here, so callers write ``from reslstm import features as fs`` and
``fs.read_stream(store, "rgb")``. A store is a local directory or any pyarrow filesystem URI
(``s3://bucket/prefix``).

May import: ``reslstm.storage``, ``reslstm.sampling``, ``reslstm.fusion`` (stream names),
``reslstm.errors``. Nothing here decodes video, runs a model or imports Ray.
"""

from .reader import (StoreIndex, VerifyReport, failed_ids, has_stream, read_failures,
                     read_index, read_stream, stream_files, verify_store, written_ids)
from .sampled import INDEX_COLUMNS, ReadPlan, StreamLocations, locate, plan_reads, read_sampled
from .schema import (COMPARED_SETTINGS, FAILURE_SCHEMA, FAILURES_DIR, METADATA_FILE, SPAN_COLUMNS,
                     STORE_FORMAT_VERSION, StoreError, StreamSettings, feature_schema,
                     features_to_arrow, features_to_numpy, span_columns)
from .store import FeatureStore, as_store, remove_temporaries, write_part


def stream_dir(store, stream: str):
    """The ``storage.Location`` of one stream's part files."""
    return as_store(store).stream_dir(stream)


def read_metadata(store) -> dict[str, StreamSettings]:
    """Settings per stream recorded in the store's metadata.json ({} for a new store)."""
    return as_store(store).read_metadata()


def read_metadata_extra(store) -> dict:
    """The fields of metadata.json beyond the stream settings (e.g. the manifest path)."""
    return as_store(store).read_metadata_extra()


def write_metadata(store, streams: dict[str, StreamSettings], **extra) -> str:
    """Write the store's metadata.json atomically."""
    return as_store(store).write_metadata(streams, **extra)


__all__ = [
    "ReadPlan", "StreamLocations", "locate", "plan_reads", "read_sampled",
    "COMPARED_SETTINGS", "FAILURES_DIR", "as_store", "FAILURE_SCHEMA", "FeatureStore", "INDEX_COLUMNS",
    "METADATA_FILE", "SPAN_COLUMNS", "STORE_FORMAT_VERSION", "StoreError", "StoreIndex",
    "StreamSettings", "VerifyReport", "failed_ids", "feature_schema", "features_to_arrow",
    "features_to_numpy", "has_stream", "read_failures", "read_index", "read_metadata",
    "read_metadata_extra", "read_stream", "remove_temporaries", "span_columns", "stream_dir", "stream_files",
    "verify_store", "write_metadata", "write_part", "written_ids",
]
