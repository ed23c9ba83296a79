"""Extract RGB and optical-flow clip features of a manifest's videos into a feature store.

    python jobs/extract.py --manifest data/manifest.parquet --out features/ \
        --extractor i3d --weights rgb_imagenet.pt --flow-weights flow_imagenet.pt
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/extract.py --manifest ... --out ...
    python jobs/extract.py --verify --out features/

Reruns on the same --out extract only what is missing. See README.md for every option.
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_config_arguments, config_from_args, run_job
from reslstm.configs import ExtractConfig
from reslstm.distributed.extract.job import run_extraction, verify


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p, ExtractConfig)
    p.add_argument("--verify", action="store_true", help="check the store at --out and exit")
    a = p.parse_args(argv)
    if a.verify:
        return run_job("extract", lambda: 0 if verify(a.out, a.manifest) else 1)
    return run_job("extract", lambda: run_extraction(config_from_args(ExtractConfig, a)) and 0)


if __name__ == "__main__":
    sys.exit(main())
