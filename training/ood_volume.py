"""The out-of-distribution statistic of a registered volume model (``nodule``), fitted on generated CT.

A volume model is run patch by patch over the search region of a CT (the lungs' bounding box,
:func:`models.nodule.inference.segment_volume`); its model folder's ``ood_features.json`` names an
encoder layer, averaged over its spatial axes (``"pool": "global_average"``), which
:func:`training.ood.add_feature_output` exports as the ONNX output ``features``: one vector per patch.

:func:`attach_volume`

1. runs the version's own serving entry (``serve_volume`` of its serving spec) on generated chest
   CTs (:func:`training.synthetic.ct.generate_ct`, the training generator and seed streams), keeping
   the features of exactly the patches the serving path runs;
2. fits one Gaussian (class ``chest_ct``) with a Ledoit-Wolf-shrunk covariance to the patches of
   the training volumes (:func:`training.ood.fit`, unit ``patch``);
3. scores a VOLUME by its largest patch score (:data:`AGGREGATE`; a volume with no patch run, no
   lung found, scores infinity) and sets the threshold at the ``1 - rate`` quantile of the volume
   scores of the validation volumes; the test volumes' flagged share is recorded beside it;
4. installs it like an image model's (:func:`training.ood.install`).

``python -m training.ood_volume nodule@1.0.0``.
"""
from __future__ import annotations

import argparse
import json
from datetime import date
from importlib import import_module
from pathlib import Path
from typing import Any, Callable

import numpy as np

from models.ood import FeatureStatistic, feature_layer
from models.registry import DEFAULT_ROOT, ModelManifest, ModelRegistry
from training.ood import (FALSE_FLAG_RATE, POOL_GLOBAL_AVERAGE, _quantiles, _session, _share, add_feature_output,
                          check_unchanged, fit, install)

#: How the patch scores of one volume make the volume's score.
AGGREGATE = "max"
#: The one class of the statistic: patches of generated chest CTs.
CLASSES = ("chest_ct",)
#: Generated volumes per split (seed streams 1, 2, 3 of training.tasks.nodule: train, val, test).
VOLUMES = {"train": 96, "val": 160, "test": 120}
SPLITS = {"train": 1, "val": 2, "test": 3}
#: Patches compared bit for bit between the ONNX file before and after the tap.
COMPARED_PATCHES = 16


def volume_score(statistic: FeatureStatistic, features: np.ndarray) -> float:
    """The score of one volume: the largest score of its patches' ``features`` ``(P, d)``; infinity
    when no patch was run (no search region found)."""
    f = np.asarray(features, dtype=np.float64).reshape(-1, statistic.dim)
    return float(statistic.scores(f).max()) if len(f) else float("inf")


class PatchRecorder:
    """A ``run_patches`` callable for a volume model's serving entry that runs the tapped ONNX file
    and keeps every patch's input (the first :data:`COMPARED_PATCHES`) and features."""

    def __init__(self, model_bytes: bytes, output: str, features: str) -> None:
        self.session, self.output, self.features_name = _session(model_bytes), output, features
        self.input = self.session.get_inputs()[0].name
        self.features: list[np.ndarray] = []
        self.patches: list[np.ndarray] = []

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        patches = np.ascontiguousarray(patches, dtype=np.float32)
        out, feats = self.session.run([self.output, self.features_name], {self.input: patches})
        self.features.append(feats)
        if sum(len(p) for p in self.patches) < COMPARED_PATCHES:
            self.patches.append(patches)
        return out

    def take(self) -> np.ndarray:
        """The features recorded since the last call ``(P, d)``."""
        feats = np.concatenate(self.features) if self.features else np.zeros((0, 0), np.float32)
        self.features = []
        return feats


def volume_features(manifest: ModelManifest, recorder: PatchRecorder, serve_volume: Callable[..., dict],
                    split: str, n: int, seed: int) -> list[np.ndarray]:
    """Features ``(P_i, d)`` of the patches the serving entry runs on each of ``n`` generated volumes
    of ``split`` (each volume depends only on (seed, split, index), as in training)."""
    from training.synthetic.ct import generate_ct

    config = manifest.raw["training"]["config"]["data"]
    shape, spacing = tuple(config["shape_vox"]), tuple(config["spacing_mm"])
    out = []
    for i in range(n):
        sample = generate_ct(np.random.default_rng([seed, SPLITS[split], i]), shape, spacing)
        serve_volume(recorder, sample.volume_hu, spacing, manifest.raw)
        out.append(recorder.take())
    return out


