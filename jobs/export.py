"""Export a feature store for other training code: one .npy per video and stream, or HDF5.

    python jobs/export.py --store features/ucf101_s1 --format npy --out exported/
    python jobs/export.py --store s3://bucket/features/k400 --format hdf5 --out k400.h5

npy: <video_id>_<stream>.npy, the (clips x d) float32 features as stored, and index.csv
(video_id, stream, label, label_name, split, num_clips, num_frames, fps, file). hdf5 (needs
pip install -e '.[hdf5]'): /videos/<video_id>/<stream> datasets with the labels as attributes.
Memory holds one video at a time. See README.md, "Exporting features".
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, run_job
from reslstm.distributed.export_features import FORMATS, export_store


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--store", required=True, help="the feature store (jobs/extract.py --out; "
                                                  "a folder or URI)")
    p.add_argument("--format", required=True, choices=FORMATS, help="npy or hdf5")
    p.add_argument("--out", required=True, help="npy: a folder; hdf5: the file to write")
    p.add_argument("--streams", help="comma list (default: every stream of the store)")
    a = p.parse_args(argv)
    streams = a.streams.split(",") if a.streams else None

    def run() -> None:
        export_store(a.store, a.format, a.out, streams)

    return run_job("export", run)


if __name__ == "__main__":
    sys.exit(main())
