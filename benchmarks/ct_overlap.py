"""Nodule model: how the sliding-window overlap trades CPU time against held-out FROC.

Fewer, less overlapping 64^3 patches are the largest lever on a CPU (the patch count falls as
``(1 - overlap)^3``), but blending fewer windows can move the probability map and so the
candidates.  This runs the registered nodule version's torch weights over the held-out (test)
split at each overlap, with the operating point of its metadata, and reports CPM, sensitivity,
false positives per scan and the patches run per scan, side by side in one run; a smaller
overlap is acceptable only where the CPM moves by less than ``--margin``.  The held-out volumes
are small blocks of a chest; each overlap also runs the serving path (``serve_volume``, onnxruntime)
over a whole generated 80x512x512 chest CT with one nodule, reporting its time, patches and
candidates, since a whole CT has many more patch seams.  Saves
`benchmarks/results/ct_overlap.json` and a plot.

    python -m benchmarks.ct_overlap [--overlaps 0.25,0.1,0] [--margin 0.02]
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
from training.config import load_task  # noqa: E402
from training.evaluate import evaluate_split, load_weights  # noqa: E402


def whole_ct_rows(manifest, overlaps: list[float]) -> dict[str, dict]:
    """``serve_volume`` over one generated 80x512x512 chest CT (one nodule) at each overlap."""
    import copy

    import onnxruntime as ort

    from models.nodule.serving import serve_volume
    from training.synthetic.ct import generate_ct

    spacing = (2.5, 0.7, 0.7)
    sample = generate_ct(np.random.default_rng(3), (80, 512, 512), spacing, 1)
    session = ort.InferenceSession(str(manifest.path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = {}
    for overlap in overlaps:
        metadata = copy.deepcopy(manifest.raw)
        metadata.setdefault("postprocessing", {})["sliding_window_overlap"] = overlap
        patches = []

        def run(batch: np.ndarray) -> np.ndarray:
            patches.append(len(batch))
            return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]

        start = time.perf_counter()
        reply = serve_volume(run, sample.volume_hu, spacing, metadata)
        out[f"{overlap:g}"] = {"seconds": round(time.perf_counter() - start, 1), "patches": sum(patches),
                               "true_nodules": len(sample.nodules),
                               "candidates": [{"probability": round(c["probability"], 3),
                                               "diameter_mm": round(c["diameter_mm"], 1)}
                                              for c in reply["candidates"]]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlaps", default="0.25,0.1,0")
    parser.add_argument("--margin", type=float, default=0.02, help="largest CPM drop accepted")
    args = parser.parse_args(argv)
    manifest = ModelRegistry().get("nodule")
    task = load_task("nodule")
    network, config = load_weights(task, manifest.folder / manifest.raw.get("weights_file", "model.pt"))
    test = task.datasets(config)["test"]
    rows = {}
    for overlap in (float(v) for v in args.overlaps.split(",")):
        cfg = {**config, "eval": {**config["eval"], "overlap": overlap}}
        start = time.perf_counter()
        metrics = evaluate_split(task, network, test, cfg, manifest.operating_point).metrics
        rows[f"{overlap:g}"] = {"overlap": overlap, "seconds": round(time.perf_counter() - start, 1),
                                "cpm": metrics["cpm"], "sensitivity": metrics["sensitivity"],
                                "fp_per_scan": metrics["fp_per_scan"], "froc": metrics["froc"],
                                "relative_patches": round((0.75 / (1 - overlap)) ** 3, 3) if overlap < 1 else None}
        print(f"overlap {overlap:g}: CPM {metrics['cpm']:.3f}, sensitivity {metrics['sensitivity']:.3f}, "
              f"{metrics['fp_per_scan']:.2f} FP/scan, {rows[f'{overlap:g}']['seconds']} s")
    whole = whole_ct_rows(manifest, [float(v) for v in args.overlaps.split(",")])
    for key, row in whole.items():
        rows[key]["whole_ct"] = row
        print(f"overlap {key}: whole 80x512x512 CT {row['seconds']} s, {row['patches']} patches, "
              f"candidates {row['candidates']}")
    base = rows[next(iter(rows))]["cpm"]
    for row in rows.values():
        row["cpm_change"] = round(row["cpm"] - base, 4)
        row["within_margin"] = row["cpm"] >= base - args.margin
    save_figures("ct_overlap", {"model": f"nodule@{manifest.version}", "split": "test",
                                "n_scans": len(test), "margin_cpm": args.margin, "rows": rows},
                 lambda ax: (ax.bar(list(rows), [r["cpm"] for r in rows.values()]),
                             ax.set_xlabel("sliding-window overlap"), ax.set_ylabel("held-out CPM")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
