"""Data sets: manifests (one module per source), the split policy, coarse categories and the
built-in synthetic set. The readers and the manifest I/O are re-exported here::

    from reslstm.datasets import read_ucf101, write_manifest

May import: ``reslstm.storage``, ``reslstm.errors`` (and ``reslstm.video`` for the synthetic
set's encoding). Nothing here knows about features, models or Ray.
"""

from .csv_list import read_csv
from .folder import read_folder_per_class
from .hmdb51 import read_hmdb51
from .kinetics import read_kinetics
from .manifest import (MANIFEST_SCHEMA, SPLITS, ManifestError, label_names, manifest_notes,
                       missing_videos, read_manifest, validate_manifest, write_manifest)
from .splits import PUBLISHED_SPLITS, stratified_split
from .ssv2 import read_ssv2
from .ucf101 import read_ucf101

__all__ = ["MANIFEST_SCHEMA", "PUBLISHED_SPLITS", "SPLITS", "ManifestError", "label_names",
           "manifest_notes", "missing_videos", "read_csv", "read_folder_per_class",
           "read_hmdb51", "read_kinetics", "read_manifest", "read_ssv2", "read_ucf101",
           "stratified_split", "validate_manifest", "write_manifest"]