def attach_volume(manifest: ModelManifest, task, rate: float = FALSE_FLAG_RATE,
                  volumes: dict[str, int] | None = None) -> FeatureStatistic:
    """Tap, fit, calibrate per volume and install the statistic of ``manifest``'s volume model
    (see the module docstring).

    Raises
    ------
    ValueError
        The model folder's ``ood_features.json`` is missing or does not ask for a pooled layer.
    """
    counts = {**VOLUMES, **(volumes or {})}
    layer = feature_layer(manifest.folder.parent)
    if layer is None or layer.get("pool") != POOL_GLOBAL_AVERAGE:
        raise ValueError(f"{manifest.folder.parent} must name a layer pooled by {POOL_GLOBAL_AVERAGE!r} in "
                         f"ood_features.json, {layer!r} is given.")
    before = manifest.path.read_bytes()
    after, tapped, width = add_feature_output(before, tensor=layer["onnx_tensor"], pool=True)
    seed = int(manifest.raw["training"]["config"]["seed"])
    recorder = PatchRecorder(after, next(iter(manifest.raw["network_data_format"]["outputs"])), "features")
    serve_volume = manifest.serving.function("entry")
    feats = {split: volume_features(manifest, recorder, serve_volume, split, counts[split], seed)
             for split in ("train", "val", "test")}
    compared = check_unchanged(before, after, recorder.patches)
    train = np.concatenate(feats["train"])
    patches = fit(train, np.zeros(len(train), int), CLASSES, calibration=np.concatenate(feats["val"]), rate=rate,
                  unit="patch")
    val = np.array([volume_score(patches, f) for f in feats["val"]])
    threshold = float(np.quantile(val, 1 - rate))
    test = np.array([volume_score(patches, f) for f in feats["test"]])

    def per_volume(split: str, scores: np.ndarray) -> dict[str, Any]:
        return {"split": split, "n_volumes": int(len(scores)), "n_patches": int(sum(len(f) for f in feats[split])),
                "flagged": _share(scores, threshold), "score_quantiles": _quantiles(scores)}

    raw = {**patches.raw, "created": date.today().isoformat(), "aggregate": AGGREGATE,
           "threshold_unit": "volume: the largest score of the patches run (inside the lung search region)",
           "data": f"generated by training.synthetic.ct.generate_ct, seed {seed}, streams {SPLITS}, "
                   f"{manifest.raw['training']['config']['data']['shape_vox']} voxels",
           "feature_tensor": tapped, "feature_layer": layer.get("name", tapped),
           **({"feature_layer_why": layer["why"]} if "why" in layer else {}),
           "outputs_unchanged": {"items_compared": compared, "provider": "CPUExecutionProvider",
                                 "bit_identical": True},
           "fit": {**patches.raw["fit"], "split": "train", "n_volumes": counts["train"]},
           "patch_calibration": patches.raw["calibration"],
           "calibration": per_volume("val", val),
           "heldout": per_volume("test", test)}
    statistic = FeatureStatistic(patches.means, patches.whitening, threshold, rate, CLASSES, "patch", raw=raw)
    return install(manifest, task, statistic, after, width, np.concatenate(recorder.patches)[:COMPARED_PATCHES],
                   layer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ood_volume", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="NAME@VERSION of a registered volume model, e.g. nodule@1.0.0")
    parser.add_argument("--registry", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--rate", type=float, default=FALSE_FLAG_RATE, help="false-flag rate on held-out volumes")
    args = parser.parse_args(argv)
    manifest = ModelRegistry(args.registry).get(args.model)
    task = import_module(f"training.tasks.{manifest.name}").TASK
    statistic = attach_volume(manifest, task, args.rate)
    print(json.dumps({k: statistic.raw[k] for k in ("fit", "patch_calibration", "calibration", "heldout")}
                     | {"threshold": statistic.threshold}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
