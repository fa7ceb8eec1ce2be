"""The ``vitals`` task: deterioration within the next hours from one hour of bedside vitals.

Data are generated ward stays (:mod:`training.synthetic.vitals_windows`); each split is a separate
seeded cohort of patients, so no patient is in two splits.  Items are
``{"window": (12, 10) float32, "label": (1,) float32, "news2": (1,) float32}``; ``news2`` is the
NEWS2 total charted from the latest values at the window end (alert, on air), the baseline the
model must beat.  The operating point is the highest threshold reaching the configured
sensitivity on the validation split (an early-warning trigger should miss few deteriorations).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from iomt.news2 import MEDIUM_THRESHOLD
from models.clinical_codes import SNOMED_SYSTEM
from models.vitals import VitalsNet, VitalsNetConfig
from models.vitals.network import VitalsProbability
from models.vitals_features import (FEATURE_LOINC, FEATURE_UNITS, FEATURES, N_CHANNELS, NORMALISATION,
                                    STEP_S, WINDOW_STEPS)
from training import metrics
from training.synthetic.vitals_windows import cohort, labelled_windows
from training.tasks.base import Evaluation, ExportSpec, Task

#: SNOMED CT 271299001 |Patient's condition worsened (finding)|, as listed in the HL7 FHIR mCODE
#: ConditionStatusTrendVS (http://hl7.org/fhir/us/mcode/ValueSet/mcode-condition-status-trend-vs).
OUTCOME = {"value": "271299001", "scheme": "SCT", "meaning": "Patient's condition worsened"}
INTENDED_USE = ("NOT FOR CLINICAL USE — trained on generated vitals only. Research demonstration of "
                "a deterioration early-warning score from one hour of bedside vitals.")
_SPLIT_SEED_OFFSET = {"train": 0, "val": 1, "test": 2}


class VitalsWindows(Dataset):
    """Labelled windows held in memory (see the module docstring for the item layout)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.window = torch.from_numpy(np.ascontiguousarray(arrays["window"], dtype=np.float32))
        self.label = torch.from_numpy(np.asarray(arrays["label"], np.float32)).reshape(-1, 1)
        self.news2 = torch.from_numpy(np.asarray(arrays["news2"], np.float32)).reshape(-1, 1)
        if not len(self.window) == len(self.label) == len(self.news2):
            raise ValueError(f"`window`, `label` and `news2` must have the same length, {len(self.window)}, "
                             f"{len(self.label)} and {len(self.news2)} are given.")

    def __len__(self) -> int:
        return len(self.window)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"window": self.window[i], "label": self.label[i], "news2": self.news2[i]}


def _sensitivity_threshold(labels: np.ndarray, scores: np.ndarray, target: float) -> float:
    """Highest threshold with sensitivity >= ``target`` (``score >= threshold`` is positive)."""
    positives = np.sort(scores[labels.astype(bool)])[::-1]
    if positives.size == 0:
        raise ValueError("the validation split has no positive window; the operating point needs one.")
    return float(positives[min(math.ceil(target * positives.size), positives.size) - 1])


