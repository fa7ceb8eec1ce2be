"""Serve overhead: the same model called directly, through a Ray Serve handle, over medgate's HTTP API,
and over the HTTP of the servers a user would pick instead (LitServe, BentoML).

One run, side by side, for the `tb` model: p50/p99 latency of sequential single requests and
requests/s with C concurrent callers; the direct engine's best items/s (one `run_batch` of 1, 8 or
16 items); and the issue-21 targets computed from these figures. Every HTTP server gets the same
client (a PNG upload, a bearer token, one connection per caller) and serves the same ONNX file
with the same preprocessing; each peer batches by its own dynamic batching and runs in its own
virtual environment (`bash benchmarks/peers/setup.sh`), one server at a time on the machine.
Saves `benchmarks/results/serve_overhead.json` + plot.

medgate is measured with each of its `http.proxy` modes, each in a process of its own: `direct`
(the default on one machine: rows `serve_handle`, `http`), Ray Serve's proxy (`..._ray_proxy`) and
Ray Serve's HAProxy mode (`..._haproxy`).

    python benchmarks/serve_overhead.py [--n 200] [--concurrency 16] [--proxy direct,ray,haproxy]
                                        [--peers litserve,bentoml]
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.peers import ROUTE  # noqa: E402
from benchmarks.peers.launch import PEERS, peer_names, serving  # noqa: E402
from benchmarks.report import RESULTS, free_port, save_figures  # noqa: E402
from serving.config import load_config  # noqa: E402
from serving.inference.deployments import ModelServer  # noqa: E402

TOKEN = "benchmark-token-not-a-secret"
#: Batch sizes of the direct engine's items/s (medgate's `serving.max_batch_size` is 16).
DIRECT_BATCHES = (1, 8, 16)
#: Issue 21's targets on this benchmark (2-core CPU machine).
HANDLE_P50_MAX_MS = 5.0
HTTP_P50_MAX_MS = 10.0
#: HTTP with 16 concurrent callers, as a share of the direct engine's best items/s in the same run.
HTTP_SHARE_OF_DIRECT = 0.25
#: Two servers' answers on the same upload differ by less than this when model and preprocessing agree.
PROBABILITY_TOLERANCE = 1e-4


def stats(latencies_s: list[float], wall_s: float, n: int) -> dict:
    ms = np.array(latencies_s) * 1000
    return {"p50_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "req_per_s": n / wall_s}


def sequential(call: Callable[[], Any], n: int) -> dict:
    latencies, start = [], time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - t)
    return stats(latencies, time.perf_counter() - start, n)


def concurrent(call: Callable[[], Any], n: int, workers: int) -> dict:
    def timed(_):
        t = time.perf_counter()
        call()
        return time.perf_counter() - t

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        latencies = list(pool.map(timed, range(n)))
    return stats(latencies, time.perf_counter() - start, n)


def upload_client(url: str, png: bytes, token: str = TOKEN) -> Callable[[], dict]:
    """The one client of every HTTP server: POST ``png`` as the multipart field ``file`` with a bearer
    token (servers without authentication ignore it), one connection per calling thread; returns the
    JSON reply, raising on any status other than 2xx."""
    import requests

    local = threading.local()

    def call() -> dict:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
            session.headers["Authorization"] = f"Bearer {token}"
        reply = session.post(url, files={"file": ("x.png", png, "image/png")}, timeout=120)
        reply.raise_for_status()
        return reply.json()

    return call


def probability_in(reply: Any) -> float | None:
    """The first ``probability`` in a JSON reply (medgate: in its findings; LitServe: at the top;
    BentoML: in the one-element list of a batchable API)."""
    if isinstance(reply, dict):
        if isinstance(reply.get("probability"), (int, float)):
            return float(reply["probability"])
        reply = list(reply.values())
    if isinstance(reply, list):
        for value in reply:
            found = probability_in(value)
            if found is not None:
                return found
    return None


def measure_http(call: Callable[[], dict], n: int, concurrency: int) -> dict:
    """Sequential and concurrent figures of one server, after a first call whose answer is kept."""
    first = call()
    return {"probability": probability_in(first), "sequential": sequential(call, n),
            "concurrent": concurrent(call, n, concurrency)}


def direct_batches(server: ModelServer, item: np.ndarray, n: int) -> dict:
    """Items/s of ``run_batch`` at each of :data:`DIRECT_BATCHES` (median of ``n`` calls) and the best."""
    by_batch = {}
    for batch in DIRECT_BATCHES:
        items = [item] * batch
        server.run_batch(items)
        p50_ms = sequential(lambda: server.run_batch(items), n)["p50_ms"]
        by_batch[str(batch)] = batch * 1000 / p50_ms
    best = max(by_batch, key=by_batch.get)
    return {"items_per_s_by_batch": by_batch, "best_batch": int(best), "best_items_per_s": by_batch[best]}


#: medgate's ``http.proxy`` modes (serving.http.proxy) and the names of their rows; the default
#: mode on one machine (``direct``) has the plain names.
PROXY_ROWS = {"direct": ("serve_handle", "http"), "ray": ("serve_handle_ray_proxy", "http_ray_proxy"),
              "haproxy": ("serve_handle_haproxy", "http_haproxy")}


def measure_medgate(item: np.ndarray, png: bytes, n: int, concurrency: int, proxy: str = "ray") -> dict:
    """The Ray Serve handle and medgate's HTTP ``/v1/infer/tb`` with ``http.proxy`` = ``proxy``, in a
    child process of its own (Ray Serve reads the mode's switches from the environment when it is
    imported and when Ray starts its workers); one Ray instance, stopped afterwards."""
    import multiprocessing

    from serving.http.proxy import proxy_environment

    port = free_port()  # the direct mode's switches name it
    env = proxy_environment(load_config(None, http={"proxy": proxy, "port": port}).http)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # a spawned child starts with this environment
    try:
        context = multiprocessing.get_context("spawn")
        with context.Pool(1) as pool:
            rows = pool.apply(_measure_medgate_here, (item, png, n, concurrency, proxy, port))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    handle_row, http_row = PROXY_ROWS[proxy]
    return {handle_row: rows["serve_handle"], http_row: rows["http"]}


def _measure_medgate_here(item: np.ndarray, png: bytes, n: int, concurrency: int, proxy: str, port: int) -> dict:
    import ray
    from ray import serve

    from serving.app import APP_NAME, build_app
    from serving.http.proxy import start_options

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_config(None, state_dir=tmp, http={"port": port, "proxy": proxy},
                               serving={"max_queued_requests": 10_000, "max_ongoing_requests": 256},
                               auth={"tokens": [{"token": TOKEN, "role": "admin", "name": "benchmark"}]})
        # Logical CPUs: one per model replica, as `medgate serve` does.
        ray.init(include_dashboard=False, namespace="medgate-bench", logging_level="WARNING",
                 num_cpus=max(os.cpu_count() or 2, 8))
        try:
            serve.start(**start_options(settings.http, on_cluster=False))  # as `medgate serve` does
            serve.run(build_app(settings, versions={}), name=APP_NAME, route_prefix="/")
            handle = serve.get_deployment_handle("tb", app_name=APP_NAME)
            call_handle = lambda: handle.remote(item).result()  # noqa: E731
            call_handle()
            rows["serve_handle"] = {"sequential": sequential(call_handle, n),
                                    "concurrent": concurrent(call_handle, n, concurrency)}
            rows["http"] = measure_http(upload_client(f"http://127.0.0.1:{settings.http.port}{ROUTE}", png),
                                        n, concurrency)
        finally:
            serve.shutdown()
            ray.shutdown()
    return rows


def measure_peers(names: list[str], version: str, png: bytes, n: int, concurrency: int) -> tuple[dict, dict]:
    """Each peer started, measured with the same client, and stopped, one after the other; returns
    the rows of those that ran and the reason each other one was skipped."""
    rows, skipped = {}, {}
    logs = RESULTS / "tmp"
    logs.mkdir(parents=True, exist_ok=True)
    for name in names:
        peer = PEERS[name]
        reason = peer.missing()
        if reason is None:
            try:
                with serving(peer, free_port(), logs / f"serve_overhead_{name}.log", version) as base:
                    row = measure_http(upload_client(base + ROUTE, png), n, concurrency)
                rows[name] = {**row, "versions": peer.versions(), "batching": peer.batching}
                continue
            except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, the run goes on
                reason = f"{name}: {type(exc).__name__}: {exc}"
        print(f"skipping {reason}")
        skipped[name] = reason
    return rows, skipped


def targets(rows: dict, direct_best: float, peers: list[str]) -> dict:
    """Issue 21's serving targets from this run's figures, each with its numbers and pass/fail, for
    each ``http.proxy`` mode measured (the haproxy mode's keys end in ``_haproxy``)."""
    result = {}
    ran = {name: rows[name]["concurrent"]["req_per_s"] for name in peers if name in rows}
    for proxy, (handle_row, http_row) in PROXY_ROWS.items():
        if http_row not in rows:
            continue
        suffix = http_row[len("http"):]
        http_rps = rows[http_row]["concurrent"]["req_per_s"]
        for key, row, limit in (("serve_handle_sequential_p50", handle_row, HANDLE_P50_MAX_MS),
                                ("http_sequential_p50", http_row, HTTP_P50_MAX_MS)):
            p50 = rows[row]["sequential"]["p50_ms"]
            result[key + suffix] = {"target_ms": limit, "p50_ms": p50, "pass": p50 <= limit}
        result["http_concurrent_vs_direct" + suffix] = {
            "target": f">= {HTTP_SHARE_OF_DIRECT} x the direct engine's best items/s",
            "http_req_per_s": http_rps, "direct_best_items_per_s": direct_best,
            "needed_req_per_s": HTTP_SHARE_OF_DIRECT * direct_best, "share": http_rps / direct_best,
            "pass": http_rps >= HTTP_SHARE_OF_DIRECT * direct_best}
        if ran:
            best = max(ran, key=ran.get)
            result["http_concurrent_vs_peers" + suffix] = {
                "target": "at least the best of LitServe and BentoML", "http_req_per_s": http_rps,
                "best_peer": best, "best_peer_req_per_s": ran[best], "pass": http_rps >= ran[best]}
        else:
            result["http_concurrent_vs_peers" + suffix] = {"target": "at least the best of LitServe and BentoML",
                                                           "pass": None, "note": "no peer ran"}
    return result


def print_table(rows: dict, direct: dict, goals: dict, concurrency: int) -> None:
    print(f"{'server':20s} {'seq p50 ms':>10s} {'seq p99 ms':>10s} {'seq req/s':>9s} | "
          f"{concurrency} callers: {'req/s':>7s} {'p50 ms':>8s} {'p99 ms':>8s}  probability")
    pad = " " * len(f"{concurrency} callers: ")
    for name, row in rows.items():
        seq, conc = row["sequential"], row.get("concurrent", {})
        line = f"{name:20s} {seq['p50_ms']:10.2f} {seq['p99_ms']:10.2f} {seq['req_per_s']:9.1f} | {pad}"
        if "req_per_s" in conc:
            line += f"{conc['req_per_s']:7.1f} {conc['p50_ms']:8.1f} {conc['p99_ms']:8.1f}"
        else:
            line += f"{'-':>7s} {'-':>8s} {'-':>8s}"
        print(line + (f"  {row['probability']:.6f}" if row.get("probability") is not None else ""))
    print(f"direct engine best: {direct['best_items_per_s']:.1f} items/s at batch {direct['best_batch']} "
          f"({', '.join(f'b{b}: {v:.0f}/s' for b, v in direct['items_per_s_by_batch'].items())})")
    for name, goal in goals.items():
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[goal["pass"]]
        figures = ", ".join(f"{k} {v:.{'0f' if abs(v) >= 100 else '3g'}}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in goal.items() if k != "pass")
        print(f"target {name}: {verdict} ({figures})")


def plot(rows: dict, direct: dict) -> Callable:
    """Two panels, one bar per server: sequential p50, and requests/s of the concurrent callers (for
    the direct engine, its best items/s, hatched), with the issue's share of it as a line."""
    names = list(rows)
    concurrent_rps = [rows[n]["concurrent"].get("req_per_s", direct["best_items_per_s"]) for n in names]

    def draw(axes) -> None:
        top, bottom = axes
        top.bar(names, [rows[n]["sequential"]["p50_ms"] for n in names], color="tab:blue")
        top.set_ylabel("sequential p50 (ms)")
        bars = bottom.bar(names, concurrent_rps, color="tab:orange")
        for name, bar in zip(names, bars):
            if "req_per_s" not in rows[name]["concurrent"]:
                bar.set_hatch("//")
                bar.set_label(f"{name}: best batch ({direct['best_batch']}), items/s")
        share = HTTP_SHARE_OF_DIRECT * direct["best_items_per_s"]
        bottom.axhline(share, color="grey", linestyle="--",
                       label=f"{HTTP_SHARE_OF_DIRECT} x direct best ({direct['best_items_per_s']:.0f} items/s)")
        bottom.set_yscale("log")
        bottom.set_ylabel("concurrent callers: req/s (log)")
        bottom.legend()

    return draw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="requests per measurement (default 200)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent callers (default 16)")
    parser.add_argument("--proxy", default="direct,ray,haproxy",
                        help="medgate's http.proxy modes to measure, comma-separated (default all three; "
                             "haproxy is skipped when no haproxy is installed)")
    parser.add_argument("--peers", default="litserve,bentoml",
                        help=f"comma-separated peers from {sorted(PEERS)} ('' for none; default both)")
    args = parser.parse_args(argv)
    try:
        peers = peer_names(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    load_at_start = [round(x, 2) for x in os.getloadavg()]  # a busy machine makes the figures not final
    from PIL import Image

    direct_server = ModelServer("tb", {})
    direct_server.reconfigure({})
    manifest = direct_server.active.manifest
    size = manifest.input_size_px
    item = np.random.default_rng(0).random((1, size, size), dtype=np.float32)
    png = io.BytesIO()
    Image.fromarray((item[0] * 255).astype(np.uint8)).save(png, "PNG")
    png_bytes = png.getvalue()
    rows: dict[str, dict] = {"direct": {"sequential": sequential(lambda: direct_server.run_batch([item]), args.n),
                                        "concurrent": {"note": "a direct call has no queue: see direct_batches"}}}
    direct = direct_batches(direct_server, item, args.n)
    for proxy in [p for p in args.proxy.split(",") if p]:
        if proxy not in PROXY_ROWS:
            parser.error(f"--proxy takes {sorted(PROXY_ROWS)}, {proxy!r} is given")
        try:
            rows.update(measure_medgate(item, png_bytes, args.n, args.concurrency, proxy))
        except RuntimeError as exc:  # no haproxy installed: the other mode's rows still stand
            print(f"skipping http.proxy {proxy}: {exc}")
    peer_rows, skipped = measure_peers(peers, manifest.version, png_bytes, args.n, args.concurrency)
    rows.update(peer_rows)
    reference = next(rows[http]["probability"] for _, http in PROXY_ROWS.values() if http in rows)
    agree = {name: row["probability"] is not None and reference is not None
             and abs(row["probability"] - reference) < PROBABILITY_TOLERANCE for name, row in peer_rows.items()}
    goals = targets(rows, direct["best_items_per_s"], peers)
    print_table(rows, direct, goals, args.concurrency)
    for name, same in agree.items():
        if not same:
            print(f"WARNING: {name} answered {rows[name]['probability']}, medgate {reference}: not the same model")
    save_figures("serve_overhead", {
        "model": "tb", "version": manifest.version, "medgate_engine": direct_server.active.engine.name,
        "n": args.n, "concurrency": args.concurrency, "proxy_modes": args.proxy,
        "client": "requests, PNG upload as multipart `file`, bearer token, one connection per caller",
        "direct_batches": direct, "paths": rows, "peers_requested": peers, "peers_skipped": skipped,
        "peers_answer_as_medgate": agree, "targets": goals,
        "load_average_at_start": load_at_start}, plot(rows, direct), panels=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
