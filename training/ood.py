"""The out-of-distribution statistic of a registered image model version, fitted on its generated data.

:func:`attach` gives a version folder what :mod:`models.ood` reads at serving time:

1. the ONNX file gains the output ``features``: the input of the network's final classifier layer
   (the first input of its last ``Gemm``/``MatMul`` node, the penultimate-layer features), or the
   pooled layer the model folder's ``ood_features.json`` names (:func:`models.ood.feature_layer`),
   by one ``Flatten`` node; the existing outputs are checked to stay bit-identical on real inputs
   under onnxruntime's CPU provider, else nothing is written;
2. one Gaussian per class with a shared, Ledoit-Wolf-shrunk covariance is fitted to the features of
   the training split (:func:`fit`);
3. the threshold is the ``1 - rate`` quantile of the scores of the validation split (held out from
   fitting), and the held-out test split's flagged share is recorded beside it;
4. the TorchScript export (``model.ts``, for the torch engine) is traced again from the weights with
   ``features`` as its last output, its existing outputs checked bit-identical too
   (:func:`retrace_with_features`);
5. ``ood.json`` is written, and ``metadata.json`` gets the new ``sha256`` of the ONNX file (and
   ``torchscript_sha256``), the ``features`` output in ``network_data_format.outputs`` and an
   ``ood`` summary.

``medgate train`` calls it for every newly registered image classifier (:func:`training.cli.register`);
``python -m training.ood tb@1.1.0`` adds it to a version registered before (its data regenerated
from the ``training.config`` in its metadata, or the task's default config when it has none).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from models.ood import (CLASS_MAHALANOBIS, FEATURE_OUTPUT, OOD_ARRAYS, OOD_FILE, FeatureStatistic, feature_layer,
                        float32_exact, write_statistic)
from models.registry import DEFAULT_ROOT, METADATA_NAME, ModelManifest, ModelRegistry, file_sha256
from models.spec import InputKind, ReplyFormat
from training.evaluate import load_weights
from training.torchscript import TORCHSCRIPT_NAME, save_torchscript

#: The share of in-distribution inputs the threshold may flag (set on the validation split).
FALSE_FLAG_RATE = 0.05
#: ``pool`` of a model folder's ``ood_features.json``: its layer averaged over the spatial axes.
POOL_GLOBAL_AVERAGE = "global_average"
#: Items per onnxruntime call while extracting features.
BATCH = 64
METHOD = ("Mahalanobis distance of the penultimate-layer features (the input of the final classifier layer, "
          "ONNX output `features`) to the nearest class mean; one Gaussian per class with a shared covariance "
          "fitted on the training split and shrunk towards a scaled identity (Ledoit-Wolf); threshold = the "
          "(1 - false_flag_rate) quantile of the validation split's scores; computed by training/ood.py")


class FeatureOutputError(RuntimeError):
    """The ONNX model has no classifier layer to tap, or tapping it changed an existing output."""


def shrunk_covariance(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf covariance of rows already centred (per class), and the shrinkage used."""
    x = np.asarray(centred, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"`centred` must hold at least 2 rows, {n} is given.")
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta2 = np.sum((s - mu * np.eye(d)) ** 2)
    norms = np.einsum("nd,nd->n", x, x)
    beta2 = (np.sum(norms ** 2) - 2 * np.einsum("nd,de,ne->", x, s, x) + n * np.sum(s ** 2)) / n ** 2
    shrinkage = 0.0 if delta2 == 0 else float(min(max(beta2, 0.0), delta2) / delta2)
    return shrinkage * mu * np.eye(d) + (1 - shrinkage) * s, shrinkage


