"""The paper's experiments, one command each: a preset sweep over seeds, and its report.

    python jobs/paper.py --preset hidden --features features/hmdb51 --seeds 3
    python jobs/paper.py --preset final --features features/hmdb51 --categories hmdb51
    python jobs/paper.py --preset T --features demo_output/features --quick   # minutes, 2 cores

Presets: hidden (Fig. 3a), depth (Fig. 3b-c), T (Table 1), fusion (Table 2), final (Tables
3-4, Figs. 4-5). Each is a Ray Tune sweep under one MLflow parent run; the table (ours, mean +-
std over seeds, beside the paper's numbers), the claims checked and the figure go to
OUT/<preset>/report/ and to that run.
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_address, add_config_arguments, config_from_args, run_job
from reslstm.configs import PaperConfig
from reslstm.distributed.tune.paper_runs import run_preset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p, PaperConfig)
    add_address(p)
    a = p.parse_args(argv)
    return run_job("paper", lambda: run_preset(config_from_args(PaperConfig, a), a.address) and 0)


if __name__ == "__main__":
    sys.exit(main())
