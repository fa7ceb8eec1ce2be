"""An int8 engine variant of the ``nodule`` model for CPUs, and its held-out accuracy beside fp32's.

``python -m training.quantize [--version 1.0.0] [--write]``

1. **Calibration** (:func:`calibration_patches`): 64^3 patches of generated CT volumes of the
   *training* split's generator stream (``seed``, split 1; never the test split), half centred on
   a nodule, half anywhere, plus patches of one larger chest volume (air around the patient, chest
   wall, table) so that the activation ranges cover what a whole CT shows the model.
2. **Quantisation** (:func:`quantize`): onnxruntime static quantisation, QDQ format, weights int8
   per output channel, activations int8 (min-max calibration), convolutions only: instance
   normalisation, the upsampling and the sigmoid stay float32, and so does the ``features`` output
   the out-of-distribution guard scores (it is a global average of a float32 Add).
3. **Evaluation** (:func:`evaluate_file`): the task's own evaluation (``NoduleTask.predict_with``
   and ``NoduleTask.evaluate``: lung mask, sliding windows at the card's overlap, candidates, FROC,
   CPM, sensitivity at the card's operating threshold) on the held-out test split of the version's
   training config, once with ``model.onnx`` and once with the int8 file, so that both figures come
   from the same code and data.
4. **Decision** (:func:`decide`): the variant is offered only when its CPM is within
   :data:`CPM_MARGIN` of fp32's, its sensitivity at the operating point within
   :data:`SENSITIVITY_MARGIN`, and it is faster per patch.  ``--write`` records both evaluations,
   the margin, the speeds and the decision per version in ``models/nodule/int8.json``; only an
   offered variant is copied into the version folder (``model.int8.onnx``) and named under
   ``engine_variants.int8`` of its ``metadata.json`` (file, SHA-256, settings), which
   ``serving.variants: {nodule: int8}`` then serves.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Largest CPM (mean sensitivity at 1/8..8 FPs per scan) an engine variant may lose against fp32, absolute.
CPM_MARGIN = 0.02
#: Largest sensitivity at the operating threshold it may lose, absolute (one nodule of the 33 is 0.03).
SENSITIVITY_MARGIN = 0.031
PATCH = (64, 64, 64)


def calibration_patches(seed: int = 0, n_volumes: int = 6, per_volume: int = 4, spacing_mm=(1.25, 0.7, 0.7),
                        window=(-1000.0, 400.0)) -> np.ndarray:
    """``(N, 1, 64, 64, 64)`` float32 windowed patches of generated training-stream volumes."""
    from models.nodule.preprocess import window_hu
    from training.synthetic.ct import generate_ct

    rng = np.random.default_rng([seed, 1, 999])
    patches = []
    shapes = [(64, 96, 96)] * n_volumes + [(72, 320, 320)]
    for index, shape in enumerate(shapes):
        sample = generate_ct(np.random.default_rng([seed, 1, index]), shape, tuple(spacing_mm))
        volume = window_hu(sample.volume_hu, window)
        count = per_volume if index < n_volumes else 4 * per_volume
        for k in range(count):
            if k % 2 == 0 and sample.nodules:
                centre = np.asarray(sample.nodules[k // 2 % len(sample.nodules)].centre_vox)
            else:
                centre = np.array([rng.integers(0, n) for n in shape])
            start = np.clip(np.round(centre).astype(int) - 32, 0, np.asarray(shape) - 64)
            box = tuple(slice(int(a), int(a) + 64) for a in start)
            patches.append(volume[box])
    return np.stack(patches)[:, None].astype(np.float32)


def quantize(source: Path, target: Path, patches: np.ndarray) -> dict[str, Any]:
    """Static QDQ int8 quantisation of ``source`` into ``target``, calibrated on ``patches``; the settings."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"image": patches[i:i + 1]} for i in range(len(patches))])

        def get_next(self):
            return next(self.items, None)

    settings = {"format": "QDQ", "weights": "int8, per output channel", "activations": "int8",
                "calibration": "min-max", "op_types": ["Conv"], "calibration_patches": int(len(patches)),
                "tool": "onnxruntime.quantization.quantize_static"}
    quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=["Conv"])
    return settings