def fit(features: np.ndarray, labels: np.ndarray, classes: Iterable[str], *, calibration: np.ndarray,
        rate: float = FALSE_FLAG_RATE, unit: str = "image") -> FeatureStatistic:
    """The class-conditional statistic of ``features`` ``(N, d)`` with integer ``labels`` (indices of
    ``classes``), its threshold the ``1 - rate`` quantile of the scores of ``calibration`` ``(M, d)``.

    Raises
    ------
    ValueError
        ``features`` and ``labels`` differ in length, a label names no class, a class has fewer
        than 2 rows, or ``rate`` is outside (0, 1).
    """
    f, y, names = np.asarray(features, np.float64), np.asarray(labels).astype(int), list(classes)
    if len(f) != len(y):
        raise ValueError(f"`labels` must have one entry per feature row ({len(f)}), {len(y)} are given.")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"`rate` must be within (0, 1), {rate!r} is given.")
    if y.size and (y.min() < 0 or y.max() >= len(names)):
        raise ValueError(f"`labels` must index the classes {names}, values {sorted(set(y.tolist()))} are given.")
    counts = np.bincount(y, minlength=len(names))
    if (counts < 2).any():
        raise ValueError(f"every class needs at least 2 rows, counts {dict(zip(names, counts.tolist()))} are given.")
    means = np.stack([f[y == c].mean(axis=0) for c in range(len(names))])
    covariance, shrinkage = shrunk_covariance(f - means[y])
    # scored as stored (float32, models.ood.write_statistic), so the threshold is exact for the file
    means, whitening = float32_exact(means), float32_exact(np.linalg.cholesky(np.linalg.inv(covariance)))
    provisional = FeatureStatistic(means, whitening, 1.0, rate, tuple(names), unit)
    calibration_scores = provisional.scores(calibration)
    threshold = float(np.quantile(calibration_scores, 1 - rate))
    raw = {"method": METHOD, "shrinkage": round(shrinkage, 6),
           "fit": {"n": int(len(f)), "per_class": dict(zip(names, counts.tolist())),
                   "score_quantiles": _quantiles(provisional.scores(f))},
           "calibration": {"n": int(len(calibration_scores)), "flagged": _share(calibration_scores, threshold),
                           "score_quantiles": _quantiles(calibration_scores)}}
    return FeatureStatistic(means, whitening, threshold, rate, tuple(names), unit, raw=raw)


def _quantiles(scores: np.ndarray) -> dict[str, float]:
    qs = np.quantile(scores, [0.5, 0.9, 0.95, 0.99, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("p50", "p90", "p95", "p99", "max"), qs)}


def _share(scores: np.ndarray, threshold: float) -> float:
    return round(float(np.mean(np.asarray(scores) > threshold)), 4)


def add_feature_output(model_bytes: bytes, output: str = FEATURE_OUTPUT,
                       tensor: str | None = None, pool: bool = False) -> tuple[bytes, str, int]:
    """``model_bytes`` with ``tensor`` (by default the input of the classifier layer: the first input
    of the last ``Gemm``/``MatMul`` with initializer weights), flattened to ``(N, width)``, as the
    extra output ``output``; returns the new bytes, the tapped tensor's name and ``width`` (already
    present: the model unchanged).  With ``pool`` the tensor ``(N, C, *spatial)`` is first averaged
    over its spatial axes by one ``GlobalAveragePool`` node (``width`` = ``C``): a volume model's
    encoder activations, one vector per patch.

    Raises
    ------
    FeatureOutputError
        No ``tensor`` is given and the graph has no classifier layer, or the tensor named is not
        in the graph or has no static width.
    """
    import onnx
    from onnx import TensorProto, helper, shape_inference

    model = onnx.load_from_string(model_bytes)
    nodes = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name: o for o in model.graph.output}
    if output in outputs:
        tapped = nodes[output].input[0]
        pooling = nodes.get(tapped)
        tapped = pooling.input[0] if pooling is not None and pooling.name == "ood_pool" else tapped
        return model_bytes, tapped, int(outputs[output].type.tensor_type.shape.dim[1].dim_value)
    if tensor is None:
        weights = {i.name for i in model.graph.initializer}
        layers = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and n.input[1] in weights]
        if not layers:
            raise FeatureOutputError("the ONNX graph has no Gemm/MatMul classifier layer with initializer weights.")
        tensor = layers[-1].input[0]
    elif tensor not in nodes:
        raise FeatureOutputError(f"`tensor` must be a tensor of the ONNX graph, {tensor!r} is given.")
    shapes = {v.name: v.type.tensor_type.shape.dim for v in shape_inference.infer_shapes(model).graph.value_info}
    dims = [d.dim_value for d in shapes.get(tensor, [])[1:]]
    if not dims or not all(dims):
        raise FeatureOutputError(f"tensor {tensor!r} has no static width (dims {dims}).")
    width, flattened = int(np.prod(dims)), tensor
    if pool:
        width, flattened = int(dims[0]), f"{tensor}_ood_pooled"
        model.graph.node.append(helper.make_node("GlobalAveragePool", [tensor], [flattened], name="ood_pool"))
    model.graph.node.append(helper.make_node("Flatten", [flattened], [output], name="ood_features", axis=1))
    model.graph.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width]))
    onnx.checker.check_model(model)
    return model.SerializeToString(), tensor, width


