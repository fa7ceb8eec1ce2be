"""Where the time of one chest CT goes inside the nodule model's ``serve_volume``, in process (no server).

Generates the chest CT that ``bench_ct_latency.py`` sends (``tests/dicom_testdata.chest_ct``, seed 0,
2.5 mm slices of 0.8 mm pixels), builds the engine as a nodule replica does
(:func:`serving.inference.engines.create_engine` on the CPU) and runs the volume through
:class:`serving.inference.runners.VolumeRunner` (with the out-of-distribution guard), timing each
stage: windowing + resampling, lung mask, sliding windows (patches run, engine calls and their time),
candidate extraction and the nearest-neighbour resize of the labels back to the source grid.

    python benchmarks/ct_stages.py [--slices 80] [--size-px 512] [--seed 1] [--reps 2] [--threads N] [--variant int8]

Prints one JSON object (the fastest of ``--reps`` runs per stage, and the candidates found).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


@contextmanager
def _timed(module, name: str, totals: dict, key: str):
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + (time.perf_counter() - start) * 1000

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=80)
    parser.add_argument("--size-px", type=int, default=512)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1, help="of the generated CT (1: a 14.5 mm nodule at 80 x 512^2)")
    parser.add_argument("--save", type=str, default=None, help="also save the labels and reply here (.npz)")
    parser.add_argument("--threads", type=int, default=None, help="serving.intra_op_threads (default: as served)")
    parser.add_argument("--variant", default=None, help="engine variant of the model card (default: the model's own)")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads before the run (a Ray actor with num_cpus 1 gets 1)")
    args = parser.parse_args(argv)

    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    from dicom_testdata import CT_RESCALE_INTERCEPT_HU, CT_SPACING_MM, chest_ct
    import models.nodule.inference as inference
    import models.nodule.serving as serving_mod
    from models.registry import ModelRegistry
    from serving.inference.engines import create_engine
    from serving.inference.runners import VolumeRunner

    stored, sample = chest_ct(seed=args.seed, shape_vox=(args.slices, args.size_px, args.size_px))
    volume = stored.astype(np.float32) + CT_RESCALE_INTERCEPT_HU
    manifest = ModelRegistry().get("nodule")
    kwargs = {"device": "cpu"}
    if args.threads is not None:
        kwargs["intra_op_threads"] = args.threads
    if args.variant:
        kwargs["variant"] = args.variant
    engine = create_engine(manifest.path.parent, manifest.path.name, **kwargs)
    engine.warmup()
    runner = VolumeRunner(engine, manifest, serving_mod.serve_volume)
    calls: list[tuple[int, float]] = []
    original_run = engine.run

    def counted(inputs):
        start = time.perf_counter()
        out = original_run(inputs)
        calls.append((len(next(iter(inputs.values()))), (time.perf_counter() - start) * 1000))
        return out

    engine.run = counted
    best: dict[str, float] = {}
    reply = None
    for _ in range(args.reps):
        totals: dict[str, float] = {}
        calls.clear()
        with _timed(serving_mod, "prepare_volume", totals, "prepare_ms"), \
                _timed(inference, "lung_mask", totals, "lung_mask_ms"), \
                _timed(inference, "infer_volume", totals, "sliding_window_ms"), \
                _timed(inference, "extract_candidates", totals, "candidates_ms"):
            start = time.perf_counter()
            reply = runner.run([{"volume": volume, "spacing_mm": list(CT_SPACING_MM)}])[0]
            totals["total_ms"] = (time.perf_counter() - start) * 1000
        totals["engine_ms"] = sum(ms for _, ms in calls)
        totals["patches"] = sum(n for n, _ in calls)
        totals["engine_calls"] = len(calls)
        totals["rest_ms"] = totals["total_ms"] - sum(totals.get(k, 0.0) for k in
                                                     ("prepare_ms", "lung_mask_ms", "sliding_window_ms",
                                                      "candidates_ms"))
        for key, value in totals.items():
            best[key] = min(best.get(key, value), value)
    best["ms_per_patch"] = best["engine_ms"] / max(best["patches"], 1)
    out = {"series": [args.slices, args.size_px, args.size_px], "spacing_mm": list(CT_SPACING_MM),
           "engine": engine.name, "intra_op_threads": getattr(engine, "intra_op_threads", None),
           "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "stages_ms": {k: round(v, 1) for k, v in best.items()},
           "candidates": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in c.items()
                           if k in ("probability", "centre_vox", "diameter_mm")} for c in reply["candidates"]],
           "max_probability": reply["max_probability"], "ood": str(reply.get("ood")),
           "truth": [{"centre_vox": [float(v) for v in n.centre_vox], "diameter_mm": float(n.diameter_mm)}
                     for n in getattr(sample, "nodules", [])]}
    if args.save:
        np.savez_compressed(args.save, mask=reply["mask"],
                            probabilities=np.array([c["probability"] for c in reply["candidates"]]))
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
