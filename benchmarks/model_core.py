"""Model core: each registered model on each available engine, without Ray.

Batch-1 latency (p50 over repeated runs) and throughput at the best batch size, onnxruntime and
the torch reference (the TorchScript export) side by side in one run, on the GPU when present,
else the CPU. Saves `benchmarks/results/model_core.json` and a plot.

    python benchmarks/model_core.py [--seconds-per-point 2]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import save_figures  # noqa: E402
from models.registry import ModelRegistry  # noqa: E402
from serving.inference.engines import create_engine, gpu_visible  # noqa: E402

BATCHES = (1, 2, 4, 8, 16, 32, 64)


def inputs_for(engine, batch: int) -> dict[str, np.ndarray] | None:
    shapes = getattr(engine, "input_shapes", None) or [i.shape for i in engine.session.get_inputs()]
    if any(not isinstance(d, int) for s in shapes for d in s[1:]):
        return None
    rng = np.random.default_rng(0)
    return {n: rng.random([batch] + list(s[1:]), dtype=np.float32) for n, s in zip(engine.input_names, shapes)}


def time_runs(engine, batch: int, seconds: float) -> list[float]:
    feed = inputs_for(engine, batch)
    engine.run(feed)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        engine.run(feed)
        times.append(time.perf_counter() - start)
    return times


def measure(engine, max_batch: int, seconds: float) -> dict:
    lat = np.array(time_runs(engine, 1, seconds)) * 1000
    throughput = {}
    for batch in (b for b in BATCHES if b <= max_batch):
        runs = np.array(time_runs(engine, batch, seconds))
        throughput[batch] = batch / float(np.median(runs))
    best = max(throughput, key=throughput.get)
    return {"batch1_p50_ms": float(np.median(lat)), "batch1_p99_ms": float(np.percentile(lat, 99)),
            "best_batch": best, "best_items_per_s": throughput[best],
            "items_per_s_by_batch": {str(k): round(v, 1) for k, v in throughput.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds-per-point", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args(argv)
    device = "cuda" if gpu_visible() else "cpu"
    registry, rows = ModelRegistry(), []
    for name in registry.names():
        manifest = registry.get(name)
        for engine_name in ("onnxruntime", "torch"):
            if engine_name == "torch" and not (manifest.path.parent / "model.ts").exists():
                continue
            engine = create_engine(manifest.path.parent, manifest.path.name, engine=engine_name, device=device,
                                   max_batch_size=args.max_batch)
            if inputs_for(engine, 1) is None:
                continue
            row = {"model": name, "version": manifest.version, "engine": engine.name, "device": engine.device,
                   **measure(engine, args.max_batch, args.seconds_per_point)}
            rows.append(row)
            print(f"{name}@{manifest.version} {engine.name:48s} b1 p50 {row['batch1_p50_ms']:8.2f} ms   "
                  f"best {row['best_items_per_s']:9.1f}/s at b={row['best_batch']}")
    save_figures("model_core", {"device": device, "rows": rows}, lambda ax: (
        ax.barh([f"{r['model']} {r['engine'].split(':')[0]}" for r in rows], [r["batch1_p50_ms"] for r in rows]),
        ax.set_xlabel("batch-1 latency p50 (ms)")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
