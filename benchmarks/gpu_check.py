"""The GPU kit (`make gpu-check`): every GPU path once, on a machine with a CUDA GPU.

For each registered model, side by side in one run:

- the engine `medgate serve` would choose (``serving.inference.engines.create_engine``, auto);
- the model core on onnxruntime's CUDA EP with IO binding and CUDA graphs per batch bucket
  (:class:`serving.inference.engine_onnx.OnnxEngine`), on its TensorRT EP where present, and on
  torch CUDA graphs in fp16 (:class:`serving.inference.engine_torch.TorchEngine`), each with batch-1
  p50 and the best items/s over the batch buckets, numpy in and out as the replica does;
- against the **ceiling**: a torch CUDA graph of the same network (its TorchScript export) replayed
  on device-resident fp16 tensors, with no copy in or out, in the same run;
- a chest CT of 512x512x300 through the nodule model to SEG + SR (volume assembly from DICOM,
  sliding window on the GPU engine, candidates, both writers);
- one training step per model with mixed precision (``torch.autocast`` fp16 + ``GradScaler``,
  :func:`training.loop.train`).

On a machine without a CUDA GPU it says so, runs its CPU parts (the engine choice, batch-1 on the
CPU engine) and exits 0.  Writes `benchmarks/results/gpu_check.json`; `python -m
benchmarks.readme_table` puts its table in the README.

    python -m benchmarks.gpu_check [--seconds 2] [--ct-slices 300] [--models tb,derm,vitals,nodule]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/: the DICOM test data

from benchmarks.report import save_figures  # noqa: E402
from models.registry import ModelRegistry  # noqa: E402
from serving.inference.engines import create_engine, gpu_visible  # noqa: E402

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: Issue targets: batch-1 p50 at most this times the ceiling, peak items/s at least this share of it.
LATENCY_TARGET, THROUGHPUT_TARGET = 1.1, 0.9
CT_TARGET_S = 3.0


def _timed(call: Callable[[], Any], seconds: float, sync: Callable[[], None] = lambda: None) -> list[float]:
    call()
    sync()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return times


def feed(engine, batch: int) -> dict[str, np.ndarray] | None:
    """Random inputs of ``batch`` for a fixed-shape model; None for a dynamic one."""
    shapes = getattr(engine, "input_shapes", None)
    if shapes is None or any(not isinstance(d, int) for s in shapes for d in s[1:]):
        return None
    rng = np.random.default_rng(0)
    return {n: rng.random([batch] + list(s[1:]), dtype=np.float32) for n, s in zip(engine.input_names, shapes)}


def sweep(row: dict[str, Any], timed_batch: Callable[[int, float], list[float] | None], seconds: float,
          buckets=BUCKETS) -> dict[str, Any]:
    """Fill ``row`` with batch-1 p50 and items/s per bucket; ``timed_batch(batch, seconds)`` gives
    the run times of one batch size (None: the model cannot take fixed batches)."""
    row["throughput"] = {}
    for batch in buckets:
        try:
            times = timed_batch(batch, seconds / len(buckets) if batch > 1 else seconds)
        except Exception as exc:  # noqa: BLE001 - out of memory at a large bucket ends the sweep
            row["stopped_at_batch"] = f"{batch}: {type(exc).__name__}: {str(exc)[:200]}"
            break
        if times is None:
            return {**row, "skipped": "inputs of dynamic shape"}
        if batch == 1:
            row["batch1_p50_ms"] = round(float(np.median(times)) * 1000, 3)
        row["throughput"][str(batch)] = round(batch / float(np.median(times)), 1)
    if row["throughput"]:
        best = max(row["throughput"], key=row["throughput"].get)
        row["best_items_per_s"], row["best_batch"] = row["throughput"][best], int(best)
    return row


def profile_engine(engine, seconds: float, buckets=BUCKETS) -> dict[str, Any]:
    """Batch-1 p50 and the best items/s over ``buckets`` (numpy in and out)."""
    def timed_batch(batch: int, budget_s: float) -> list[float] | None:
        inputs = feed(engine, batch)
        return None if inputs is None else _timed(lambda: engine.run(inputs), budget_s)

    return sweep({"engine": engine.name, "device": engine.device}, timed_batch, seconds, buckets)


def torch_ceiling(ts_path: Path, input_shape: list[int], seconds: float, buckets=BUCKETS) -> dict[str, Any]:
    """The same network as a torch CUDA graph in fp16 on device-resident tensors: nothing copied."""
    import torch

    module = torch.jit.load(str(ts_path), map_location="cuda").eval().half()

    def timed_batch(batch: int, budget_s: float) -> list[float]:
        static = torch.randn([batch] + list(input_shape), device="cuda", dtype=torch.float16)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):
                module(static)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            module(static)
        return _timed(graph.replay, budget_s, torch.cuda.synchronize)

    return sweep({"engine": f"torch-{torch.__version__} CUDA graph fp16, device tensors"}, timed_batch, seconds,
                 buckets)


def against_ceiling(row: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """The issue's two GPU targets for one engine row."""
    out: dict[str, Any] = {}
    if "batch1_p50_ms" in row and "batch1_p50_ms" in ceiling:
        ratio = row["batch1_p50_ms"] / ceiling["batch1_p50_ms"]
        out["batch1_vs_ceiling"] = round(ratio, 3)
        out["batch1_target_met"] = ratio <= LATENCY_TARGET
    if "best_items_per_s" in row and "best_items_per_s" in ceiling:
        share = row["best_items_per_s"] / ceiling["best_items_per_s"]
        out["throughput_vs_ceiling"] = round(share, 3)
        out["throughput_target_met"] = share >= THROUGHPUT_TARGET
    return out


