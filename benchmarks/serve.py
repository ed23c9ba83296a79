"""Ray Serve's overhead: requests/s and p50/p95 latency of the endpoint at 1, 4 and 16
concurrent clients, against calling the in-process predictor directly, in the same run.

A short synthetic clip (32 frames at 96x128, H.264) is classified by a late-product tiny3d
model (both streams: decode, DIS flow, tiny3d features, Res-LSTM). The direct baseline is
``reslstm.inference.predictor.Predictor.predict`` in this process on as many threads as a replica has
CPUs. Serve requests upload the clip as the raw body (the whole HTTP path: upload, temporary
file, proxy, replica), from ``clients`` threads that each send one request after the other,
for each number of replicas (one CPU each by default). At one client the direct calls and the
requests alternate, so that drifts in the machine's load hit both alike, and Serve's p50 over
the direct p50 of the same period is its overhead; the "direct" row pools those calls. Ray
runs its workers (replicas, Serve's proxy) at niceness 15; this process lowers itself to the
same (``--nice``), or on a busy machine the direct calls would win CPU time from the replicas.

    python benchmarks/serve.py [--replicas 1,2] [--clients 1,4,16] [--requests 48]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test models: an untrained payload costs the same


def make_inputs(root: Path, frames: int) -> tuple[Path, Path]:
    import torch
    from predict_fixture import payload

    from reslstm.datasets.synthetic import synthesize_video, write_mp4

    clip = root / "clip.mp4"
    write_mp4(synthesize_video("grow_then_shrink", 0, seed=1, height=96, width=128)[:frames], clip)
    model = root / "model.pt"
    torch.save(payload("late-product"), model)
    return clip, model


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def make_predictor(model: Path, clip: Path, threads: int):
    from reslstm.checkpoint import load_checkpoint
    from reslstm.configs import PredictConfig
    from reslstm.extraction.stages import limit_threads
    from reslstm.inference.predictor import Predictor

    net, doc = load_checkpoint(model)
    predictor = Predictor(net, doc, PredictConfig(model=str(model)))
    limit_threads(threads)
    for _ in range(3):  # warm up
        predictor.predict(clip)
    return predictor


def paired(url: str, predictor, clip: Path, body: bytes, n: int):
    """Latencies of ``n`` direct calls and ``n`` one-client requests, alternating (direct,
    Serve, Serve, direct, ...), so that the machine's load drifts hit both alike; of a
    GET /health after each request (Serve's HTTP round trip alone); and the replica's own
    time per classification (its Server-Timing header)."""
    import requests

    session, direct, served, health, inside = requests.Session(), [], [], [], []
    for i in range(2 * n):
        start = time.perf_counter()
        if (i % 4) in (0, 3):
            predictor.predict(clip)
            direct.append(time.perf_counter() - start)
        else:
            response = session.post(url + "/predict", data=body, timeout=300)
            served.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
            inside.append(float(response.headers["Server-Timing"].split("dur=")[1]) / 1000)
            start = time.perf_counter()
            session.get(url + "/health", timeout=60)
            health.append(time.perf_counter() - start)
    return direct, served, health, inside


def load(url: str, body: bytes, clients: int, total: int) -> tuple[float, list[float]]:
    """(seconds, per-request latencies) of ``total`` requests from ``clients`` threads."""
    import requests

    def client(count: int) -> list[float]:
        session, times = requests.Session(), []
        for _ in range(count):
            start = time.perf_counter()
            response = session.post(url + "/predict", data=body, timeout=300)
            times.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:200]}")
        return times

    shares = [total // clients + (i < total % clients) for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        times = [t for part in pool.map(client, shares) for t in part]
    return time.perf_counter() - start, times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2", help="comma list of replica counts")
    parser.add_argument("--clients", default="1,4,16", help="comma list of concurrent clients")
    parser.add_argument("--requests", type=int, default=48, help="requests per run (at least "
                        "3 per client)")
    parser.add_argument("--replica-cpus", type=float, default=1.0)
    parser.add_argument("--frames", type=int, default=32, help="frames of the clip")
    parser.add_argument("--nice", type=int, default=15, help="niceness of this process (Ray's "
                        "workers run at 15)")
    args = parser.parse_args(argv)
    replicas = [int(x) for x in args.replicas.split(",")]
    clients = [int(x) for x in args.clients.split(",")]
    if 1 not in clients:
        parser.error("--clients must include 1: Serve's overhead is measured there")

    import ray
    from ray import serve

    from reslstm.configs import PredictConfig, ServeConfig
    from reslstm.distributed.runtime import free_port, init_ray
    from reslstm.distributed.serve.app import start

    threads = max(1, int(round(args.replica_cpus)))
    load_start = os.getloadavg()[0]
    os.nice(max(0, args.nice - os.nice(0)))
    with tempfile.TemporaryDirectory() as tmp:
        clip, model = make_inputs(Path(tmp), args.frames)
        body = clip.read_bytes()
        predictor = make_predictor(model, clip, threads)
        print(f"clip: {args.frames} frames 96x128 ({len(body) / 1024:.0f} KiB), tiny3d "
              f"late-product (DIS flow); direct: {threads} thread(s); {os.cpu_count()} CPUs")
        init_ray(num_cpus=os.cpu_count())
        rows, base, trips = [], [], []
        try:
            for n in replicas:
                cfg = ServeConfig(predict=PredictConfig(model=str(model)), port=free_port(),
                                  replicas=n, replica_cpus=args.replica_cpus,
                                  max_ongoing_requests=max(clients))
                url = start(cfg, quiet=True)
                load(url, body, n, 2 * n)  # warm every replica
                for c in clients:
                    if c == 1:
                        direct, times, health, inside = paired(url, predictor, clip, body,
                                                               args.requests)
                        base += direct
                        rows.append((n, c, len(times) / sum(times), *percentiles(times),
                                     percentiles(direct)[0]))
                        trips.append((n, percentiles(health)[0], percentiles(inside)[0]))
                        continue
                    wall, times = load(url, body, c, max(args.requests, 3 * c))
                    rows.append((n, c, len(times) / wall, *percentiles(times), None))
                serve.shutdown()
        finally:
            ray.shutdown()
    d50, d95 = percentiles(base)
    print(f"{'':<28} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p50 / direct':>13}")
    print(f"{'direct (in-process)':<28} {1 / statistics.mean(base):>7.2f} "
          f"{d50:>8.1f} {d95:>8.1f} {1.0:>13.2f}")
    for n, c, rps, p50, p95, paired50 in rows:
        ratio = p50 / (paired50 or d50)
        print(f"{f'serve {n} replica(s), {c:>2} clients':<28} {rps:>7.2f} {p50:>8.1f} "
              f"{p95:>8.1f} {ratio:>13.2f}")
    for (n, c, _, p50, _, paired50), (_, trip, inner) in zip([r for r in rows if r[1] == 1],
                                                             trips):
        print(f"Serve's overhead at one client, {n} replica(s): p50 {p50:.1f} ms against "
              f"{paired50:.1f} ms direct, alternating: {p50 / paired50:.2f}x (target 1.3x); "
              f"inside the replica p50 {inner:.1f} ms; GET /health p50 {trip:.1f} ms")
    print(f"load average (1 min) at the start and end: {load_start:.1f}, {os.getloadavg()[0]:.1f}")
    top = {n: max(r[2] for r in rows if r[0] == n) for n in replicas}
    if len(top) > 1:
        print("throughput at best concurrency: " + ", ".join(
            f"{n} replica(s) {v:.2f} req/s" for n, v in top.items())
              + f" ({top[replicas[-1]] / top[replicas[0]]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
