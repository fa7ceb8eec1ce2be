"""Chest CT study: C-STORE of the series (DCMTK storescu) -> DICOM SEG + TID 1500 SR at the PACS
(DCMTK storescp) and the FHIR DiagnosticReport Bundle at the FHIR server.

Starts `medgate serve` with storescp as its PACS and a recording FHIR server, sends ``--reps``
generated chest CT series (training.synthetic.ct, one nodule, new UIDs each time) one after the
other, each in one association as a scanner does, and times from the start of `storescu` to the
SEG, the SR and the Bundle arriving. The study completes by the quiet period (`dicom.completion
.quiet_period_s`, 2 s by default), as for a scanner that does not announce its instance count;
the server's own log gives the inference + writing time of each study. Saves p50/p95 to
`benchmarks/results/ct_latency.json` and a plot next to it.

The default volume (48 slices of 256x256 at 0.8 mm, 2.5 mm apart) is a block of the chest that
the nodule model (64^3 patches at 1.25 x 0.7 x 0.7 mm) covers with 72 patches; a whole 512x512 CT
of 150 slices needs about 860, twelve times as long (minutes on a CPU).  The study must yield a SEG,
so the generated nodule must be found: at 80 x 512 x 512, ``--seed 1`` draws a 14.5 mm nodule the
model finds (seed 0's is 3.1 mm and missed: an SR without SEG, which this benchmark counts as a
failure).

    python benchmarks/bench_ct_latency.py [--reps 5] [--slices 48] [--size-px 256] [--seed 0]
    python benchmarks/bench_ct_latency.py --slices 80 --size-px 512 --seed 1 --reps 3 --name ct_latency_512
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/: the DICOM test data

from benchmarks.imaging_peers import imaging_server, missing_peers, send_files  # noqa: E402
from benchmarks.report import save_figures  # noqa: E402
from dicom_testdata import CT_PIXEL_SPACING_MM, CT_SLICE_THICKNESS_MM, chest_ct, make_ct_series  # noqa: E402

#: ``serving.imaging.pipeline`` logs "study <uid>: nodule@1.0.0 -> 1 SEG, 1 SR, 1 SC in <ms> ms".
PROCESSED = re.compile(r"study (?P<uid>[0-9.]+): \S+ -> .* in (?P<ms>\d+) ms")
OBJECTS = ("SEG", "SR")


def write_study(folder: Path, volume: np.ndarray) -> tuple[str, list[Path]]:
    """The volume as a new CT series (new Study/Series/SOP UIDs) in ``folder``."""
    folder.mkdir(parents=True)
    paths = []
    for index, ds in enumerate(make_ct_series(volume)):
        path = folder / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return str(ds.StudyInstanceUID), paths


def processing_ms(log_text: str) -> dict[str, float]:
    """Study UID -> the server's inference + result writing time, from its log."""
    return {m["uid"]: float(m["ms"]) for m in PROCESSED.finditer(log_text)}


def percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    return {"p50_ms": round(float(np.percentile(array, 50)), 1), "p95_ms": round(float(np.percentile(array, 95)), 1),
            "min_ms": round(float(array.min()), 1), "max_ms": round(float(array.max()), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="studies to send, one after the other")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--size-px", type=int, default=256, help="rows and columns of each slice")
    parser.add_argument("--seed", type=int, default=0, help="of the generated CT (tests/dicom_testdata.chest_ct)")
    parser.add_argument("--config", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="server setting, e.g. serving.variants={\"nodule\":\"int8\"} (repeatable)")
    parser.add_argument("--name", default="ct_latency",
                        help="results file stem under benchmarks/results (e.g. ct_latency_512 for the whole CT)")
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per study")
    args = parser.parse_args(argv)
    for name in ("reps", "slices", "size_px"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive, {getattr(args, name)} is given")
    missing = missing_peers("storescu", "storescp")
    if missing:
        print(f"{', '.join(missing)} (DCMTK) not installed: nothing measured")
        return 1
    size = args.size_px
    volume, _ = chest_ct(seed=args.seed, shape_vox=(args.slices, size, size))  # one nodule
    config: dict = {"log_level": "INFO"}
    for item in args.config:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if not name or not value:
            parser.error(f"--config must be SECTION.KEY=JSON, {item!r} is given")
        config.setdefault(section, {})[name] = json.loads(value)
    rows, failures = [], []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="medgate-bench-ct-") as tmp:
        root = Path(tmp)
        studies = [write_study(root / f"study{i}", volume) for i in range(args.reps)]
        with imaging_server(root, fhir=True, config=config) as rig:
            for study_uid, files in studies:
                known, bundles = rig.pacs.names(), len(rig.fhir.requests)
                start = time.perf_counter()
                try:
                    send_s = send_files(rig.dicom_port, files)
                    arrived = rig.pacs.wait_for(OBJECTS, known, timeout_s=args.timeout_s,
                                                check=lambda: rig.raise_if_failed(study_uid, ("sr", "seg")))
                except (TimeoutError, RuntimeError) as exc:
                    failures.append(f"{study_uid}: {exc}")
                    print(f"study failed: {exc}", flush=True)
                    continue
                deadline = time.monotonic() + 60
                while len(rig.fhir.requests) == bundles and time.monotonic() < deadline:
                    time.sleep(0.005)
                fhir_at = time.perf_counter() if len(rig.fhir.requests) > bundles else None
                row = {"study_uid": study_uid, "send_ms": round(send_s * 1000, 1),
                       **{f"{kind.lower()}_ms": round((arrived[kind] - start) * 1000, 1) for kind in OBJECTS},
                       "seg_and_sr_ms": round((max(arrived.values()) - start) * 1000, 1),
                       "fhir_ms": round((fhir_at - start) * 1000, 1) if fhir_at else None}
                rows.append(row)
                print(f"study {len(rows)}: send {row['send_ms']:.0f} ms, SEG {row['seg_ms']:.0f} ms, "
                      f"SR {row['sr_ms']:.0f} ms, FHIR {row['fhir_ms']} ms", flush=True)
            log_text = rig.server.log_path.read_text(errors="replace")
    inference = processing_ms(log_text)
    for row in rows:
        row["server_processing_ms"] = inference.get(row["study_uid"])
    if not rows:
        print("no study completed: nothing saved")
        return 1
    total = [r["seg_and_sr_ms"] for r in rows]
    figures = {
        "n": len(rows), "failed": len(failures), "failures": failures,
        "series": {"slices": args.slices, "rows": size, "columns": size, "pixel_spacing_mm": CT_PIXEL_SPACING_MM,
                   "slice_thickness_mm": CT_SLICE_THICKNESS_MM, "bytes": int(volume.nbytes), "seed": args.seed,
                   "content": "generated chest CT, one nodule (training.synthetic.ct via tests/dicom_testdata.chest_ct)"},
        "seg_and_sr": percentiles(total),
        "send": percentiles([r["send_ms"] for r in rows]),
        "server_processing": percentiles([r["server_processing_ms"] for r in rows if r["server_processing_ms"]])
        if any(r["server_processing_ms"] for r in rows) else None,
        "fhir": percentiles([r["fhir_ms"] for r in rows if r["fhir_ms"]]) if any(r["fhir_ms"] for r in rows) else None,
        "completion": "quiet period 2.0 s (no instance count announced)",
        "server_config": {k: v for k, v in config.items() if k != "log_level"},
        # A shared machine: the 1-minute load average says how much CPU the run really had.
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "rows": rows,
        "path": "storescu -> medgate SCP -> study complete -> nodule (Ray Serve, onnxruntime, sliding window) "
                "-> SEG + SR + SC -> outbox -> storescp; FHIR Bundle -> outbox -> FHIR server",
    }
    print(f"CT {args.slices}x{size}x{size} -> SEG+SR at PACS over {len(rows)} studies: "
          f"p50 {figures['seg_and_sr']['p50_ms']:.0f} ms, p95 {figures['seg_and_sr']['p95_ms']:.0f} ms"
          + (f"; {len(failures)} failed" if failures else ""))

    def plot(ax):
        x = np.arange(1, len(rows) + 1)
        ax.bar(x, [r["send_ms"] / 1000 for r in rows], label="storescu send")
        ax.plot(x, [r["seg_ms"] / 1000 for r in rows], "o-", label="SEG at PACS")
        ax.plot(x, [r["sr_ms"] / 1000 for r in rows], "s-", label="SR at PACS")
        ax.set_xlabel(f"study ({args.slices} x {size} x {size} CT)")
        ax.set_ylabel("seconds from C-STORE start")
        ax.legend()

    save_figures(args.name, figures, plot)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
