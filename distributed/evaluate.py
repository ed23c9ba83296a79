"""Scoring prediction files, as ``jobs/evaluate.py`` runs it: late fusion of an RGB run and a
flow run, every head of one run, or one run's head fused with another model's scores.

``evaluate(...)`` takes the job's options by name (``evaluate(**vars(args))``) and returns the
report (``reslstm.reports.predictions.Report`` or ``reslstm.reports.external_fusion.
ExternalReport``); its ``text()`` is what the job prints. The choices the job offers
(``LATE_OPS``, ``SCORE_KINDS``, ``DEFAULT_SCORES``) come from here too, so that the job imports
nothing but ``reslstm.distributed``, ``reslstm.cli`` and ``reslstm.configs``. No Ray: the
files are read in this process (local paths or filesystem URIs).
"""

from __future__ import annotations

from reslstm.fusion import FUSED, LATE_OPS
from reslstm.reports.external_fusion import DEFAULT_SCORES, SCORE_KINDS, evaluate_external
from reslstm.reports.predictions import evaluate_fusion, evaluate_run

__all__ = ["DEFAULT_SCORES", "LATE_OPS", "SCORE_KINDS", "evaluate"]


def evaluate(rgb=None, flow=None, predictions=None, fusion: str = "product",
             rgb_head: str = "auto", flow_head: str = "auto", split: str = "test", out=None,
             categories: str | None = None, external=None, external_scores: str = DEFAULT_SCORES,
             external_fusion: str = "product", external_weight: float = 1.0, head: str = FUSED):
    """The report of ``external`` fused with ``predictions`` (its ``head``), else of every
    head of ``predictions``, else of ``rgb`` and ``flow`` fused by ``fusion``; ``out``: the
    folder for the confusion matrix PNG and the CSVs (see ``jobs/evaluate.py``)."""
    if external:
        return evaluate_external(predictions, external, external_fusion, split, head=head,
                                 scores=external_scores, weight=external_weight, out_dir=out,
                                 categories=categories)
    if predictions:
        return evaluate_run(predictions, split, out_dir=out, categories=categories)
    return evaluate_fusion(rgb, flow, fusion, split, out_dir=out, categories=categories,
                           rgb_head=rgb_head, flow_head=flow_head)