def cpu_threads() -> int:
    """The CPUs this process may run on."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session set as a served replica's (serving.inference.engine_onnx): all
    optimisations, ``threads`` intra-op threads (every CPU by default), sequential, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or cpu_threads())
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def ms_per_patch(path: Path, batch: int = 4, runs: int = 4, threads: int | None = None) -> float:
    """Fastest of ``runs`` batches of ``batch`` random patches, per patch, in milliseconds."""
    sess = session(path, threads)
    x = np.random.default_rng(0).random((batch, 1, *PATCH), dtype=np.float32)
    sess.run(None, {"image": x})
    best = np.inf
    for _ in range(runs):
        start = time.perf_counter()
        sess.run(None, {"image": x})
        best = min(best, time.perf_counter() - start)
    return float(best * 1000 / batch)


def test_dataset(config: dict[str, Any], shift: bool = False):
    """The held-out test split of ``config`` (as :meth:`NoduleTask.datasets` builds it, without generating
    the training split); with ``shift``, the second generator's volumes too."""
    from training.tasks.nodule import VolumeDataset, generate_shift_volumes, generate_volumes

    data, inp, seed = config["data"], config["input"], int(config["seed"])
    test = generate_volumes(int(data["n_test"]), seed, 3, data, inp["window_hu"])
    extra = []
    if shift:
        from training.tasks.nodule import NoduleTask

        extra = generate_shift_volumes(seed, {**NoduleTask().default_config()["shift"], **config.get("shift", {})},
                                       data, inp["window_hu"])
    return VolumeDataset(test + [v for _, v in extra], inp["spacing_mm"], [0] * len(test) + [k for k, _ in extra])


def evaluate_file(path: Path, config: dict[str, Any], operating_point: dict[str, Any], dataset,
                  threads: int | None = None) -> dict[str, Any]:
    """The task's evaluation of the ONNX file ``path`` on ``dataset`` at ``operating_point``, with the
    features of every patch run (for the out-of-distribution guard)."""
    import torch
    from torch.utils.data import DataLoader

    from training.tasks.nodule import NoduleTask

    task = NoduleTask()
    task.configure(config)
    sess = session(path, threads)
    features: list[np.ndarray] = []

    def run(patches: torch.Tensor) -> torch.Tensor:
        probability, feats = sess.run(["probability", "features"],
                                      {"image": np.ascontiguousarray(patches.numpy(), dtype=np.float32)})
        features.append(feats)
        return torch.from_numpy(probability)

    parts: dict[str, list[np.ndarray]] = {}
    start = time.perf_counter()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=1, shuffle=False):
            for key, value in task.predict_with(run, batch).items():
                parts.setdefault(key, []).append(np.asarray(value))
    seconds = time.perf_counter() - start
    predictions = {key: np.concatenate(values) for key, values in parts.items()}
    evaluation = task.evaluate(predictions, config, operating_point)
    return {"metrics": evaluation.metrics, "seconds": round(seconds, 1),
            "features": np.concatenate(features) if features else np.zeros((0, 64), np.float32)}