def check_unchanged(before: bytes, after: bytes, batches: Iterable[np.ndarray]) -> int:
    """Raise :class:`FeatureOutputError` unless every output of ``before`` is bit-identical in
    ``after`` on each input batch (onnxruntime CPU provider); returns the number of items compared."""
    old, new = _session(before), _session(after)
    name, outputs, n = old.get_inputs()[0].name, [o.name for o in old.get_outputs()], 0
    for batch in batches:
        for out, a, b in zip(outputs, old.run(outputs, {name: batch}), new.run(outputs, {name: batch})):
            if not np.array_equal(a, b):
                raise FeatureOutputError(f"adding the `{FEATURE_OUTPUT}` output changed output {out!r} "
                                         f"(largest difference {np.abs(a - b).max():.3g}).")
        n += len(batch)
    return n


def _session(model_bytes: bytes):
    import onnxruntime as ort

    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def split_arrays(dataset, input_name: str) -> tuple[np.ndarray, np.ndarray]:
    """The inputs ``(N, ...)`` float32 and integer ``label`` of a task's dataset split."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[input_name].numpy().astype(np.float32), tensors["label"].numpy().astype(int)
    items = [dataset[i] for i in range(len(dataset))]
    return (np.stack([np.asarray(it[input_name], np.float32) for it in items]),
            np.asarray([int(np.asarray(it["label"])) for it in items]))


def features_of(model_bytes: bytes, inputs: np.ndarray, output: str = FEATURE_OUTPUT) -> np.ndarray:
    """The ``output`` features of ``inputs``, run in batches of :data:`BATCH`."""
    session = _session(model_bytes)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run([output], {name: inputs[i:i + BATCH]})[0]
                           for i in range(0, len(inputs), BATCH)])


def class_names(manifest: ModelManifest) -> list[str]:
    """Names of the classes the labels index: a multi-class model's own, else absent / present."""
    if manifest.classes:
        return [str(c.get("name", c.get("meaning"))) for c in manifest.raw["classes"]]
    return ["absent", "present"]


def attach(manifest: ModelManifest, task, datasets: dict[str, Any], rate: float = FALSE_FLAG_RATE,
           source: str = "the training run's generated data") -> FeatureStatistic:
    """Tap the features of ``manifest``'s ONNX file, fit the statistic on ``datasets["train"]``,
    set its threshold on ``datasets["val"]``, measure it on ``datasets["test"]`` and write it into
    the version folder (see the module docstring)."""
    folder, before = manifest.folder, manifest.path.read_bytes()
    layer = feature_layer(folder.parent) or {}
    after, tapped, width = add_feature_output(before, tensor=layer.get("onnx_tensor"),
                                              pool=layer.get("pool") == POOL_GLOBAL_AVERAGE)
    arrays = {split: split_arrays(datasets[split], manifest.input_name) for split in ("train", "val", "test")}
    compared = check_unchanged(before, after, [arrays["val"][0][i:i + BATCH]
                                               for i in range(0, len(arrays["val"][0]), BATCH)])
    feats = {split: features_of(after, x) for split, (x, _) in arrays.items()}
    statistic = fit(feats["train"], arrays["train"][1], class_names(manifest), calibration=feats["val"], rate=rate)
    test_scores = statistic.scores(feats["test"])
    raw = {**statistic.raw, "created": date.today().isoformat(), "data": source, "feature_tensor": tapped,
           "feature_layer": layer.get("name", "the input of the classifier layer (penultimate-layer features)"),
           **({"feature_layer_why": layer["why"]} if "why" in layer else {}),
           "outputs_unchanged": {"items_compared": compared, "provider": "CPUExecutionProvider",
                                 "bit_identical": True},
           "fit": {**statistic.raw["fit"], "split": "train"},
           "calibration": {**statistic.raw["calibration"], "split": "val"},
           "heldout": {"split": "test", "n": int(len(test_scores)), "flagged": _share(test_scores, statistic.threshold),
                       "score_quantiles": _quantiles(test_scores)}}
    statistic = FeatureStatistic(statistic.means, statistic.whitening, statistic.threshold, rate,
                                 statistic.classes, statistic.unit, raw=raw)
    return install(manifest, task, statistic, after, width, arrays["val"][0][:BATCH], layer)