def gpu_engines(folder: Path, onnx_file: str, seconds: float) -> dict[str, Any]:
    """onnxruntime CUDA EP (+ CUDA graphs), TensorRT EP where present, torch CUDA graphs fp16."""
    import onnxruntime as ort

    from serving.inference.engine_onnx import OnnxEngine, TRT
    from serving.inference.engine_torch import TorchEngine

    rows: dict[str, Any] = {}
    builders = {"onnxruntime_cuda_graphs": lambda: OnnxEngine(folder / onnx_file, cuda=True, max_batch_size=64,
                                                               cuda_graphs=True)}
    if TRT in ort.get_available_providers():
        builders["onnxruntime_tensorrt"] = lambda: OnnxEngine(folder / onnx_file, cuda=True, max_batch_size=64,
                                                              cuda_graphs=False, use_tensorrt=True,
                                                              cache_dir=Path(tempfile.mkdtemp()))
    else:
        rows["onnxruntime_tensorrt"] = {"skipped": "onnxruntime has no TensorRT EP here"}
    if (folder / "model.ts").is_file():
        builders["torch_cuda_graphs_fp16"] = lambda: TorchEngine(folder / "model.ts", cuda=True, precision="fp16",
                                                                 max_batch_size=64, cuda_graphs=True)
    for name, build in builders.items():
        try:
            engine = build()
            engine.warmup()
            rows[name] = profile_engine(engine, seconds)
        except Exception as exc:  # noqa: BLE001 - one engine failing does not hide the others
            rows[name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return rows


def ct_to_seg_and_sr(slices: int, size_px: int = 512, device: str = "cuda") -> dict[str, Any]:
    """A generated chest CT (one nodule) as DICOM, through the nodule model on the GPU to SEG + SR."""
    from dicom_gateway.pixels import ct_volume
    from dicom_gateway.seg import build_segmentation
    from dicom_gateway.sr import build_measurement_report
    from dicom_testdata import chest_ct, make_ct_series
    from models.finding import Concept, Finding, SourceImage
    from models.nodule.serving import serve_volume

    manifest = ModelRegistry().get("nodule")
    engine = create_engine(manifest.folder, manifest.path.name, device=device, max_batch_size=16)
    engine.warmup()
    name = engine.input_names[0]
    run_patches = lambda patches: next(iter(engine.run({name: patches}).values()))  # noqa: E731
    stored, _ = chest_ct(seed=5, shape_vox=(slices, size_px, size_px))
    series = make_ct_series(stored)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    volume, spacing, ordered = ct_volume(series)
    timings["assemble_s"] = time.perf_counter() - start
    t = time.perf_counter()
    reply = serve_volume(run_patches, volume, spacing, manifest.raw)
    timings["model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    images = [SourceImage(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                          sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID, rows=int(ds.Rows),
                          columns=int(ds.Columns), frame_of_reference_uid=str(ds.FrameOfReferenceUID))
              for ds in ordered]
    labels = np.asarray(reply["mask"])
    findings = [Finding(model="nodule", model_version=manifest.version, code=Concept(**manifest.raw["finding"]),
                        probability=float(c["probability"]), threshold=float(manifest.threshold),
                        source=images[0], other_sources=tuple(images[1:]), mask=labels == c["label"])
                for c in reply["candidates"]]
    seg = build_segmentation(findings, ordered) if findings else None
    if not findings:
        below = float(np.nextafter(manifest.threshold, 0.0))
        findings = [Finding(model="nodule", model_version=manifest.version, code=Concept(**manifest.raw["finding"]),
                            probability=below, threshold=float(manifest.threshold), source=images[0],
                            other_sources=tuple(images[1:]))]
    build_measurement_report(findings, ordered, algorithm_name="medgate-nodule",
                             algorithm_version=manifest.version, segmentation=seg)
    timings["writers_s"] = time.perf_counter() - t
    total = sum(timings.values())
    return {"slices": slices, "size_px": size_px, "engine": engine.name, "candidates": len(reply["candidates"]),
            **{k: round(v, 3) for k, v in timings.items()}, "total_s": round(total, 3),
            "target_s": CT_TARGET_S, "target_met": total <= CT_TARGET_S}