def decide(fp32: dict[str, Any], int8: dict[str, Any], fp32_ms: float, int8_ms: float) -> dict[str, Any]:
    """Whether the int8 variant may be offered: within both margins and faster."""
    cpm_delta = float(int8["cpm"]) - float(fp32["cpm"])
    sens_delta = float(int8["sensitivity"]) - float(fp32["sensitivity"])
    within = cpm_delta >= -CPM_MARGIN and sens_delta >= -SENSITIVITY_MARGIN
    faster = int8_ms < fp32_ms
    return {"cpm_margin": CPM_MARGIN, "sensitivity_margin": SENSITIVITY_MARGIN,
            "cpm_delta": round(cpm_delta, 4), "sensitivity_delta": round(sens_delta, 4),
            "ms_per_patch": {"fp32": round(fp32_ms, 1), "int8": round(int8_ms, 1)},
            "within_margin": bool(within), "faster": bool(faster), "offered": bool(within and faster)}


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_scans", "n_nodules", "cpm", "froc", "sensitivity", "fp_per_scan", "sensitivity_ge8mm",
            "sensitivity_lt8mm", "diameter_abs_error_mm", "dice")
    return {k: metrics[k] for k in keys if k in metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=None, help="nodule version (latest by default)")
    parser.add_argument("--write", action="store_true", help="save the variant (or the rejection) in the version")
    parser.add_argument("--shift", action="store_true", help="evaluate the second generator's volumes too (slow)")
    parser.add_argument("--out", type=Path, default=Path("runs/nodule/int8"))
    args = parser.parse_args(argv)

    import platform

    import onnxruntime as ort
    import torch

    from models.registry import ModelRegistry, file_sha256

    manifest = ModelRegistry().get("nodule", args.version)
    manifest.verify()
    state = torch.load(manifest.folder / manifest.raw.get("weights_file", "model.pt"), map_location="cpu",
                       weights_only=False)
    config = state["config"]
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "model.int8.onnx"
    t0 = time.perf_counter()
    patches = calibration_patches(int(config["seed"]))
    settings = quantize(manifest.path, target, patches)
    print(f"quantised in {time.perf_counter() - t0:.0f} s on {len(patches)} patches", flush=True)
    fp32_ms, int8_ms = ms_per_patch(manifest.path), ms_per_patch(target)
    print(f"ms per patch: fp32 {fp32_ms:.1f}, int8 {int8_ms:.1f}", flush=True)
    dataset = test_dataset(config, shift=args.shift)
    results = {}
    for name, path in (("fp32", manifest.path), ("int8", target)):
        results[name] = evaluate_file(path, config, manifest.operating_point, dataset)
        print(name, json.dumps(_brief(results[name]["metrics"])), f"{results[name]['seconds']} s", flush=True)
    decision = decide(results["fp32"]["metrics"], results["int8"]["metrics"], fp32_ms, int8_ms)
    f32, i8 = results["fp32"]["features"], results["int8"]["features"]
    decision["features_max_abs_difference"] = float(np.max(np.abs(f32 - i8))) if f32.shape == i8.shape else None
    print(json.dumps(decision), flush=True)
    record = {"file": target.name, "sha256": file_sha256(target), "quantization": settings,
              "threads": "serving.intra_op_threads", "split": "test", "seed": int(config["seed"]),
              "evaluation": {"fp32": _brief(results["fp32"]["metrics"]), "int8": _brief(results["int8"]["metrics"])},
              "decision": decision, "command": "python -m training.quantize --write",
              "machine": f"{platform.machine()}, {cpu_threads()} CPUs, onnxruntime {ort.__version__}"}
    (args.out / "variant.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.write:
        records_path = manifest.folder.parent / "int8.json"
        records = json.loads(records_path.read_text(encoding="utf-8")) if records_path.is_file() else {}
        # a rejected variant's file is not kept: its name and hash would point at nothing
        records[manifest.version] = {k: v for k, v in record.items()
                                     if decision["offered"] or k not in ("file", "sha256")}
        records_path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
        print(f"recorded in {records_path}")
        if decision["offered"]:  # only then does the version folder gain the file and its metadata entry
            (manifest.folder / target.name).write_bytes(target.read_bytes())
            meta_path = manifest.folder / "metadata.json"
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            meta.setdefault("engine_variants", {})["int8"] = {k: record[k] for k in ("file", "sha256", "quantization")}
            meta_path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"offered: engine_variants.int8 in {meta_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
