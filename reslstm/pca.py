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


CHUNK_BYTES = 64 * 2**20  # float64 rows centred at a time


def pca_basis(features: np.ndarray, input_dim: int) -> PCABasis:
    """PCA of training features (N, d_f): the mean and all directions of the SVD of the centred
    features, each signed so that its largest-magnitude coefficient is positive (reproducible).
    The top h rows are what a PCA projection to h dims uses, for every h.

    The right singular vectors of the centred features are those of R in their QR
    factorisation, which is built ``CHUNK_BYTES`` of rows at a time (R of R stacked on the next
    rows: a tall-skinny QR). So the fit holds the features as given plus a chunk and a
    d_f x d_f matrix, in float64, instead of several float64 copies of the whole sample (2.4 GiB
    for 50 000 vectors of d_f = 1024), with the accuracy of an SVD of the features themselves
    (not of their covariance, whose condition number is the square)."""
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(
            f"fit_pca needs an (N, {input_dim}) array of clip features, got shape {x.shape}"
        )
    if not len(x):
        raise ValueError("fit_pca needs at least one feature vector")
    rows = max(input_dim, CHUNK_BYTES // (8 * input_dim))
    for a in range(0, len(x), rows):
        if not np.isfinite(x[a:a + rows]).all():
            raise ValueError("fit_pca got non-finite feature values (NaN or inf)")
    mean = np.mean(x, axis=0, dtype=np.float64)
    r = np.zeros((0, input_dim))
    for a in range(0, len(x), rows):
        centred = x[a:a + rows] - mean  # float64 (the mean is), whatever the features dtype
        r = np.linalg.qr(np.vstack([r, centred]), mode="r")
    _, _, comps = np.linalg.svd(r, full_matrices=False)  # (min(N, d_f), d_f)
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    return PCABasis(mean, comps, len(x))