def training_step(model: str, device: str = "cuda") -> dict[str, Any]:
    """One step, then two, of :func:`training.loop.train` with AMP (on CUDA); the run of two is the figure."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    from training.config import load_task, resolve_config
    from training.loop import train

    task = load_task(model)
    config = resolve_config(task, max_steps=1)
    config["train"]["checkpoint_every"] = 10 ** 9
    start = time.perf_counter()
    data = task.datasets(config)
    data_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as out:
        train(task, config, Path(out) / "one", datasets=data, device=device, progress=False, validate=False)
        sync()
        config["train"]["max_steps"] = 2
        start = time.perf_counter()
        train(task, config, Path(out) / "two", datasets=data, device=device, progress=False, validate=False)
        sync()
        two_s = time.perf_counter() - start
    return {"amp": bool(config["train"].get("amp", True)), "batch_size": config["train"]["batch_size"],
            "datasets_s": round(data_s, 2), "two_steps_s": round(two_s, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per engine and batch sweep")
    parser.add_argument("--ct-slices", type=int, default=300)
    parser.add_argument("--models", default="tb,derm,vitals,nodule")
    args = parser.parse_args(argv)
    registry = ModelRegistry()
    gpu = gpu_visible()
    record: dict[str, Any] = {"gpu": None, "models": {}}
    if gpu:
        import torch

        record["gpu"] = {"name": torch.cuda.get_device_name(0), "torch": torch.__version__,
                         "cuda": torch.version.cuda}
    else:
        record["skipped"] = "no CUDA GPU visible: only the CPU parts ran (engine choice, batch-1 on the CPU)"
        print(record["skipped"])
    for model in args.models.split(","):
        manifest = registry.get(model)
        chosen = create_engine(manifest.folder, manifest.path.name, max_batch_size=64)
        chosen.warmup()
        row: dict[str, Any] = {"version": manifest.version, "chosen_engine": chosen.name,
                               "chosen_device": chosen.device}
        inputs = feed(chosen, 1)
        if inputs is not None:
            row["chosen_batch1_p50_ms"] = round(float(np.median(_timed(lambda: chosen.run(inputs), 1.0))) * 1000, 3)
        if gpu:
            row["engines"] = gpu_engines(manifest.folder, manifest.path.name, args.seconds)
            if (manifest.folder / "model.ts").is_file() and getattr(chosen, "input_shapes", None):
                ceiling = torch_ceiling(manifest.folder / "model.ts", chosen.input_shapes[0][1:], args.seconds)
                row["ceiling"] = ceiling
                for engine_row in row["engines"].values():
                    engine_row.update(against_ceiling(engine_row, ceiling))
            try:
                row["training_step"] = training_step(model)
            except Exception as exc:  # noqa: BLE001
                row["training_step"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        record["models"][model] = row
        print(f"{model}@{manifest.version}: {chosen.name} on {chosen.device}"
              + (f", batch-1 p50 {row['chosen_batch1_p50_ms']} ms" if "chosen_batch1_p50_ms" in row else ""))
    if gpu:
        try:
            record["ct"] = ct_to_seg_and_sr(args.ct_slices)
        except Exception as exc:  # noqa: BLE001
            record["ct"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print("chest CT to SEG + SR:", record["ct"])
    save_figures("gpu_check", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
