"""The PCA fit's memory and time: ``reslstm.pca.pca_basis`` against an SVD of the whole sample.

The baseline is what the fit did before: the sample cast to float64, centred (a second copy)
and given to one SVD of the (N, d_f) matrix (LAPACK's U and workspace on top). ``pca_basis``
takes the right singular vectors from the R of a tall-skinny QR built a chunk of rows at a
time, so it holds the sample as given plus a chunk. Each method runs in a fresh process on the
same seeded sample (N vectors of d_f float32 with a decaying spectrum, like clip features), and
the script prints each one's seconds and the peak of the driver's heap (RssAnon) above its level
with the sample loaded, their ratios, and how far apart the two bases are (the largest
difference of any coefficient of the top h directions, and of the mean).

    python benchmarks/pca_fit.py                      # N = 50 000 (the fit's sample), d_f = 1024
    python benchmarks/pca_fit.py --vectors 20000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scale import PeakRSS  # noqa: E402  (benchmarks/scale.py)

from reslstm.pca import PCABasis, pca_basis  # noqa: E402


def svd_of_the_whole_sample(features: np.ndarray, input_dim: int) -> PCABasis:
    """The baseline: the fit as one SVD of the centred float64 sample (same sign rule)."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    _, _, comps = np.linalg.svd(x - mean, full_matrices=False)
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    return PCABasis(mean, comps * np.where(signs == 0, 1.0, signs)[:, None], len(x))


METHODS = {"whole-sample SVD": svd_of_the_whole_sample, "pca_basis": pca_basis}


def sample(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """N float32 vectors whose variances decay as 1/k along random directions, plus an offset."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scale = 1.0 / np.sqrt(np.arange(1, dim + 1))
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 4096):  # made in chunks: the sample is the only big array held
        z = rng.normal(size=(min(4096, n - a), dim)) * scale
        out[a:a + len(z)] = z @ basis.T + 0.5
    return out


def one(method: str, n: int, dim: int, out: str) -> None:
    x = sample(n, dim)
    with PeakRSS() as mem:
        start = time.perf_counter()
        basis = METHODS[method](x, dim)
        seconds = time.perf_counter() - start
    np.savez(out, mean=basis.mean, components=basis.components)
    print("RESULT " + json.dumps({"seconds": seconds, "heap": mem.heap_growth, "rss": mem.growth}),
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=50_000, help="N, the sample's vectors")
    p.add_argument("--dim", type=int, default=1024, help="d_f")
    p.add_argument("--top", type=int, default=512, help="directions compared (h)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        return one(a.one, a.vectors, a.dim, a.out)
    print(f"PCA fit of {a.vectors:,} vectors of d_f = {a.dim} (float32 sample: "
          f"{a.vectors * a.dim * 4 / 2**20:,.0f} MiB), each method in a fresh process")
    results, bases = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in METHODS:
            out = str(Path(tmp) / f"{len(results)}.npz")
            proc = subprocess.run([sys.executable, __file__, "--one", method, "--out", out,
                                   "--vectors", str(a.vectors), "--dim", str(a.dim)],
                                  stdout=subprocess.PIPE, text=True)
            if proc.returncode:
                sys.exit(f"{method} failed (exit {proc.returncode})")
            line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
            results[method] = json.loads(line[7:])
            with np.load(out) as z:
                bases[method] = (z["mean"], z["components"])
            r = results[method]
            print(f"  {method:<17} {r['seconds']:7.2f} s   heap +{r['heap'] / 2**20:7.0f} MiB   "
                  f"RSS +{r['rss'] / 2**20:7.0f} MiB", flush=True)
    base, new = (results[m] for m in METHODS)
    print(f"  pca_basis / whole-sample SVD: time {new['seconds'] / base['seconds']:.2f}x, "
          f"heap {new['heap'] / max(base['heap'], 1):.2f}x")
    (m0, c0), (m1, c1) = (bases[m] for m in METHODS)
    h = min(a.top, len(c0))
    print(f"  largest difference: mean {np.abs(m0 - m1).max():.1e}; top {h} directions "
          f"{np.abs(c0[:h] - c1[:h]).max():.1e} (coefficients of unit vectors); all "
          f"{len(c0)} {np.abs(c0 - c1).max():.1e}")


if __name__ == "__main__":
    main()
