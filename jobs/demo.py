"""The README's main command: the whole pipeline on the built-in synthetic data set.

    python jobs/demo.py                      # everything under demo_output/
    python jobs/demo.py --out /tmp/demo --videos-per-class 16 --epochs 20

Generates the synthetic videos (if absent), extracts RGB and flow features with tiny3d (random
initial weights: a stand-in, not pretrained features), runs a small Ray Tune sweep logged to
MLflow, evaluates the best trial on test with late product fusion, trains the order-blind
mean-pool baseline on the same features, and prints a table (with the mlflow ui command).
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_config_arguments, config_from_args, run_job
from reslstm.configs import DemoConfig
from reslstm.distributed.demo import run_demo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_config_arguments(p, DemoConfig)
    a = p.parse_args(argv)
    return run_job("demo", lambda: run_demo(config_from_args(DemoConfig, a)) and 0)


if __name__ == "__main__":
    sys.exit(main())
