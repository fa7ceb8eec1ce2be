"""The ``tb`` task: pulmonary tuberculosis on a frontal chest radiograph, with a CAM heatmap.

Data: generated radiographs (:mod:`training.synthetic.cxr`) from three distinct seeds for the
train / validation / held-out test splits, or a real dataset (``data.source``: ``tbx11k``,
``shenzhen``, ``montgomery`` or ``medgate_export`` (``medgate export-training``'s ``<out>/tb``) under ``data.root``, split 70/15/15 by seed).  Items are
``image`` float32 (1, S, S) from :func:`models.transforms.to_model_input`, ``label`` float32 0/1
and ``centres`` float32 (3, 2): up to three lesion centres as (x, y) fractions of the image
side, NaN-padded.  Network: :class:`models.tb.network.TbNet` (small MONAI DenseNet + CAM).
Loss: binary cross-entropy on the logit, with random left/right flips (lesions occur in
either lung).  Metrics: AUC with a bootstrap 95 % CI, sensitivity / specificity at the Youden
threshold chosen on validation, ECE with a reliability curve, and the localisation hit rate
(heatmap peak within 1/8 of the image side of a true lesion, over true positive calls).
"""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from models.tb.network import TbNet, TbNetConfig, heatmap_size
from models.transforms import heatmap_peaks
from training import metrics as M
from training.data import ArrayDataset, LazySplits, map_shards, split_indices
from training.tasks.base import Evaluation, ExportSpec, Task

FINDING = {"value": "154283005", "scheme": "SCT", "meaning": "Pulmonary tuberculosis"}
MAX_LESIONS = 3
SHARD_SIZE = 200  # data is generated in fixed shards so results do not depend on the worker count
REAL_SOURCES = ("tbx11k", "shenzhen", "montgomery", "medgate_export")


def _shard(job: tuple[int, int, int, int]):
    from training.synthetic.cxr import make_dataset

    n, seed, source_px, input_px = job
    return make_dataset(n, seed, source_px, input_px)


def generate_split(n: int, seed: int, source_px: int, input_px: int, workers: int = 1) -> ArrayDataset:
    """``n`` generated items in shards of :data:`SHARD_SIZE` (optionally in parallel processes)."""
    jobs = [(min(SHARD_SIZE, n - i), seed * 1000 + k, source_px, input_px)
            for k, i in enumerate(range(0, n, SHARD_SIZE))]
    parts = map_shards(_shard, jobs, workers)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.float32)
    centres = np.full((n, MAX_LESIONS, 2), np.nan, dtype=np.float32)
    for i, found in enumerate(c for p in parts for c in p[2]):
        if found:
            centres[i, : len(found)] = np.asarray(found[:MAX_LESIONS], dtype=np.float32) / source_px
    return ArrayDataset({"image": images, "label": labels, "centres": centres})


def hit_rate(heatmaps: np.ndarray, centres: np.ndarray, chosen: np.ndarray, radius: float) -> float | None:
    """Share of ``chosen`` cases whose heatmap peak lies within ``radius`` (image fractions) of a centre."""
    rows = [i for i in np.flatnonzero(chosen) if np.isfinite(centres[i]).all(axis=1).any()]
    if not rows:
        return None
    peaks = heatmap_peaks(heatmaps[rows], 1, 1)  # (x, y) as fractions of the image side
    hits = [np.nanmin(np.hypot(*(centres[i] - peak).T)) <= radius for peak, i in zip(peaks, rows)]
    return float(np.mean(hits))


