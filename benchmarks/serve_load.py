"""The Serve endpoint under load: an open-loop client (requests sent at a fixed arrival rate,
whether or not earlier ones were answered) against 1 and 2 replicas, at rising rates up to
twice each configuration's saturation rate.

Per configuration, the saturation rate is measured first: the throughput of a closed loop
with as many clients as the replicas accept at once (``max_ongoing_requests`` each). Then, for
each multiple of it (``--rates``), ``--requests`` uploads of real videos (``../shared/videos``;
synthetic clips when they are absent) are sent at exactly that rate; latency runs from each
request's scheduled send time to its answer (a late sender cannot hide queueing). Printed per
rate: the answered throughput, p50/p95/p99 latency of the 200s, and counts of 200, 503
(the bounded queue turning requests away) and anything else (errors, timeouts: "other"
counts every request without an answer). Last, Serve's overhead at one client: p50 of
requests against the direct in-process call, alternating, as the median of ``--overhead-runs``
runs.

The model is an untrained late-product tiny3d Res-LSTM (DIS flow): its cost is that of a real
one of this size, its answers mean nothing. Targets (issue "Serving you can expose"): no answer
other than 200 and 503 at any rate; p99 at half the saturation rate at most 3x its p50;
2 replicas at least 1.4x the saturation throughput of one; the one-client overhead at most 1.3x.

    python benchmarks/serve_load.py [--replicas 1,2] [--rates 0.25,0.5,1,1.5,2] [--requests 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the test model: an untrained payload costs the same
VIDEOS = REPO.parent / "shared" / "videos"
REAL = ("short_32f_340x256.mp4",)


def inputs(root: Path) -> tuple[list[bytes], Path, str]:
    """(video bodies, model file, what they are)."""
    import torch
    from predict_fixture import payload

    from reslstm.datasets.synthetic import synthesize_video, write_mp4

    model = root / "model.pt"
    torch.save(payload("late-product"), model)
    if all((VIDEOS / name).is_file() for name in REAL):
        return [(VIDEOS / n).read_bytes() for n in REAL], model, f"real: {', '.join(REAL)}"
    clip = root / "clip.mp4"
    write_mp4(synthesize_video("grow_then_shrink", 0, seed=1, height=256, width=340)[:32], clip)
    return [clip.read_bytes()], model, f"synthetic 32 frames 340x256 ({VIDEOS} not found)"


class Client:
    """Requests from a pool of threads, one HTTP session each."""

    def __init__(self, url: str, threads: int = 96):
        self.url, self.local = url + "/predict", threading.local()
        self.pool = ThreadPoolExecutor(threads)

    def post(self, body: bytes) -> tuple[int | str, float]:
        import requests

        session = getattr(self.local, "session", None) or requests.Session()
        self.local.session = session
        try:
            response = session.post(self.url, data=body, timeout=300)
            return response.status_code, time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - counted, never lost
            return type(exc).__name__, time.perf_counter()

    def closed_loop(self, bodies: list[bytes], clients: int, total: int) -> float:
        """Throughput (answers per second) of ``clients`` sending one request after another."""
        def run(share: int) -> int:
            return sum(self.post(bodies[i % len(bodies)])[0] == 200 for i in range(share))

        start = time.perf_counter()
        done = sum(self.pool.map(run, [total // clients] * clients))
        return done / (time.perf_counter() - start)

    def open_loop(self, bodies: list[bytes], rate: float, count: int) -> dict:
        """``count`` requests at ``rate`` per second, each at its scheduled time."""
        t0 = time.perf_counter() + 0.2
        futures, scheduled = [], []
        for i in range(count):
            at = t0 + i / rate
            time.sleep(max(0.0, at - time.perf_counter()))
            scheduled.append(at)
            futures.append(self.pool.submit(self.post, bodies[i % len(bodies)]))
        answers = [f.result() for f in futures]
        ok = [end - at for (code, end), at in zip(answers, scheduled) if code == 200]
        codes = [code for code, _ in answers]
        last = max(end for _, end in answers)
        return {"throughput": len(ok) / (last - t0), "latency": ok,
                "200": codes.count(200), "503": codes.count(503),
                "other": [c for c in codes if c not in (200, 503)]}


def overhead(url: str, model: Path, body: bytes, runs: int, n: int, threads: int) -> list[float]:
    """Per run, the p50 of one-client requests over the p50 of direct calls alternating with
    them (benchmarks/serve.py's paired measurement)."""
    import requests

    from reslstm.checkpoint import load_checkpoint
    from reslstm.configs import PredictConfig
    from reslstm.extraction.stages import limit_threads
    from reslstm.inference.predictor import Predictor

    net, doc = load_checkpoint(model)
    predictor = Predictor(net, doc, PredictConfig(model=str(model)))
    limit_threads(threads)
    with tempfile.NamedTemporaryFile(suffix=".mp4") as f:
        f.write(body)
        f.flush()
        for _ in range(2):
            predictor.predict(f.name)
        session, ratios = requests.Session(), []
        for _ in range(runs):
            direct, served = [], []
            for i in range(2 * n):
                start = time.perf_counter()
                if i % 4 in (0, 3):
                    predictor.predict(f.name)
                    direct.append(time.perf_counter() - start)
                else:
                    session.post(url + "/predict", data=body, timeout=300).raise_for_status()
                    served.append(time.perf_counter() - start)
            ratios.append(statistics.median(served) / statistics.median(direct))
    return ratios


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2", help="comma list of replica counts")
    parser.add_argument("--rates", default="0.25,0.5,1,1.5,2",
                        help="arrival rates, as multiples of the saturation rate")
    parser.add_argument("--requests", type=int, default=40, help="requests per rate")
    parser.add_argument("--max-queued", type=int, default=8, help="--max-queued-requests")
    parser.add_argument("--overhead-runs", type=int, default=5)
    parser.add_argument("--nice", type=int, default=15, help="niceness of this process (Ray's "
                        "workers run at 15)")
    args = parser.parse_args(argv)
    replicas = [int(x) for x in args.replicas.split(",")]
    rates = [float(x) for x in args.rates.split(",")]

    import ray
    from ray import serve

    from reslstm.configs import PredictConfig, ServeConfig
    from reslstm.distributed.runtime import free_port, init_ray
    from reslstm.distributed.serve.app import start

    os.nice(max(0, args.nice - os.nice(0)))
    load_start = os.getloadavg()[0]
    results, saturation, ratios = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        bodies, model, what = inputs(Path(tmp))
        print(f"videos: {what}; model: untrained late-product tiny3d (DIS flow); "
              f"{os.cpu_count()} CPUs; one CPU per replica")
        init_ray(num_cpus=os.cpu_count())
        port = free_port()  # one HTTP proxy for every configuration
        try:
            for n in replicas:
                cfg = ServeConfig(predict=PredictConfig(model=str(model)), port=port,
                                  replicas=n, replica_cpus=1.0, max_queued_requests=args.max_queued,
                                  request_timeout=120)
                url = start(cfg, name=f"load{n}", quiet=True)
                client = Client(url)
                client.closed_loop(bodies, n, 2 * n)  # warm every replica
                concurrent = n * cfg.max_ongoing_requests
                saturation[n] = client.closed_loop(bodies, concurrent, 6 * concurrent)
                print(f"{n} replica(s): saturation {saturation[n]:.2f} req/s "
                      f"(closed loop, {concurrent} clients)", flush=True)
                for r in rates:
                    out = client.open_loop(bodies, r * saturation[n], args.requests)
                    results.append((n, r, r * saturation[n], out))
                    print(f"  {r:g}x: {out['200']} x 200, {out['503']} x 503, "
                          f"{len(out['other'])} other", flush=True)
                if n == 1:
                    ratios = overhead(url, model, bodies[0], args.overhead_runs, 10, 1)
                serve.delete(f"load{n}")
            serve.shutdown()
        finally:
            ray.shutdown()

    print(f"\n{'replicas':>8} {'rate':>5} {'offered/s':>9} {'answered/s':>10} {'p50 ms':>8} "
          f"{'p95 ms':>8} {'p99 ms':>8} {'200':>5} {'503':>5} {'other':>5}")
    for n, r, offered, out in results:
        ms = np.asarray(out["latency"]) * 1000
        p50, p95, p99 = (np.percentile(ms, q) for q in (50, 95, 99)) if len(ms) else (np.nan,) * 3
        print(f"{n:>8} {r:>4g}x {offered:>9.2f} {out['throughput']:>10.2f} {p50:>8.0f} "
              f"{p95:>8.0f} {p99:>8.0f} {out['200']:>5} {out['503']:>5} {len(out['other']):>5}")
    other = [c for *_, out in results for c in out["other"]]
    print(f"\nanswers other than 200/503: {len(other)} {sorted(set(map(str, other)))} (target 0)")
    for n, r, _, out in results:
        if r == 0.5 and out["latency"]:
            ms = np.asarray(out["latency"])
            print(f"{n} replica(s) at half saturation: p99/p50 = "
                  f"{np.percentile(ms, 99) / np.percentile(ms, 50):.2f} (target <= 3)")
    best = {n: max(out["throughput"] for m, _, _, out in results if m == n) for n in replicas}
    if len(best) > 1:
        print("saturation throughput: " + ", ".join(f"{n} replica(s) {v:.2f} req/s"
                                                     for n, v in best.items())
              + f"; {best[replicas[-1]] / best[replicas[0]]:.2f}x (target >= 1.4x)")
    if ratios:
        print(f"one client, Serve p50 / direct p50 per run: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; median {statistics.median(ratios):.2f} "
              f"(target <= 1.3)")
    print(f"load average (1 min) at the start and end: {load_start:.1f}, {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
