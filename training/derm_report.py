"""Metrics, plots and registry metadata of the ``derm`` task (multi-class, calibrated).

Binary building blocks (rank AUC, ROC curve, balanced accuracy, per-class AUC) come from
:mod:`training.metrics`; this module adds what is specific to a calibrated 7-class classifier:
macro AUC with a bootstrap CI, a sensitivity-targeted threshold, top-label calibration before and
after temperature scaling, the confusion matrix, and the class codes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from models.derm.calibration import expected_calibration_error, nll, reliability_bins, softmax
from training import metrics as M

__all__ = ["CLASS_CODES", "classification_report", "confusion_matrix", "macro_auc_ci", "metadata", "softmax",
           "threshold_for_sensitivity"]

#: Coded concept per class, in the registry's form (``value``, ``scheme``, ``meaning``).  SNOMED CT
#: (``SCT``) where the code was corroborated by independent public sources (``evidence``); where
#: public mappings disagree no SNOMED code is shipped and the class carries a local code in the
#: private scheme ``99MEDGATE`` (``snomed_ct: "UNVERIFIED"``) until someone resolves it against a
#: SNOMED CT browser.
CLASS_CODES = {
    "akiec": {"value": "201101007", "scheme": "SCT", "meaning": "Actinic keratosis",
              "class_meaning": "Actinic keratosis / intraepithelial carcinoma (Bowen's disease)",
              "evidence": "201101007 |Actinic keratosis| agrees across independent public mappings; the concept does "
                          "not cover intraepithelial carcinoma, which this class also holds"},
    "bcc": {"value": "254701007", "scheme": "SCT", "meaning": "Basal cell carcinoma of skin",
            "class_meaning": "Basal cell carcinoma",
            "evidence": "254701007 |Basal cell carcinoma of skin| agrees across independent public mappings"},
    "bkl": {"value": "bkl", "scheme": "99MEDGATE", "meaning": "Benign keratosis-like lesion",
            "class_meaning": "Benign keratosis-like lesion (seborrhoeic keratosis, solar lentigo, lichen planus-like "
                             "keratosis)",
            "snomed_ct": "UNVERIFIED",
            "evidence": "public mappings of seborrhoeic keratosis disagree (65126008, 12563001, 201089006, ...); "
                        "72100002 |Solar lentigo| is confirmed on a SNOMED CT terminology page but covers only part "
                        "of the class"},
    "df": {"value": "df", "scheme": "99MEDGATE", "meaning": "Dermatofibroma", "class_meaning": "Dermatofibroma",
           "snomed_ct": "UNVERIFIED",
           "evidence": "public mappings disagree (72464004, 253008, 254788002, 254677009, ...)"},
    "mel": {"value": "372244006", "scheme": "SCT", "meaning": "Malignant melanoma", "class_meaning": "Melanoma",
            "evidence": "372244006 |Malignant melanoma (disorder)| (any site) agrees across independent public "
                        "mappings; 93655004 |Malignant melanoma of skin| is more specific (one secondary source)"},
    "nv": {"value": "400096001", "scheme": "SCT", "meaning": "Melanocytic nevus", "class_meaning": "Melanocytic naevus",
           "evidence": "400096001 |Melanocytic nevus (disorder)| confirmed on a SNOMED CT terminology server page; "
                       "400010006 |Melanocytic naevus of skin| is more specific (one secondary source)"},
    "vasc": {"value": "vasc", "scheme": "99MEDGATE", "meaning": "Vascular lesion",
             "class_meaning": "Vascular lesion (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)",
             "snomed_ct": "UNVERIFIED",
             "evidence": "no single concept covers the class; candidates (e.g. 400210000) could not be confirmed"},
}


def threshold_for_sensitivity(positive: Any, scores: Any, target: float) -> float:
    """The highest threshold (``score >= t`` is positive) reaching sensitivity ``target``."""
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(positive, dtype=bool)])[::-1]
    if not 0.0 < target <= 1.0:
        raise ValueError(f"`target` must be within (0, 1], {target!r} is given.")
    if pos.size == 0:
        raise ValueError("`positive` must mark at least one case to set a sensitivity threshold, none is given.")
    return float(pos[max(math.ceil(target * pos.size) - 1, 0)])


def confusion_matrix(labels: Any, predicted: Any, n_classes: int) -> np.ndarray:
    """(C, C) counts: row = true class, column = predicted class."""
    y, yhat = np.asarray(labels, dtype=int), np.asarray(predicted, dtype=int)
    return np.bincount(y * n_classes + yhat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _macro_auc(y: np.ndarray, p: np.ndarray, classes: Sequence[int]) -> float:
    return float(np.mean([M.roc_auc((y == c).astype(int), p[:, c]) for c in classes]))


def macro_auc_ci(labels: Any, probabilities: Any, *, n_resamples: int = 500, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float, float]:
    """Macro one-vs-rest AUC over the classes present, with a percentile bootstrap CI.

    Resamples that lose a class present in the full set are drawn again.
    """
    y, p = np.asarray(labels, dtype=int), np.asarray(probabilities, dtype=np.float64)
    present = [c for c in range(p.shape[1]) if 0 < (y == c).sum() < y.size]
    if not present:
        raise ValueError("macro AUC needs at least two classes in `labels`, one is given.")
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(50 * n_resamples):
        if len(values) == n_resamples:
            break
        idx = rng.integers(0, y.size, y.size)
        counts = np.bincount(y[idx], minlength=p.shape[1])
        if all(0 < counts[c] < y.size for c in present):
            values.append(_macro_auc(y[idx], p[idx], present))
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return _macro_auc(y, p, present), float(lo), float(hi)


def classification_report(logits: np.ndarray, labels: np.ndarray, classes: Sequence[str], temperature: float,
                          mel_threshold: float, mel_index: int, *, n_resamples: int = 500, n_bins: int = 15,
                          seed: int = 0) -> dict[str, Any]:
    """``{"metrics": flat JSON, "plots": {stem: draw(ax)}}`` for one split's logits."""
    y = np.asarray(labels, dtype=int)
    raw, cal = softmax(logits), softmax(logits, temperature)
    predicted = cal.argmax(axis=1)
    auc, lo, hi = macro_auc_ci(y, cal, n_resamples=n_resamples, seed=seed)
    is_mel = (y == mel_index).astype(int)
    sens, spec = M.sensitivity_specificity(is_mel, cal[:, mel_index], mel_threshold) if is_mel.any() else (None, None)
    confusion = confusion_matrix(y, predicted, len(classes))
    bins_raw, bins_cal = reliability_bins(raw, y, n_bins), reliability_bins(cal, y, n_bins)
    metrics = {
        "n": int(y.size), "n_per_class": {c: int((y == k).sum()) for k, c in enumerate(classes)},
        "accuracy": float((predicted == y).mean()), "balanced_accuracy": M.balanced_accuracy(y, predicted),
        "chance_balanced_accuracy": 1.0 / len(classes),
        "recall_per_class": {c: (float(confusion[k, k] / confusion[k].sum()) if confusion[k].sum() else None)
                             for k, c in enumerate(classes)},
        "auc_per_class": M.per_class_auc(y, cal, list(classes)), "macro_auc": auc, "macro_auc_ci95": [lo, hi],
        "auc": auc,
        "melanoma": {"threshold": mel_threshold, "sensitivity": sens, "specificity": spec},
        "temperature": temperature,
        "nll_before_scaling": nll(logits, y), "nll": nll(logits, y, temperature),
        "ece_before_scaling": expected_calibration_error(raw, y, n_bins),
        "ece": expected_calibration_error(cal, y, n_bins), "calibration_bins": n_bins,
        "confusion_matrix": {"rows_true_columns_predicted": list(classes), "counts": confusion.tolist()},
    }
    plots = {"reliability": lambda ax: _plot_reliability(ax, bins_raw, bins_cal, temperature),
             "confusion": lambda ax: _plot_confusion(ax, confusion, classes),
             "roc": lambda ax: _plot_roc(ax, y, cal, classes, metrics["auc_per_class"])}
    return {"metrics": metrics, "plots": plots}