def install(manifest: ModelManifest, task, statistic: FeatureStatistic, tapped_onnx: bytes, width: int,
            trace_batch: np.ndarray, layer: dict[str, str]) -> FeatureStatistic:
    """Write a fitted ``statistic`` into ``manifest``'s version folder: the TorchScript export traced
    again (checked on ``trace_batch``), the tapped ONNX file, ``ood.json`` + ``ood.npz``, and the
    new hashes, ``features`` output and ``ood`` summary in ``metadata.json``."""
    folder, raw = manifest.folder, statistic.raw
    traced = retrace_with_features(manifest, task, trace_batch, tapped_onnx, layer.get("module"),
                                   layer.get("pool") == POOL_GLOBAL_AVERAGE)
    _write(folder / manifest.path.name, tapped_onnx)
    if traced is not None:
        raw["outputs_unchanged"]["torchscript_items_compared"] = traced
    write_statistic(folder, statistic)
    metadata = json.loads((folder / METADATA_NAME).read_text(encoding="utf-8"))
    metadata["sha256"] = file_sha256(folder / manifest.path.name)
    if traced is not None:
        metadata["torchscript_sha256"] = file_sha256(folder / TORCHSCRIPT_NAME)
    metadata["network_data_format"]["outputs"][FEATURE_OUTPUT] = {
        "type": "features", "shape": [None, width], "dtype": "float32",
        "meaning": f"features of ONNX tensor {raw['feature_tensor']} ({raw['feature_layer']}), scored by "
                   f"{OOD_FILE} for inputs outside the training distribution"}
    metadata["ood"] = {"file": OOD_FILE, "arrays": OOD_ARRAYS, "statistic": CLASS_MAHALANOBIS,
                       "false_flag_rate": statistic.false_flag_rate, "threshold": round(statistic.threshold, 4),
                       "heldout_flagged": raw["heldout"]["flagged"]}
    _write(folder / METADATA_NAME, (json.dumps(metadata, indent=2, ensure_ascii=False) + "\n").encode())
    return statistic


class _FeatureTap(nn.Module):
    """``module``'s outputs and, last, the features the ONNX output of :func:`add_feature_output`
    gives: the output of submodule ``layer`` flattened, or by default the input of the last
    ``nn.Linear`` (the classifier); for the TorchScript export."""

    def __init__(self, module: nn.Module, layer: str | None = None, pool: bool = False) -> None:
        super().__init__()
        self.module = module
        self._seen: list[torch.Tensor] = []
        if layer is not None:
            tap = (lambda out: out.flatten(2).mean(dim=2)) if pool else (lambda out: out.flatten(1))
            module.get_submodule(layer).register_forward_hook(lambda _m, _i, out: self._seen.append(tap(out)))
            return
        layers = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if not layers:
            raise FeatureOutputError(f"{type(module).__name__} has no nn.Linear classifier layer.")
        layers[-1].register_forward_hook(lambda _m, inputs, _out: self._seen.append(inputs[0]))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._seen.clear()
        out = self.module(*inputs)
        return (*(out if isinstance(out, tuple) else (out,)), self._seen[-1])


