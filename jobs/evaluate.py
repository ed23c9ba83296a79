"""Score prediction files: late fusion of an RGB run and a flow run, or one run's heads.

    python jobs/evaluate.py --rgb runs/rgb --flow runs/flow --fusion product --out reports/
    python jobs/evaluate.py --predictions runs/late --split val --categories hmdb51
    python jobs/evaluate.py --predictions runs/late --external idt_scores.csv --out reports/

--rgb/--flow take a run directory (its predictions/), a predictions folder or a Parquet file;
a late-fusion run can be given as both (its rgb and flow heads are used). Prints top-1, top-5
and mean class accuracy per stream and fused; with --out writes the confusion matrix PNG and a
per-class CSV (and per-category accuracy with --categories). --external fuses a run's head with
another model's per-video scores (a Parquet or CSV of video_id and one column per class, matched
by name) and reports ours, theirs and the fusion on the videos of both, the fused confusion
matrix, its change from ours and the per-class accuracy change (the paper's Fig. 6).
"""

import argparse
import sys

from reslstm.cli import HelpFormatter, run_job
from reslstm.distributed.evaluate import DEFAULT_SCORES, LATE_OPS, SCORE_KINDS, evaluate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--rgb", help="predictions of the RGB run")
    p.add_argument("--flow", help="predictions of the flow run")
    p.add_argument("--predictions", help="one run's predictions: score each of its heads")
    p.add_argument("--fusion", default="product", choices=LATE_OPS,
                   help="late fusion of the softmaxes (weighted: 1.5 flow + 1 rgb)")
    p.add_argument("--rgb-head", default="auto", help="head of the RGB file (auto: 'rgb' if "
                                                      "present, else 'fused')")
    p.add_argument("--flow-head", default="auto", help="head of the flow file, likewise")
    p.add_argument("--split", default="test", choices=["test", "val"], help="split")
    p.add_argument("--out", help="folder for the confusion matrix PNG and per-class CSV")
    p.add_argument("--categories", choices=["ucf101", "hmdb51", "synthetic"],
                   help="also report accuracy per coarse category of this dataset")
    p.add_argument("--external", metavar="FILE", help="fuse --predictions with another model's "
                   "scores: Parquet or CSV of video_id and one column per class name")
    p.add_argument("--external-scores", default=DEFAULT_SCORES, choices=SCORE_KINDS,
                   help="what FILE holds: probabilities (>= 0; rows renormalised to sum to 1) "
                        "or logits / SVM margins (softmaxed)")
    p.add_argument("--external-fusion", default="product", choices=LATE_OPS,
                   help="how ours and the external scores are fused")
    p.add_argument("--external-weight", type=float, default=1.0, metavar="W",
                   help="weight of the external side in --external-fusion weighted (ours: 1)")
    p.add_argument("--head", default="fused", help="head of --predictions fused with --external")
    a = p.parse_args(argv)
    if bool(a.predictions) == bool(a.rgb or a.flow) or bool(a.rgb) != bool(a.flow):
        p.error("give either --rgb and --flow, or --predictions")
    if a.external and not a.predictions:
        p.error("--external fuses with one run: give --predictions RUN, not --rgb/--flow")
    if not a.external and (a.head != "fused" or a.external_weight != 1.0):
        p.error("--head and --external-weight go with --external")
    if a.external_weight != 1.0 and a.external_fusion != "weighted":
        p.error("--external-weight needs --external-fusion weighted")
    return run_job("evaluate", lambda: print(evaluate(**vars(a)).text()))


if __name__ == "__main__":
    sys.exit(main())
