"""Result writers for one chest X-ray: SR, SC overlay and FHIR, before and after the fast path.

One TB finding (a point and a peaked heatmap) about one DX chest image, written by the
TID 1500 SR writer (`dicom_gateway.sr.build_measurement_report`), the Secondary Capture overlay
writer (`dicom_gateway.overlay.build_overlay`) and the FHIR writer
(`serving.fhir.report.build_report_resources`), as `serving/imaging/pipeline.py` calls them.
"Before" is the same three modules as they were at git revision `--before` (highdicom's
template classes and SCImage on every call, full-frame float64 compositing), loaded from git
beside the current ones and called alternately with them on the same inputs; "after" is the
working tree.  Per writer and image size: p50/p95 over `--n` calls in one process, and the first
call of a fresh process (highdicom reads its IOD tables then).  Prints a table and saves
`benchmarks/results/result_writers.json` and a plot.

    python benchmarks/bench_result_writers.py [--n 100] [--sizes 256 2048] [--before a1ae474]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import save_figures  # noqa: E402

#: The writers measured: name -> the module that holds it (path in the repository) and the function.
WRITERS = {
    "SR": ("dicom_gateway/sr.py", "build_measurement_report"),
    "SC": ("dicom_gateway/overlay.py", "build_overlay"),
    "FHIR": ("serving/fhir/report.py", "build_report_resources"),
}
#: The last revision before the fast path.
BEFORE = "a1ae474"
#: One call of each writer as the imaging pipeline makes it, on the case of :func:`case`.
CALLS = {
    "SR": "lambda m, ds, f: m.build_measurement_report([f], ds, algorithm_name='medgate-tb', algorithm_version='0.3.0', "
          "series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())",
    "SC": "lambda m, ds, f: m.build_overlay(ds, [f], series_number=9903, series_instance_uid=generate_uid(), "
          "sop_instance_uid=generate_uid())",
    "FHIR": "lambda m, ds, f: m.build_report_resources([f], ds, m.PatientIdentity())",
}
#: Run in a fresh process: builds the case, imports the writer, times its first and second call.
FIRST_CALL = """
import sys, time, json
sys.path[:0] = [{root!r}, {before_dir!r}]
from benchmarks.bench_result_writers import case
from pydicom.uid import generate_uid
ds, finding = case({size})
import {module} as m
call = {call}
start = time.perf_counter(); call(m, ds, finding); first = time.perf_counter() - start
start = time.perf_counter(); call(m, ds, finding); second = time.perf_counter() - start
print(json.dumps([first * 1000, second * 1000]))
"""


def case(size_px: int):
    """A DX chest X-ray of ``size_px`` squared (read back from its file, as the pipeline reads it)
    and a positive TB finding with a point and a 16x16 heatmap peaked there."""
    import io

    from pydicom import dcmread

    from models.finding import Concept, Finding
    from serving.imaging.findings import source_image
    from training.synthetic.cxr import generate_cxr
    from training.synthetic.dicom import make_dx_dataset

    buffer = io.BytesIO()
    make_dx_dataset(generate_cxr(np.random.default_rng(0), size_px=size_px, tb=True).pixels).save_as(
        buffer, enforce_file_format=True)
    buffer.seek(0)
    ds = dcmread(buffer)
    yy, xx = np.mgrid[0:16, 0:16]
    heatmap = np.exp(-((xx - 5.0) ** 2 + (yy - 9.0) ** 2) / 4.0).astype(np.float32)
    point = (size_px * 5.5 / 16, size_px * 9.5 / 16)
    finding = Finding(model="tb", model_version="0.3.0", code=Concept("56717001", "SCT", "Tuberculosis"),
                      probability=0.87, threshold=0.5, source=source_image(ds), point=point, heatmap=heatmap)
    return ds, finding


def load_before(revision: str, folder: Path) -> dict[str, str]:
    """The writer modules at ``revision``, written to ``folder`` as ``before_<name>.py``; their
    module names by writer."""
    names = {}
    for writer, (path, _) in WRITERS.items():
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{path}"], capture_output=True,
                                text=True, check=True).stdout
        name = f"before_{Path(path).stem}"
        (folder / f"{name}.py").write_text(source)
        names[writer] = name
    return names


def import_file(name: str, folder: Path):
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def first_calls(module: str, writer: str, size: int, before_dir: Path) -> tuple[float, float]:
    code = FIRST_CALL.format(root=str(ROOT), before_dir=str(before_dir), size=size, module=module,
                             call=CALLS[writer])
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"first call of {module} failed: {run.stderr[-2000:]}")
    first, second = json.loads(run.stdout.strip().splitlines()[-1])
    return first, second


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="calls per writer, variant and size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 2048],
                        help="image sizes (px): 256 as bench_cxr_latency sends, 2048 a detector's")
    parser.add_argument("--before", default=BEFORE, help="git revision of the writers before the fast path")
    args = parser.parse_args(argv)
    from pydicom.uid import generate_uid

    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="medgate-writers-") as tmp:
        folder = Path(tmp)
        before_names = load_before(args.before, folder)
        after_names = {writer: path[:-3].replace("/", ".") for writer, (path, _) in WRITERS.items()}
        modules = {"before": {w: import_file(n, folder) for w, n in before_names.items()},
                   "after": {w: importlib.import_module(n) for w, n in after_names.items()}}
        calls = {writer: eval(code, {"generate_uid": generate_uid}) for writer, code in CALLS.items()}  # noqa: S307
        for size in args.sizes:
            ds, finding = case(size)
            for writer, call in calls.items():
                for variant in ("before", "after"):
                    call(modules[variant][writer], ds, finding)  # warm: tables, templates, fonts
                times = {"before": [], "after": []}
                for _ in range(args.n):  # alternate, so both see the same load on the shared machine
                    for variant in ("before", "after"):
                        start = time.perf_counter()
                        call(modules[variant][writer], ds, finding)
                        times[variant].append((time.perf_counter() - start) * 1000)
                for variant in ("before", "after"):
                    names = before_names if variant == "before" else after_names
                    first_ms, second_ms = first_calls(names[writer], writer, size, folder)
                    lat = np.array(times[variant])
                    row = {"writer": writer, "size_px": size, "variant": variant, "n": len(lat),
                           "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
                           "min_ms": float(lat.min()), "first_call_ms": first_ms, "second_call_ms": second_ms}
                    rows.append(row)
                    print(f"{writer:4s} {size:5d} px {variant:6s}  p50 {row['p50_ms']:8.2f} ms  p95 "
                          f"{row['p95_ms']:8.2f} ms  first call in a fresh process {first_ms:8.1f} ms", flush=True)
    load_end = os.getloadavg()
    summary = {}
    for size in args.sizes:
        for variant in ("before", "after"):
            summary[f"{size}px_{variant}_p50_ms_total"] = sum(
                r["p50_ms"] for r in rows if r["size_px"] == size and r["variant"] == variant)
    for key, value in summary.items():
        print(f"{key}: {value:.1f}")
    figures = {
        "before_revision": args.before,
        "case": "one DX chest X-ray (generate_cxr, read back from its file), one positive TB finding with a "
                "point and a 16x16 peaked heatmap; SR + SC + FHIR as serving/imaging/pipeline.py calls them",
        "note": "ran on a shared 2-core machine while other engineers ran tests and benchmarks; numbers as "
                "measured, before and after called alternately so both saw the same load",
        "load_average_start_end": [round(load_start[0], 2), round(load_end[0], 2)],
        "rows": rows, "summary": summary,
    }

    def plot(ax):
        labels = [f"{w} {s}px" for s in args.sizes for w in WRITERS]
        x = np.arange(len(labels))
        for offset, variant in ((-0.2, "before"), (0.2, "after")):
            p50 = [next(r["p50_ms"] for r in rows if r["writer"] == w and r["size_px"] == s and r["variant"] == variant)
                   for s in args.sizes for w in WRITERS]
            ax.bar(x + offset, p50, width=0.4, label=f"{variant} p50")
        ax.set_xticks(x, labels)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (log)")
        ax.legend()

    save_figures("result_writers", figures, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