class TbTask(Task):
    """Pulmonary TB classification with a localisation heatmap."""

    name = "tb"

    def default_config(self) -> dict[str, Any]:
        return {
            "seed": 0,
            "data": {"source": "synthetic", "root": None, "n_train": 2400, "n_val": 400, "n_test": 600,
                     "source_size_px": 256, "workers": 2},
            "input": {"size_px": 224},
            "network": TbNetConfig().as_dict(),
            "train": {"batch_size": 16, "lr": 0.003, "weight_decay": 1e-4, "max_steps": 400, "seconds": None,
                      "amp": True, "checkpoint_every": 50, "num_workers": 0, "schedule": "cosine"},
            "eval": {"bootstrap_resamples": 1000, "hit_radius_fraction": 0.125, "calibration_bins": 10},
        }

    def build_network(self, config: dict[str, Any]) -> nn.Module:
        arch = dict(config.get("network", {}))
        arch["block_config"] = tuple(arch.get("block_config", TbNetConfig.block_config))
        return TbNet(TbNetConfig(**arch))

    def datasets(self, config: dict[str, Any]) -> dict[str, Dataset]:
        data, size, seed = config["data"], int(config["input"]["size_px"]), int(config["seed"])
        source = data.get("source", "synthetic")
        if source in REAL_SOURCES:
            from training import loaders

            full = getattr(loaders, source)(data["root"], size_px=size)
            parts = split_indices(len(full), (0.7, 0.15, 0.15), seed)
            return {name: Subset(full, idx.tolist()) for name, idx in zip(("train", "val", "test"), parts)}
        if source != "synthetic":
            raise ValueError(f"`data.source` must be synthetic or one of {REAL_SOURCES}, {source!r} is given.")
        src, workers = int(data["source_size_px"]), int(data.get("workers", 1))
        return LazySplits({name: partial(generate_split, int(data[f"n_{name}"]), 3 * seed + k, src, size, workers)
                           for k, name in enumerate(("train", "val", "test"), start=1)})

    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = batch["image"]
        flip = torch.rand(x.shape[0]) < 0.5
        x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        logit, _ = network.logits_and_cam(x)
        return F.binary_cross_entropy_with_logits(logit.float(), batch["label"].float()[:, None])

    def predict(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        probability, heatmap = network(batch["image"])
        return {"probability": probability[:, 0].float().cpu().numpy(), "heatmap": heatmap[:, 0].float().cpu().numpy(),
                "label": batch["label"].cpu().numpy(), "centres": batch["centres"].cpu().numpy()}

    def evaluate(self, predictions: dict[str, np.ndarray], config: dict[str, Any],
                 operating_point: dict[str, Any] | None = None) -> Evaluation:
        y, p = predictions["label"].astype(int), predictions["probability"].astype(np.float64)
        cfg = config.get("eval", {})
        threshold = M.youden_threshold(y, p) if operating_point is None else float(operating_point["threshold"])
        sens, spec = M.sensitivity_specificity(y, p, threshold)
        lo, hi = M.bootstrap_auc_ci(y, p, n_resamples=int(cfg.get("bootstrap_resamples", 1000)), seed=config["seed"])
        bins = int(cfg.get("calibration_bins", 10))
        curve = M.reliability_curve(y, p, bins)
        radius = float(cfg.get("hit_radius_fraction", 0.125))
        hits = hit_rate(predictions["heatmap"], predictions["centres"], (p >= threshold) & (y == 1), radius)
        metrics = {"n": int(y.size), "n_positive": int(y.sum()), "auc": M.roc_auc(y, p), "auc_ci95": [lo, hi],
                   "threshold": threshold, "sensitivity": sens, "specificity": spec,
                   "balanced_accuracy": M.balanced_accuracy(y, p >= threshold),
                   "ece": M.expected_calibration_error(y, p, bins), "reliability": curve,
                   "localisation_hit_rate": hits, "localisation_hit_radius_fraction": radius}
        fpr, tpr, _ = M.roc_curve(y, p)
        point = (1 - spec, sens)
        return Evaluation(metrics=metrics, plots={"roc": lambda ax: _plot_roc(ax, fpr, tpr, metrics["auc"], point),
                                                  "reliability": lambda ax: _plot_reliability(ax, curve)},
                          operating_point={"threshold": threshold, "method": "Youden's J on the validation split"})

    def export_spec(self, network: nn.Module, config: dict[str, Any]) -> ExportSpec:
        size = int(config["input"]["size_px"])
        return ExportSpec(module=network.eval(), example_inputs=(torch.zeros(2, 1, size, size),),
                          input_names=["image"], output_names=["probability", "heatmap"])

    def metadata(self, config: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
        size = int(config["input"]["size_px"])
        side = heatmap_size(size, config["network"]["block_config"])
        synthetic = config["data"].get("source", "synthetic") == "synthetic"
        return {
            "task": "Classification of pulmonary tuberculosis on a frontal chest radiograph, with a localisation "
                    "heatmap",
            "description": "Small MONAI DenseNet with a class-activation-map head (models.tb.network.TbNet).",
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "CR/DX", "num_channels": 1,
                                 "spatial_shape": [size, size], "shape": [None, 1, size, size], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": False, "size_px": size,
                                 "preprocessing": "models.transforms.to_model_input"}},
            "outputs": {"probability": {"type": "probabilities", "shape": [None, 1], "dtype": "float32",
                                        "value_range": [0, 1], "meaning": "probability of pulmonary TB"},
                        "heatmap": {"type": "image", "shape": [None, 1, side, side], "dtype": "float32",
                                    "value_range": [0, 1], "meaning": "class-activation map scaled to [0, 1] per "
                                    "image; peak via models.transforms.heatmap_peak"}},
            "finding": FINDING,
            "threshold": float(evaluation.operating_point["threshold"]),
            "training_data": ("generated by training/synthetic/cxr.py — no real patient data" if synthetic
                              else f"{config['data']['source']} under {config['data'].get('root')}"),
            "data_type": "synthetic" if synthetic else "png",
            "intended_use": "NOT FOR CLINICAL USE. Demonstration model of medgate, trained only on generated "
                            "images; its outputs say nothing about real patients." if synthetic else
                            "NOT FOR CLINICAL USE. Research model; not validated for diagnosis.",
            "architecture": {"network": "monai.networks.nets.DenseNet", "wrapper": "models.tb.network.TbNet",
                             **config["network"]},
        }


def _plot_roc(ax, fpr, tpr, auc: float, point: tuple[float, float]) -> None:
    ax.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(*point, "o", c="C3", label="operating point")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (held-out)", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")


def _plot_reliability(ax, curve: dict[str, list]) -> None:
    conf = [c for c in curve["confidence"] if c is not None]
    freq = [f for f, c in zip(curve["frequency"], curve["confidence"]) if c is not None]
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot(conf, freq, "o-", lw=2)
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title="Reliability (held-out)",
           xlim=(0, 1), ylim=(0, 1))


TASK = TbTask()
