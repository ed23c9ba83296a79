"""Extract RGB and optical-flow clip features of a manifest's videos into a feature store.

    python jobs/extract.py --manifest data/manifest.parquet --out features/ \
        --extractor i3d --weights rgb_imagenet.pt --flow-weights flow_imagenet.pt
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/extract.py --manifest ... --out ...
    python jobs/extract.py --verify --out features/
    python jobs/extract.py --compact-only --out features/   # merge small part files
    python jobs/extract.py --manifest ... --out ... --dry-run --calibrate 8   # cost and ETA first

Reruns on the same --out extract only what is missing. See README.md for every option.
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_config_arguments, config_from_args, run_job
from reslstm.configs import ExtractConfig
from reslstm.distributed.extract.job import compact_store, run_extraction, verify
from reslstm.distributed.extract.plan import plan_job


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p, ExtractConfig)
    p.add_argument("--verify", action="store_true", help="check the store at --out and exit")
    p.add_argument("--compact-only", action="store_true", help="merge the small part files of "
                   "the store at --out into files of about --part-mib and exit (what each "
                   "job does at its end unless --no-compact)")
    p.add_argument("--dry-run", action="store_true", help="read only the videos' headers (on the "
                   "cluster) and print the work: videos, hours, frames, clips, bytes to write, "
                   "files that cannot be opened; then exit")
    p.add_argument("--calibrate", type=int, metavar="N", help="after the dry run, extract N "
                   "videos into a scratch store and print each stage's rate, the bottleneck "
                   "and the whole job's estimated time on this cluster; then exit")
    p.add_argument("--dry-run-list", metavar="CSV", help="where the dry run lists every file it "
                   "cannot open (default: extract-dry-run-unreadable.csv, when there are any)")
    a = p.parse_args(argv)
    if a.verify:
        return run_job("extract", lambda: 0 if verify(a.out, a.manifest) else 1)
    if a.compact_only:
        return run_job("extract", lambda: compact_store(a.out, a.part_mib) and 0)
    if a.dry_run or a.calibrate is not None:
        return run_job("extract", lambda: plan_job(config_from_args(ExtractConfig, a),
                                                   a.calibrate, a.dry_run_list) and 0)
    return run_job("extract", lambda: run_extraction(config_from_args(ExtractConfig, a)) and 0)


if __name__ == "__main__":
    sys.exit(main())
