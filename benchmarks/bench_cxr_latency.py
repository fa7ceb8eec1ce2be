"""Single chest X-ray: C-STORE (DCMTK storescu) -> TID 1500 SR received by the PACS (DCMTK storescp).

Starts `medgate serve` with DCMTK's storescp as its PACS, sends N generated CXRs one at a time
(each in its own association, as a modality does) and times from the start of `storescu` to the
SR file appearing in the PACS's directory. Prints and saves p50/p95/max to
`benchmarks/results/cxr_latency.json` and a plot next to it. Target: p50 <= 120 ms on CPU.

    python benchmarks/bench_cxr_latency.py --n 30
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.imaging_peers import imaging_server, missing_peers, send_files  # noqa: E402
from benchmarks.report import save_figures  # noqa: E402
from training.synthetic.cxr import generate_cxr  # noqa: E402
from training.synthetic.dicom import make_dx_dataset  # noqa: E402

TARGET_P50_MS = 120.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="studies to send")
    args = parser.parse_args(argv)
    missing = missing_peers("storescu", "storescp")
    if missing:
        print(f"{', '.join(missing)} (DCMTK) not installed: nothing measured")
        return 1
    with tempfile.TemporaryDirectory(prefix="medgate-bench-") as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        files = []
        for i in range(args.n):
            path = root / f"cxr{i}.dcm"
            make_dx_dataset(generate_cxr(rng, tb=bool(i % 2)).pixels).save_as(path, enforce_file_format=True)
            files.append(path)
        latencies_ms = []
        with imaging_server(root) as rig:
            for path in files:
                known = rig.pacs.names()
                start = time.perf_counter()
                send_files(rig.dicom_port, [path])
                arrived = rig.pacs.wait_for(("SR",), known)
                latencies_ms.append((arrived["SR"] - start) * 1000)
    lat = np.array(latencies_ms)
    figures = {"n": len(lat), "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
               "max_ms": float(lat.max()), "min_ms": float(lat.min()), "target_p50_ms": TARGET_P50_MS,
               "first_ms": float(lat[0]), "latencies_ms": [round(x, 1) for x in lat],
               "path": "storescu -> medgate SCP -> tb (Ray Serve, onnxruntime) -> SR -> outbox -> storescp"}
    print(f"C-STORE -> SR at PACS over {len(lat)} studies: p50 {figures['p50_ms']:.0f} ms, "
          f"p95 {figures['p95_ms']:.0f} ms, max {figures['max_ms']:.0f} ms (target p50 <= {TARGET_P50_MS:.0f} ms) "
          f"on {platform.node()}")
    save_figures("cxr_latency", figures, lambda ax: (
        ax.plot(range(1, len(lat) + 1), lat, marker="o"),
        ax.axhline(TARGET_P50_MS, color="red", linestyle="--", label="target p50"),
        ax.set_xlabel("study"), ax.set_ylabel("C-STORE -> SR at PACS (ms)"), ax.legend()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