def _plot_reliability(ax, before: dict, after: dict, temperature: float) -> None:
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    for bins, label in ((before, "logits (T = 1)"), (after, f"temperature-scaled (T = {temperature:.2f})")):
        used = bins["count"] > 0
        ax.plot(bins["confidence"][used], bins["accuracy"][used], "o-", lw=2, label=label)
    ax.set(xlabel="top-label confidence", ylabel="accuracy", title="Reliability", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)


def _plot_confusion(ax, confusion: np.ndarray, classes: Sequence[str]) -> None:
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(confusion):
        ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="Confusion (row-normalised colour)")


def _plot_roc(ax, y: np.ndarray, p: np.ndarray, classes: Sequence[str], aucs: dict) -> None:
    for k, name in enumerate(classes):
        if aucs.get(name) is None:
            continue
        fpr, tpr, _ = M.roc_curve((y == k).astype(int), p[:, k])
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} {aucs[name]:.2f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="One-vs-rest ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)


def metadata(config: dict[str, Any], evaluation, classes: Sequence[str]) -> dict[str, Any]:
    """Task-specific registry metadata of the ``derm`` model (see :meth:`Task.metadata`)."""
    size = int(config["input"]["size_px"])
    synthetic = config["data"].get("source", "synthetic") == "synthetic"
    op = evaluation.operating_point
    return {
        "task": "Classification of a dermoscopy photograph of a skin lesion into the 7 HAM10000 diagnostic classes",
        "description": "Width/depth-reduced MONAI EfficientNet (models.derm.network.DermClassifier) with "
                       "temperature scaling fitted on the validation split; outputs calibrated probabilities.",
        "inputs": {"image": {"type": "image", "format": "RGB", "modality": "XC (dermoscopy photograph)",
                             "num_channels": 3, "spatial_shape": [size, size], "shape": [None, 3, size, size],
                             "dtype": "float32", "value_range": [0, 1], "is_patch_data": False, "size_px": size,
                             "channel_order": "RGB",
                             "preprocessing": "models.derm.preprocess.to_derm_input (centre_crop=False)"}},
        "outputs": {"probabilities": {"type": "probabilities", "shape": [None, len(classes)], "dtype": "float32",
                                      "value_range": [0, 1], "channel_def": dict(enumerate(classes)),
                                      "meaning": "softmax(logits / temperature): calibrated class probabilities in "
                                                 "the order of `classes`"}},
        "classes": [{"index": k, "name": c, **CLASS_CODES[c]} for k, c in enumerate(classes)],
        "temperature": float(op["temperature"]),
        "thresholds": {"mel": {"value": float(op["mel_threshold"]), "output": "probabilities[:, 4]",
                               "method": op.get("method", "")}},
        "training_data": ("generated by training/synthetic/derm.py — no real patient data; NOT FOR CLINICAL USE — "
                          "trained on generated images only" if synthetic
                          else f"{config['data']['source']} under {config['data'].get('root')}"),
        "data_type": "synthetic" if synthetic else "jpeg",
        "intended_use": ("NOT FOR CLINICAL USE — trained on generated images only. Demonstration model of medgate; "
                         "its outputs say nothing about real skin lesions." if synthetic else
                         "NOT FOR CLINICAL USE. Research model; not validated for diagnosis."),
        "architecture": {"network": "monai.networks.nets.EfficientNet", "wrapper": "models.derm.network.DermClassifier",
                         **config["network"]},
    }
