"""Score prediction files: late fusion of an RGB run and a flow run, or one run's heads.

    python jobs/evaluate.py --rgb runs/rgb --flow runs/flow --fusion product --out reports/
    python jobs/evaluate.py --predictions runs/late --split val --categories hmdb51

--rgb/--flow take a run directory (its predictions/), a predictions folder or a Parquet file;
a late-fusion run can be given as both (its rgb and flow heads are used). Prints top-1, top-5
and mean class accuracy per stream and fused; with --out writes the confusion matrix PNG and a
per-class CSV (and per-category accuracy with --categories).
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, run_job
from reslstm.predictions import PredictionError, evaluate_fusion, evaluate_run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--rgb", help="predictions of the RGB run")
    p.add_argument("--flow", help="predictions of the flow run")
    p.add_argument("--predictions", help="one run's predictions: score each of its heads")
    p.add_argument("--fusion", default="product", choices=["product", "sum", "weighted"],
                   help="late fusion of the softmaxes (weighted: 1.5 flow + 1 rgb)")
    p.add_argument("--rgb-head", default="auto", help="head of the RGB file (auto: 'rgb' if "
                                                      "present, else 'fused')")
    p.add_argument("--flow-head", default="auto", help="head of the flow file, likewise")
    p.add_argument("--split", default="test", choices=["test", "val"], help="split")
    p.add_argument("--out", help="folder for the confusion matrix PNG and per-class CSV")
    p.add_argument("--categories", choices=["ucf101", "hmdb51", "synthetic"],
                   help="also report accuracy per coarse category of this dataset")
    a = p.parse_args(argv)
    if bool(a.predictions) == bool(a.rgb or a.flow) or bool(a.rgb) != bool(a.flow):
        p.error("give either --rgb and --flow, or --predictions")

    def run():
        if a.predictions:
            report = evaluate_run(a.predictions, a.split, out_dir=a.out, categories=a.categories)
        else:
            report = evaluate_fusion(a.rgb, a.flow, a.fusion, a.split, out_dir=a.out,
                                     categories=a.categories, rgb_head=a.rgb_head,
                                     flow_head=a.flow_head)
        print(report.text())

    return run_job("evaluate", run, (PredictionError,))


if __name__ == "__main__":
    sys.exit(main())
