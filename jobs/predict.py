"""Classify new videos with a trained model, extracting their features exactly as the model's
training features were (extractor, weights, clips, crops, flow, size: recorded with the model).

    python jobs/predict.py a.mp4 b.avi --model runs/late            # in this process, no Ray
    python jobs/predict.py a.mp4 --model runs/late --json --sheet a.png
    python jobs/predict.py --manifest m.parquet --out predictions/ --model runs/late   # on Ray
    python jobs/predict.py --manifest videos/ --out predictions/ --model models:/reslstm@champion

--model: a run directory of jobs/train.py, a checkpoint directory, a model.pt (path or URI), or
models:/NAME@ALIAS (MLflow registry; --mlflow-uri or MLFLOW_TRACKING_URI). A video that cannot
be read is reported with its typed error (VideoDecodeError:truncated, ...) and the job exits 1.
See README.md, "Predicting new videos".
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, add_config_arguments, config_from_args, run_job
from reslstm.configs import PredictConfig
from reslstm.distributed.predict.batch import run_predict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("videos", nargs="*", metavar="VIDEO", help="video files or URIs to classify")
    add_config_arguments(p, PredictConfig)
    a = p.parse_args(argv)
    return run_job("predict", lambda: run_predict(config_from_args(
        PredictConfig, a, videos=tuple(a.videos))) and 0)


if __name__ == "__main__":
    sys.exit(main())
