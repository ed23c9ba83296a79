"""PCA of clip features, in NumPy: the basis a PCA input projection takes its top rows from.

``pca_basis`` is fitted once on a sample of training clips (``distributed.train.data`` draws it,
once per stream and sweep) and ``model.InputProjection.set_pca`` keeps its top h rows, so every
hidden size of a sweep projects with the same basis as if fitted on its own. No torch here:
the Ray Data tasks that draw the sample import this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PCABasis:
    """Mean and every principal direction (rows, sign-fixed) of some training features."""

    mean: np.ndarray        # (d_f,) float64
    components: np.ndarray  # (min(N, d_f), d_f) float64
    samples: int            # N


def pca_basis(features: np.ndarray, input_dim: int) -> PCABasis:
    """PCA of training features (N, d_f): the mean and all directions of the SVD of the centred
    features, each signed so that its largest-magnitude coefficient is positive (reproducible).
    The top h rows are what a PCA projection to h dims uses, for every h."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(
            f"fit_pca needs an (N, {input_dim}) array of clip features, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("fit_pca got non-finite feature values (NaN or inf)")
    mean = x.mean(axis=0)
    _, _, comps = np.linalg.svd(x - mean, full_matrices=False)  # (min(N, d_f), d_f)
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return PCABasis(mean, comps, len(x))
