"""The monitoring reference of a registered model version, made on its held-out generated data.

:func:`attach` writes ``reference.json`` (:mod:`models.reference`) into a version folder: the
score histogram and the input features' histograms of the task's held-out ``test`` split, as the
server will see them:

* an image model (``tb``, ``derm``): the registered ONNX file is run under onnxruntime's CPU
  provider on the split's model inputs; the score is the output ``probability`` (a single-finding
  model) or the probability of the class with an operating point (``<class>_threshold``, derm's
  ``mel``), as :func:`serving.imaging.findings.class_finding` reports it; the features are
  :func:`models.reference.image_features` of each input, the source size being the generator's
  ``data.source_size_px``;
* a volume model (``nodule``): the task's own prediction over the split's scans (the registered
  ``model.pt``, sliding windows); the score is a scan's largest candidate probability (0 with no
  candidate), the features :func:`models.reference.volume_features` of each scan as generated.
  The task's shifted scans (other scanners, kept in its test split for the shift measure) are left
  out: the reference is the distribution the model was trained for.

``medgate train`` calls it for every newly registered version (:func:`training.cli.register`);
``python -m training.reference tb@1.1.0`` makes it for a version registered before (its data
regenerated from the ``training.config`` in its metadata, or the task's default config).
"""
from __future__ import annotations

import argparse
import json
import time
from importlib import import_module
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch.utils.data import Subset

from models.reference import (SCORE_EDGES, Distribution, ModelReference, decile_edges, image_features,
                              volume_features)
from models.registry import DEFAULT_ROOT, ModelManifest, ModelRegistry
from models.spec import InputKind

#: Items per onnxruntime call.
BATCH = 64
#: Split the reference is made on.
SPLIT = "test"


def applies(manifest: ModelManifest) -> bool:
    """Whether a reference is made for the version: an image or volume model with a serving spec."""
    try:
        return manifest.serving.input in (InputKind.IMAGE, InputKind.VOLUME)
    except (FileNotFoundError, KeyError, ValueError):  # no serving.json: nothing is served, nothing monitored
        return False


def _threshold_and_column(manifest: ModelManifest) -> tuple[float, int | None]:
    """The operating threshold, and the class column scored for a multi-class model (else None)."""
    operating = manifest.operating_point
    if "threshold" in operating:
        return float(operating["threshold"]), None
    names = [c["name"] if isinstance(c, dict) else str(c) for c in manifest.raw.get("classes") or []]
    for column, name in enumerate(names):
        if f"{name}_threshold" in operating:
            return float(operating[f"{name}_threshold"]), column
    raise ValueError(f"{manifest.name} {manifest.version}: no `threshold` or `<class>_threshold` in the "
                     f"operating point {sorted(operating)}")


def onnx_scores(manifest: ModelManifest, inputs: np.ndarray) -> np.ndarray:
    """The version's score of each input ``(N, C, H, W)`` (see the module docstring)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(manifest.folder / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    output = "probability" if "probability" in outputs else "probabilities"
    _, column = _threshold_and_column(manifest)
    parts = [session.run([output], {name: inputs[i:i + BATCH]})[0] for i in range(0, len(inputs), BATCH)]
    scores = np.concatenate(parts).astype(np.float64)
    return scores.reshape(len(inputs), -1)[:, 0] if column is None else scores[:, column]


def image_inputs(dataset, input_name: str = "image") -> np.ndarray:
    """The model inputs ``(N, C, H, W)`` float32 of a task's dataset split."""
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return tensors[input_name].numpy().astype(np.float32)
    return np.stack([np.asarray(dataset[i][input_name], np.float32) for i in range(len(dataset))])


def volume_scores_and_features(task, manifest: ModelManifest, dataset) -> tuple[np.ndarray, list[dict]]:
    """Each in-distribution scan's largest candidate probability and its features (the task's
    shifted scans, ``source`` other than 0, are not predicted)."""
    from training.evaluate import load_weights, predict_split

    network, _ = load_weights(task, manifest.folder / "model.pt")
    own = Subset(dataset, [i for i in range(len(dataset)) if int(dataset[i].get("source", 0)) == 0])
    predictions = predict_split(task, network, own, batch_size=1)
    scores, features = [], []
    for item, candidates in zip(own, predictions["candidates"]):
        valid = candidates[candidates[:, 5] > 0]
        scores.append(float(valid[:, 4].max()) if len(valid) else 0.0)
        extent = tuple(slice(0, int(n)) for n in np.asarray(item["shape"]))  # the scan without its padding
        features.append(volume_features(np.asarray(item["volume"])[0][extent]))
    return np.asarray(scores), features


def build(manifest: ModelManifest, scores: Sequence[float], features: Sequence[dict[str, float]],
          data: str) -> ModelReference:
    """The reference of ``scores`` and per-item ``features`` (see :mod:`models.reference`)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0 or len(scores) != len(features):
        raise ValueError(f"`scores` and `features` must describe the same items (at least one), "
                         f"{len(scores)} scores and {len(features)} feature rows are given.")
    threshold, _ = _threshold_and_column(manifest)
    inputs = {}
    for name in features[0]:
        values = [f[name] for f in features]
        inputs[name] = Distribution.of(values, decile_edges(values))
    return ModelReference(model=manifest.name, version=manifest.version,
                          made_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          made_by="training/reference.py", data=data, n=len(scores), threshold=threshold,
                          positive_rate=round(float(np.mean(scores >= threshold)), 6),
                          score=Distribution.of(scores, SCORE_EDGES), inputs=inputs)


def attach(manifest: ModelManifest, task, datasets, config: dict[str, Any], data: str | None = None) -> ModelReference:
    """Make and write the version's ``reference.json`` from the ``test`` split of ``datasets``."""
    dataset = datasets[SPLIT]
    if manifest.serving.input is InputKind.VOLUME:
        scores, features = volume_scores_and_features(task, manifest, dataset)
    else:
        inputs = image_inputs(dataset)
        size = int(config["data"].get("source_size_px") or inputs.shape[-1])
        scores, features = onnx_scores(manifest, inputs), [image_features(x, size) for x in inputs]
    data = data or (f"{len(scores)} items of the held-out '{SPLIT}' split ({len(dataset)} items) generated by "
                    f"training.tasks.{task.name} with seed {config.get('seed')}, data config "
                    f"{json.dumps(config.get('data'))}")
    reference = build(manifest, scores, features, data)
    reference.write(manifest.folder)
    return reference


def _config_of(task, manifest: ModelManifest) -> dict[str, Any]:
    config = (manifest.raw.get("training") or {}).get("config")
    return config if isinstance(config, dict) and config.get("data") else task.default_config()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.reference", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="NAME@VERSION of registered versions, e.g. tb@1.1.0")
    parser.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--n-test", type=int, default=None,
                        help="generate this many held-out items instead of the config's n_test (faster)")
    args = parser.parse_args(argv)
    for reference_name in args.models:
        manifest = ModelRegistry(args.registry).get(reference_name)
        task = import_module(f"training.tasks.{manifest.name}").TASK
        config = _config_of(task, manifest)
        if args.n_test:
            config = {**config, "data": {**config["data"], "n_test": int(args.n_test)}}
        reference = attach(manifest, task, task.datasets(config), config)
        print(f"{manifest.name}@{manifest.version}: reference of {reference.n} held-out items, positive rate "
              f"{reference.positive_rate:.3f}, inputs {sorted(reference.inputs)} -> {manifest.folder / 'reference.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