def _paired_auc_difference_ci(labels: np.ndarray, model: np.ndarray, baseline: np.ndarray, *,
                              n_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap CI (95 %) of AUC(model) - AUC(baseline) on the same resampled windows."""
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < n_resamples:
        idx = rng.integers(0, labels.size, labels.size)
        if labels[idx].all() or not labels[idx].any():
            continue
        diffs.append(metrics.roc_auc(labels[idx], model[idx]) - metrics.roc_auc(labels[idx], baseline[idx]))
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


class VitalsTask(Task):
    """Deterioration within ``data.horizon_h`` hours after a one-hour vitals window."""

    name = "vitals"

    def default_config(self) -> dict[str, Any]:
        return {
            "seed": 0,
            "data": {"source": "synthetic", "root": None, "n_train": 1200, "n_val": 300, "n_test": 400,
                     "horizon_h": 4.0, "stride_min": 30.0, "stay_h": 14.0, "deteriorating_fraction": 0.5},
            "input": {"window_steps": WINDOW_STEPS, "step_s": STEP_S, "channels": N_CHANNELS},
            "network": VitalsNetConfig().as_dict(),
            "train": {"batch_size": 128, "lr": 0.003, "max_steps": 1500, "seconds": 120, "amp": False,
                      "checkpoint_every": 500, "num_workers": 0},
            "eval": {"target_sensitivity": 0.8, "bootstrap": 1000, "ece_bins": 10},
        }

    def build_network(self, config: dict[str, Any]) -> nn.Module:
        return VitalsNet(VitalsNetConfig(**config.get("network", {})))

    def datasets(self, config: dict[str, Any]) -> dict[str, Dataset]:
        data = config["data"]
        if data.get("source", "synthetic") != "synthetic":
            raise ValueError(f"`data.source` must be 'synthetic' for vitals (no real loader yet), "
                             f"{data.get('source')!r} is given.")
        out = {}
        for split, offset in _SPLIT_SEED_OFFSET.items():
            stays = cohort(int(data[f"n_{split}"]), seed=int(config["seed"]) * 10 + offset,
                           deteriorating_fraction=float(data["deteriorating_fraction"]),
                           stay_h=float(data["stay_h"]))
            out[split] = VitalsWindows(labelled_windows(stays, horizon_s=float(data["horizon_h"]) * 3600.0,
                                                        stride_s=float(data["stride_min"]) * 60.0))
        return out

    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = network(batch["window"])
        return F.binary_cross_entropy_with_logits(logits.float(), batch["label"])

    def predict(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        probability = torch.sigmoid(network(batch["window"]).float())
        return {"probability": probability[:, 0].cpu().numpy(), "label": batch["label"][:, 0].cpu().numpy(),
                "news2": batch["news2"][:, 0].cpu().numpy()}

    def evaluate(self, predictions: dict[str, np.ndarray], config: dict[str, Any],
                 operating_point: dict[str, Any] | None = None) -> Evaluation:
        y = predictions["label"].astype(int)
        p = predictions["probability"].astype(np.float64)
        news2 = predictions["news2"].astype(np.float64)
        ev = config.get("eval", {})
        n_boot, seed = int(ev.get("bootstrap", 1000)), int(config.get("seed", 0))
        if operating_point is None:
            operating_point = {"threshold": _sensitivity_threshold(y, p, float(ev.get("target_sensitivity", 0.8))),
                               "method": f"highest threshold with validation sensitivity >= "
                                       f"{float(ev.get('target_sensitivity', 0.8))}"}
        threshold = float(operating_point["threshold"])
        sens, spec = metrics.sensitivity_specificity(y, p, threshold)
        n2_sens, n2_spec = metrics.sensitivity_specificity(y, news2, MEDIUM_THRESHOLD)
        auc, news2_auc = metrics.roc_auc(y, p), metrics.roc_auc(y, news2)
        # NEWS2 at the model's sensitivity: the lowest total reaching it, for a like-for-like specificity.
        n2_at = _sensitivity_threshold(y, news2, sens) if sens > 0 else float("inf")
        bins = int(ev.get("ece_bins", 10))
        curve = metrics.reliability_curve(y, p, bins)
        result = {
            "n_windows": int(y.size), "prevalence": float(y.mean()),
            "auc": auc, "auc_ci95": list(metrics.bootstrap_auc_ci(y, p, n_resamples=n_boot, seed=seed)),
            "sensitivity": sens, "specificity": spec, "threshold": threshold,
            "ece": metrics.expected_calibration_error(y, p, bins), "reliability": curve,
            "news2_auc": news2_auc,
            "news2_auc_ci95": list(metrics.bootstrap_auc_ci(y, news2, n_resamples=n_boot, seed=seed)),
            "auc_minus_news2_ci95": list(_paired_auc_difference_ci(y, p, news2, n_resamples=max(n_boot // 2, 10),
                                                                   seed=seed)),
            "news2_ge5_sensitivity": n2_sens, "news2_ge5_specificity": n2_spec,
            "news2_threshold_at_model_sensitivity": n2_at,
            "news2_specificity_at_model_sensitivity": metrics.sensitivity_specificity(y, news2, n2_at)[1],
        }

        def draw_roc(ax: Any) -> None:
            for scores, label in ((p, f"model (AUC {auc:.3f})"), (news2, f"NEWS2 total (AUC {news2_auc:.3f})")):
                fpr, tpr, _ = metrics.roc_curve(y, scores)
                ax.plot(fpr, tpr, label=label)
            ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.plot(1 - spec, sens, "o", color="black", label=f"threshold {threshold:.2f}")
            ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="Deterioration within horizon")
            ax.legend(loc="lower right", fontsize=8)

        def draw_reliability(ax: Any) -> None:
            pairs = [(c, f) for c, f in zip(curve["confidence"], curve["frequency"]) if c is not None]
            ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.plot([c for c, _ in pairs], [f for _, f in pairs], "o-", label=f"ECE {result['ece']:.3f}")
            ax.set(xlabel="predicted probability", ylabel="observed frequency", title="Reliability")
            ax.legend(loc="upper left", fontsize=8)

        return Evaluation(result, {"roc": draw_roc, "reliability": draw_reliability}, dict(operating_point))

    def export_spec(self, network: nn.Module, config: dict[str, Any]) -> ExportSpec:
        module = VitalsProbability(network).eval()
        return ExportSpec(module, (torch.zeros(2, WINDOW_STEPS, N_CHANNELS),), ["window"], ["probability"])

    def metadata(self, config: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
        horizon_h = float(config["data"]["horizon_h"])
        return {
            "task": f"Risk of clinical deterioration within {horizon_h:g} h from one hour of bedside vitals",
            "description": "Small temporal CNN (models.vitals.VitalsNet) over a models.vitals_features window.",
            "inputs": {"window": {"type": "series", "shape": [None, WINDOW_STEPS, N_CHANNELS], "dtype": "float32",
                                  "preprocessing": "models.vitals_features.window_features(samples, end_s)",
                                  "feature_contract": "models.vitals_features",
                                  "window_steps": WINDOW_STEPS, "step_s": STEP_S,
                                  "features": [{"name": f, "loinc": list(FEATURE_LOINC[f]), "unit": FEATURE_UNITS[f],
                                                "mean": NORMALISATION[f][0], "sd": NORMALISATION[f][1]}
                                               for f in FEATURES]}},
            "outputs": {"probability": {"type": "probabilities", "shape": [None, 1], "dtype": "float32",
                                        "value_range": [0, 1], "meaning": f"probability of deterioration within "
                                                                          f"{horizon_h:g} h after the window end"}},
            "finding": dict(OUTCOME),
            "outcome": {"system": SNOMED_SYSTEM, "code": OUTCOME["value"], "display": OUTCOME["meaning"],
                        "horizon_h": horizon_h,
                        "source": "HL7 FHIR mCODE ConditionStatusTrendVS; no more specific SNOMED CT concept "
                                  "for 'clinical deterioration' was found"},
            "threshold": float(evaluation.operating_point["threshold"]),
            "architecture": {"network": "models.vitals.VitalsNet", **config.get("network", {})},
            "baseline": "NEWS2 total (RCP 2017) from the latest values at the window end, alert, on air",
            "training_data": ("Generated ward stays (training.synthetic.vitals_windows): stable patients, some "
                              "chronically abnormal, and sepsis-like, respiratory-failure and haemorrhage "
                              f"deteriorations; label = event within {horizon_h:g} h. No real patient data."),
            "data_type": "synthetic",
            "intended_use": INTENDED_USE,
        }


TASK = VitalsTask()
