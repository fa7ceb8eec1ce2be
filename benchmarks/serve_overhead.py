"""Serve overhead: the same model called directly vs through a Ray Serve handle vs over HTTP.

One run, side by side: p50/p99 latency of sequential single requests and requests/s with C
concurrent callers, for the `tb` deployment. Saves `benchmarks/results/serve_overhead.json` + plot.

    python benchmarks/serve_overhead.py [--n 200] [--concurrency 16]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import free_port, save_figures  # noqa: E402
from serving.config import load_config  # noqa: E402
from serving.inference.deployments import ModelServer  # noqa: E402

TOKEN = "benchmark-token-not-a-secret"



def stats(latencies_s: list[float], wall_s: float, n: int) -> dict:
    ms = np.array(latencies_s) * 1000
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "req_per_s": n / wall_s}


def sequential(call, n: int) -> dict:
    latencies, start = [], time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return stats(latencies, time.perf_counter() - start, n)


def concurrent(call, n: int, workers: int) -> dict:
    def timed(_):
        t = time.perf_counter()
        call()
        return time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        latencies = list(pool.map(timed, range(n)))
    return stats(latencies, time.perf_counter() - start, n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import requests
    from PIL import Image
    from ray import serve

    from serving.app import APP_NAME, build_app

    direct = ModelServer("tb", {})
    direct.reconfigure({})
    size = direct.active.manifest.input_size_px
    item = np.random.default_rng(0).random((1, size, size), dtype=np.float32)
    png = io.BytesIO()
    Image.fromarray((item[0] * 255).astype(np.uint8)).save(png, "PNG")
    png_bytes = png.getvalue()
    rows = {"direct": {"sequential": sequential(lambda: direct.run_batch([item]), args.n)}}
    rows["direct"]["concurrent"] = {"note": "a direct call has no queue: concurrency is the batch in model_core"}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_config(None, state_dir=tmp, http={"port": free_port()},
                               serving={"max_queued_requests": 10_000, "max_ongoing_requests": 256},
                               auth={"tokens": [{"token": TOKEN, "role": "admin", "name": "benchmark"}]})
        # Logical CPUs: one per model replica, as `medgate serve` does.
        ray.init(include_dashboard=False, namespace="medgate-bench", logging_level="WARNING",
                 num_cpus=max(os.cpu_count() or 2, 8))
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": settings.http.port})
            serve.run(build_app(settings, versions={}), name=APP_NAME, route_prefix="/")
            handle = serve.get_deployment_handle("tb", app_name=APP_NAME)
            call_handle = lambda: handle.remote(item).result()  # noqa: E731
            url = f"http://127.0.0.1:{settings.http.port}/v1/infer/tb"
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {TOKEN}"
            call_http = lambda: session.post(url, files={"file": ("x.png", png_bytes)}).raise_for_status()  # noqa: E731
            for name, call in (("serve_handle", call_handle), ("http", call_http)):
                call()
                rows[name] = {"sequential": sequential(call, args.n),
                              "concurrent": concurrent(call, args.n, args.concurrency)}
        finally:
            serve.shutdown()
            ray.shutdown()
    for name, row in rows.items():
        seq = row["sequential"]
        print(f"{name:13s} sequential p50 {seq['p50_ms']:7.2f} ms p99 {seq['p99_ms']:7.2f} ms "
              f"{seq['req_per_s']:7.1f} req/s" + ("" if "p50_ms" not in row["concurrent"] else
              f" | {args.concurrency} concurrent: {row['concurrent']['req_per_s']:7.1f} req/s, "
              f"p99 {row['concurrent']['p99_ms']:.1f} ms"))
    save_figures("serve_overhead", {"model": "tb", "n": args.n, "concurrency": args.concurrency, "paths": rows},
                 lambda ax: (ax.bar(list(rows), [r["sequential"]["p50_ms"] for r in rows.values()]),
                             ax.set_ylabel("sequential p50 (ms)")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
