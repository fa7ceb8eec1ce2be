"""The ``derm`` task: 7-class dermoscopy classification (HAM10000 classes), temperature-calibrated.

Data: generated dermoscopy images (:mod:`training.synthetic.derm`) from three distinct seeds for
the train / validation / held-out test splits.  The training split is drawn class-balanced
(``data.train_prior: balanced``) so the rare classes are seen as often as ``nv``; validation and
test follow the HAM10000 prior (``nv`` about two thirds), as a clinic would see them.  Or a real
dataset (``data.source``: ``ham10000`` or ``isic2019`` under ``data.root``; ``isic2019`` only
with its images of the 7 HAM10000 classes) split 70/15/15 by seed, the training part sampled
class-balanced.  Items: ``image`` float32 (3, S, S) in [0, 1] and ``label`` int64.

Network: :class:`models.derm.network.DermClassifier` (reduced MONAI EfficientNet, logits).
Loss: cross-entropy (optional class weights, ``train.class_weights``) with random flips,
90-degree rotations and a small brightness/colour jitter, all in torch on the batch.
Metrics: accuracy, balanced accuracy, confusion matrix, one-vs-rest AUC per class, macro AUC with
a bootstrap 95 % CI, melanoma sensitivity / specificity at an operating point chosen on
validation, NLL and top-label ECE before and after temperature scaling, with reliability plots.
The temperature is fitted on validation; the export outputs ``softmax(logits / T)``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from models.derm.calibration import CalibratedClassifier, fit_temperature
from models.derm.network import CLASSES, DermNetConfig, build_derm_network
from training import derm_report as R
from training.data import ArrayDataset, map_shards, split_indices
from training.tasks.base import Evaluation, ExportSpec, Task

MEL = CLASSES.index("mel")
SHARD_SIZE = 250  # data is generated in fixed shards so results do not depend on the worker count
REAL_SOURCES = ("ham10000", "isic2019")
PRIORS = ("balanced", "ham10000")


def _shard(job: tuple[int, int, int, int, str]) -> tuple[np.ndarray, np.ndarray]:
    from models.derm.preprocess import to_derm_input_batch
    from training.synthetic.derm import BALANCED_PRIOR, HAM10000_PRIOR, make_dataset

    n, seed, source_px, input_px, prior = job
    images, labels = make_dataset(n, seed, source_px, BALANCED_PRIOR if prior == "balanced" else HAM10000_PRIOR)
    return to_derm_input_batch(images, input_px), labels


def generate_split(n: int, seed: int, source_px: int, input_px: int, prior: str, workers: int = 1) -> ArrayDataset:
    """``n`` generated items (``prior``: ``balanced`` or ``ham10000``) in shards of :data:`SHARD_SIZE`."""
    if prior not in PRIORS:
        raise ValueError(f"`prior` must be one of {PRIORS}, {prior!r} is given.")
    jobs = [(min(SHARD_SIZE, n - i), seed * 1000 + k, source_px, input_px, prior)
            for k, i in enumerate(range(0, n, SHARD_SIZE))]
    parts = map_shards(_shard, jobs, workers)
    return ArrayDataset({"image": np.concatenate([p[0] for p in parts]),
                         "label": np.concatenate([p[1] for p in parts]).astype(np.int64)})


class BalancedView(Dataset):
    """A class-balanced re-indexing of ``base``: item ``i`` is a seeded draw from class ``i % C``."""

    def __init__(self, base: Dataset, labels: np.ndarray, seed: int) -> None:
        labels = np.asarray(labels)
        self.base = base
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        rng = np.random.default_rng(seed)
        self.length = len(labels)
        self.order = [rng.choice(m, self.length // len(self.members) + 1) for m in self.members]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c, k = index % len(self.members), index // len(self.members)
        return self.base[int(self.order[c][k])]


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flips, 90-degree rotations and brightness / per-channel gain jitter of a (N, 3, S, S) batch."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=generator).to(x.device)
    x = torch.where((r[:, 0] < 0.5)[:, None, None, None], x.flip(-1), x)
    x = torch.where((r[:, 1] < 0.5)[:, None, None, None], x.flip(-2), x)
    x = torch.where((r[:, 2] < 0.5)[:, None, None, None], x.transpose(-1, -2), x)  # with the flips: all 8 symmetries
    gain = 1.0 + 0.08 * (torch.rand(n, 3, 1, 1, generator=generator).to(x.device) - 0.5)
    bright = 0.06 * (r[:, 3] - 0.5)[:, None, None, None]
    return (x * gain + bright).clamp(0.0, 1.0)


class DermTask(Task):
    """Seven-class skin-lesion classification with calibrated probabilities."""

    name = "derm"

    def __init__(self) -> None:
        self._fitted_temperature: float | None = None  # from the last validation evaluate()

    def default_config(self) -> dict[str, Any]:
        return {
            "seed": 0,
            "data": {"source": "synthetic", "root": None, "n_train": 4000, "n_val": 700, "n_test": 1400,
                     "source_size_px": 128, "train_prior": "balanced", "workers": 2},
            "input": {"size_px": 96},
            "network": {**DermNetConfig(image_size_px=96).as_dict()},
            "train": {"batch_size": 32, "lr": 0.004, "weight_decay": 1e-5, "max_steps": 720, "seconds": None,
                      "amp": True, "checkpoint_every": 100, "num_workers": 0, "schedule": "cosine",
                      "class_weights": None, "label_smoothing": 0.0},
            "eval": {"bootstrap_resamples": 500, "calibration_bins": 15, "mel_target_sensitivity": 0.85},
            "calibration": {"temperature": None},
        }

    def build_network(self, config: dict[str, Any]) -> nn.Module:
        arch = DermNetConfig.from_dict(config.get("network"))
        size = int(config["input"]["size_px"])
        if arch.image_size_px != size:
            raise ValueError(f"`network.image_size_px` must equal `input.size_px` ({size}), "
                             f"{arch.image_size_px} is given.")
        network = build_derm_network(arch)
        train = config.get("train", {})
        weights = train.get("class_weights")
        if weights is not None and (len(weights) != len(CLASSES) or min(weights) <= 0):
            raise ValueError(f"`train.class_weights` must be null or {len(CLASSES)} positive numbers in the order "
                             f"{CLASSES}, {weights!r} is given.")
        network.train_options = {"class_weights": weights, "label_smoothing": float(train.get("label_smoothing", 0))}
        return network

    def datasets(self, config: dict[str, Any]) -> dict[str, Dataset]:
        data, size, seed = config["data"], int(config["input"]["size_px"]), int(config["seed"])
        source = data.get("source", "synthetic")
        if source in REAL_SOURCES:
            return self._real_datasets(source, data, size, seed)
        if source != "synthetic":
            raise ValueError(f"`data.source` must be synthetic or one of {REAL_SOURCES}, {source!r} is given.")
        src, workers = int(data["source_size_px"]), int(data.get("workers", 1))
        priors = {"train": data.get("train_prior", "balanced"), "val": "ham10000", "test": "ham10000"}
        return {name: generate_split(int(data[f"n_{name}"]), 3 * seed + k, src, size, priors[name], workers)
                for k, name in enumerate(("train", "val", "test"), start=1)}

    @staticmethod
    def _real_datasets(source: str, data: dict[str, Any], size: int, seed: int) -> dict[str, Dataset]:
        from training import loaders

        if not data.get("root"):
            raise ValueError(f"`data.root` must name the {source} folder, {data.get('root')!r} is given.")
        full = getattr(loaders, source)(data["root"], size_px=size)
        labels = np.array([label for _, label in full.records])
        if source == "isic2019":  # keep the 7 HAM10000 classes, re-indexed to CLASSES
            mapping = {"AK": "akiec", "BCC": "bcc", "BKL": "bkl", "DF": "df", "MEL": "mel", "NV": "nv", "VASC": "vasc"}
            names = [loaders.ISIC2019_CLASSES[i] for i in labels]
            keep = [i for i, n in enumerate(names) if n in mapping]
            full.records = [(full.records[i][0], CLASSES.index(mapping[names[i]])) for i in keep]
            labels = np.array([label for _, label in full.records])
        parts = split_indices(len(full), (0.7, 0.15, 0.15), seed)
        names = ("train", "val", "test")
        out: dict[str, Dataset] = {name: Subset(full, idx.tolist()) for name, idx in zip(names, parts)}
        if data.get("train_prior", "balanced") == "balanced":
            out["train"] = BalancedView(out["train"], labels[parts[0]], seed)
        return out

    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = augment(batch["image"]) if network.training else batch["image"]
        logits = network(x).float()
        weight = None
        cfg = getattr(network, "train_options", {})
        if cfg.get("class_weights"):
            weight = torch.as_tensor(cfg["class_weights"], dtype=torch.float32, device=logits.device)
        return F.cross_entropy(logits, batch["label"].long(), weight=weight,
                               label_smoothing=float(cfg.get("label_smoothing", 0.0)))

    def predict(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {"logits": network(batch["image"]).float().cpu().numpy(), "label": batch["label"].cpu().numpy()}

    def evaluate(self, predictions: dict[str, np.ndarray], config: dict[str, Any],
                 operating_point: dict[str, Any] | None = None) -> Evaluation:
        logits, y = predictions["logits"].astype(np.float64), predictions["label"].astype(int)
        cfg = config.get("eval", {})
        if operating_point is None:
            fixed = config.get("calibration", {}).get("temperature")
            temperature = float(fixed) if fixed else fit_temperature(logits, y)
            self._fitted_temperature = temperature
            p_mel = R.softmax(logits, temperature)[:, MEL]
            target = float(cfg.get("mel_target_sensitivity", 0.85))
            threshold = R.threshold_for_sensitivity(y == MEL, p_mel, target)
            operating_point = {"temperature": temperature, "mel_threshold": threshold,
                               "method": f"temperature: NLL minimum on the validation split; melanoma threshold: "
                                         f"highest calibrated p(mel) with validation sensitivity >= {target:g}"}
        report = R.classification_report(logits, y, CLASSES, float(operating_point["temperature"]),
                                         float(operating_point["mel_threshold"]), MEL,
                                         n_resamples=int(cfg.get("bootstrap_resamples", 500)),
                                         n_bins=int(cfg.get("calibration_bins", 15)), seed=int(config["seed"]))
        return Evaluation(metrics=report["metrics"], plots=report["plots"], operating_point=dict(operating_point))

    def export_spec(self, network: nn.Module, config: dict[str, Any]) -> ExportSpec:
        fixed = config.get("calibration", {}).get("temperature")
        temperature = float(fixed) if fixed else self._fitted_temperature
        if temperature is None or not math.isfinite(temperature) or temperature <= 0:
            raise RuntimeError("derm export needs a temperature: evaluate the validation split first (it fits one) "
                               f"or set `calibration.temperature`; {temperature!r} is given.")
        network.temperature.fill_(temperature)  # saved with the weights (model.pt) too
        size = int(config["input"]["size_px"])
        return ExportSpec(module=CalibratedClassifier(network.eval(), temperature),
                          example_inputs=(torch.rand(2, 3, size, size),), input_names=["image"],
                          output_names=["probabilities"])

    def metadata(self, config: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
        return R.metadata(config, evaluation, CLASSES)


TASK = DermTask()
