"""Write the manifest of a data set from its annotations and videos, and summarise it.

    python jobs/manifest.py ucf101 --annotations ucfTrainTestlist --videos UCF-101 --split 1 --out ucf101_s1.parquet
    python jobs/manifest.py hmdb51 --annotations testTrainMulti_7030_splits --videos hmdb51 --out hmdb51_s1.parquet
    python jobs/manifest.py folder --videos my_videos --out mine.parquet  (--annotations: a split file)
    python jobs/manifest.py csv --annotations videos.csv --videos my_videos --out mine.parquet
    python jobs/manifest.py kinetics --annotations kinetics400/annotations --videos kinetics400 --out k400.parquet
    python jobs/manifest.py ssv2 --annotations ssv2/train.json --annotations ssv2/validation.json \\
        --labels ssv2/labels.json --videos ssv2/videos --out ssv2.parquet

Prints the classes, the videos per split, the videos listed but not found and the readers'
notes. Kinetics and SSv2: the published validation set becomes "test" (what papers report),
--val-fraction of each class's training videos becomes "val" (seeded); videos not downloaded
are left out and listed in <out stem>.missing.csv (or --missing-list), not an error.
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, run_job
from reslstm.distributed.make_manifest import READERS, make_manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("dataset", choices=list(READERS), help="which reader")
    p.add_argument("--annotations", action="append", default=[], metavar="FILE_OR_DIR",
                   help="annotation file or folder (repeat for several): ucf101/hmdb51 the "
                        "split folder, csv the CSV, folder an optional split file, kinetics "
                        "the CSVs, ssv2 the JSON files")
    p.add_argument("--videos", required=True, help="folder of the videos")
    p.add_argument("--out", required=True, help="manifest to write (.parquet, local or URI)")
    p.add_argument("--split", type=int, help="official split 1..3 (ucf101, hmdb51; default 1)")
    p.add_argument("--labels", help="ssv2 labels.json (default: the one beside the annotations)")
    p.add_argument("--val-fraction", type=float, help="share of each class's training videos "
                   "held out as val (default: the reader's, 0.1)")
    p.add_argument("--test-fraction", type=float, help="folder/csv without splits: share of "
                   "each class as test (default 0.2)")
    p.add_argument("--seed", type=int, help="seed of the held-out splits (default 0)")
    p.add_argument("--missing-list", help="CSV of the videos not found (default: "
                                          "<out stem>.missing.csv beside the manifest)")
    a = p.parse_args(argv)
    return run_job("manifest", lambda: print(make_manifest(**vars(a)).text()))


if __name__ == "__main__":
    sys.exit(main())