def retrace_with_features(manifest: ModelManifest, task, batch: np.ndarray, tapped_onnx: bytes,
                          layer: str | None = None, pool: bool = False) -> int | None:
    """Trace the version's TorchScript export again from its weights (``model.pt``) with the
    ``features`` output last (of submodule ``layer``, averaged over its spatial axes with ``pool``,
    by default the classifier's input), so the
    torch engine gives what ``tapped_onnx`` gives; the existing outputs are checked bit-identical to
    the current file's on ``batch``.  Returns the number of items compared, or None when the
    version has no TorchScript export or no weights.

    Raises
    ------
    FeatureOutputError
        An existing output changed, or the features differ from the ONNX file's.
    """
    folder = manifest.folder
    path, weights = folder / TORCHSCRIPT_NAME, folder / str(manifest.raw.get("weights_file", "model.pt"))
    if not (path.is_file() and weights.is_file()):
        return None
    extra = {"output_names": ""}
    old = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
    names = extra["output_names"].decode().split(",")
    if FEATURE_OUTPUT in names:
        return None
    network, config = load_weights(task, weights)
    temperature = manifest.operating_point.get("temperature")  # a calibrated classifier's fitted value
    if temperature is not None:
        config = {**config, "calibration": {**config.get("calibration", {}), "temperature": float(temperature)}}
    spec = task.export_spec(network, config)
    spec = replace(spec, module=_FeatureTap(spec.module, layer, pool), output_names=[*spec.output_names, FEATURE_OUTPUT])
    partial = path.with_name(f".{path.name}.partial")
    save_torchscript(spec, partial)
    new = torch.jit.load(str(partial), map_location="cpu").eval()
    x = torch.from_numpy(np.ascontiguousarray(batch))
    with torch.no_grad():
        before, after = old(x), new(x)
    before = before if isinstance(before, tuple) else (before,)
    onnx_features = features_of(tapped_onnx, batch)
    problems = [f"output {n!r} changed" for n, a, b in zip(names, before, after) if not torch.equal(a, b)]
    error = float(np.abs(after[-1].numpy() - onnx_features).max() / max(np.abs(onnx_features).max(), 1e-3))
    if error > 1e-4:
        problems.append(f"its features differ from the ONNX file's by relative error {error:.2e}")
    if problems:
        partial.unlink()
        raise FeatureOutputError(f"the TorchScript export of {manifest.name} {manifest.version} with features: "
                                 + "; ".join(problems) + ".")
    os.replace(partial, path)
    return len(batch)


def applies(manifest: ModelManifest) -> bool:
    """Whether :func:`attach` fits ``manifest``'s version: a model whose serving spec reads single
    images (:class:`models.spec.InputKind` ``image``) and classifies them (the labels index its
    finding's absence / presence or its classes)."""
    try:
        spec = manifest.serving
    except (FileNotFoundError, ValueError):
        return False
    return spec.input is InputKind.IMAGE and spec.reply in (ReplyFormat.FINDING, ReplyFormat.CLASSES)


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _config_of(task, manifest: ModelManifest) -> dict[str, Any]:
    config = (manifest.raw.get("training") or {}).get("config")
    return config if isinstance(config, dict) and config.get("data") else task.default_config()


def main(argv: list[str] | None = None) -> int:
    from importlib import import_module

    parser = argparse.ArgumentParser(prog="python -m training.ood", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="NAME@VERSION of a registered image classifier, e.g. tb@1.1.0")
    parser.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--rate", type=float, default=FALSE_FLAG_RATE, help="false-flag rate on held-out data")
    args = parser.parse_args(argv)
    manifest = ModelRegistry(args.registry).get(args.model)
    task = import_module(f"training.tasks.{manifest.name}").TASK
    config = _config_of(task, manifest)
    statistic = attach(manifest, task, task.datasets(config), args.rate,
                       f"generated by `training.tasks.{manifest.name}` with seed {config.get('seed')} "
                       f"(data config {json.dumps(config.get('data'))})")
    print(json.dumps({k: statistic.raw[k] for k in ("fit", "calibration", "heldout")} |
                     {"threshold": statistic.threshold}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
