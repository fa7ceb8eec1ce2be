"""Retraining from clinicians' feedback: labels from their verdicts, the training mix, the comparison.

``medgate train <model> --from-feedback DIR`` reads ``DIR`` as ``medgate export-training
--with-feedback`` writes it (``<out>/<model>``: de-identified DICOM images, ``dataset.json`` and
``feedback.json``); this package never reads the server's database.

Labels (:func:`label_of`), per reviewer from their newest verdict on the image:

* ``agree``: the model's call is the label (positive with its point, or negative);
* ``disagree`` / ``false-positive``: negative;
* ``disagree`` / ``missed-finding``: positive, at the point marked when one is;
* ``disagree`` / ``wrong-location``: positive (the finding is there), at the point marked when one is.

An image whose reviewers end at different labels is left out (counted as ``conflicting``).

The mix (:func:`mixed_datasets`, section ``feedback`` of the config, :data:`DEFAULTS`): the
feedback cases are split, stratified by label, into training and held-out cases
(``heldout_fraction``); the training set is ``generated_train`` items of the generated data the
current version was trained on (its own data config and seed, regenerated) plus each training
feedback case ``repeat`` times, so that a handful of cases steers the model without swamping
what it knows.  The network starts from the current version's weights and trains ``epochs``
passes over that set at learning rate ``lr``.

Held-out set (:func:`compare`): ``generated_test`` items of the current version's generated test
split plus the held-out feedback cases; the current version (at its registered operating point)
and the candidate (at the one chosen on ``generated_val`` generated validation items) are both
measured on it, and both figures go into the candidate's metadata (``comparison``) and model card.
"""
from __future__ import annotations

import copy
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from models.registry import METADATA_NAME, ModelManifest, ModelRegistry, semantic_version
from training.config import deep_merge, validate_config
from training.evaluate import evaluate_split, predict_split
from training.tasks.base import Evaluation, ExportSpec, Task

LABELS_FILE = "feedback.json"  # written by serving.governance.feedback_export
DATALIST_FILE = "dataset.json"
#: The ``feedback`` config section's defaults (see the module docstring).
DEFAULTS = {"generated_train": 400, "generated_val": 100, "generated_test": 200, "repeat": 4,
            "heldout_fraction": 0.3, "epochs": 2, "lr": 0.0005}
CONFLICTING = "conflicting"
HEADLINE = ("n", "n_positive", "auc", "sensitivity", "specificity", "balanced_accuracy", "ece",
            "localisation_hit_rate", "threshold")


class Rule(str, Enum):
    """Which verdict made a label."""

    AGREE = "agree"
    FALSE_POSITIVE = "false-positive"
    WRONG_LOCATION = "wrong-location"
    MISSED_FINDING = "missed-finding"


@dataclass(frozen=True)
class LabelledCase:
    """One exported image with the label its reviewers give it."""

    image: Path
    label: int
    centres: tuple[tuple[float, float], ...]
    rule: Rule


@dataclass
class FeedbackSet:
    """What ``feedback.json`` gives: the labelled cases, those left out and why, the deployed version."""

    model: str
    cases: list[LabelledCase]
    deployed_version: str | None
    skipped: Counter = field(default_factory=Counter)

    def rules(self) -> dict[str, int]:
        return dict(Counter(c.rule.value for c in self.cases))


def _centres(point: Any) -> tuple[tuple[float, float], ...]:
    if point is None:
        return ()
    if not (isinstance(point, (list, tuple)) and len(point) == 2 and all(0.0 <= float(v) <= 1.0 for v in point)):
        raise ValueError(f"a verdict's point must be [x, y] fractions in [0, 1], {point!r} is given.")
    return ((float(point[0]), float(point[1])),)


def label_of(verdict: dict, model_call: dict) -> tuple[int, tuple[tuple[float, float], ...], Rule]:
    """The label, lesion centres and rule one verdict gives (see the module docstring).

    Raises
    ------
    ValueError
        A verdict other than agree / disagree, or a disagreement whose reason is not a :class:`Rule`.
    """
    if verdict.get("verdict") == "agree":
        positive = bool(model_call.get("positive"))
        return int(positive), tuple(tuple(c) for c in model_call.get("centres") or []) if positive else (), Rule.AGREE
    if verdict.get("verdict") != "disagree":
        raise ValueError(f"a finding verdict must be agree or disagree, {verdict.get('verdict')!r} is given.")
    try:
        rule = Rule(verdict.get("reason"))
    except ValueError:
        raise ValueError(f"a disagreement's reason must be one of {[r.value for r in Rule if r is not Rule.AGREE]}, "
                         f"{verdict.get('reason')!r} is given.") from None
    if rule is Rule.FALSE_POSITIVE:
        return 0, (), rule
    return 1, _centres(verdict.get("point")), rule


def resolve(case: dict, folder: Path) -> LabelledCase | None:
    """The case's label from each reviewer's newest verdict; None when reviewers end at different labels."""
    newest: dict[str, dict] = {}
    for verdict in sorted(case.get("verdicts") or [], key=lambda v: v.get("order", 0)):
        newest[str(verdict.get("reviewer"))] = verdict
    if not newest:
        raise ValueError(f"case {case.get('image')!r} of {folder / LABELS_FILE} has no verdicts.")
    labels = [label_of(v, case.get("model_call") or {}) for v in newest.values()]
    if len({label for label, _, _ in labels}) > 1:
        return None
    latest = max(newest.values(), key=lambda v: v.get("order", 0))
    label, centres, rule = label_of(latest, case.get("model_call") or {})
    return LabelledCase((folder / case["image"]).resolve(), label, centres, rule)


def read_feedback(folder: Path, model: str) -> FeedbackSet:
    """The labelled cases of an export folder (``<out>/<model>``; ``<out>`` is accepted too).

    Raises
    ------
    FileNotFoundError
        No ``feedback.json`` there, or an image it names is missing.
    ValueError
        The file is about another model, or no case has a usable label.
    """
    folder = Path(folder)
    if not (folder / LABELS_FILE).is_file() and (folder / model / LABELS_FILE).is_file():
        folder = folder / model
    path = folder / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--from-feedback must name a folder of `medgate export-training --with-feedback` "
                                f"holding {LABELS_FILE}, {folder} is given.")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("model") != model:
        raise ValueError(f"{path} holds feedback on {data.get('model')!r}, not on {model!r}.")
    found = FeedbackSet(model, [], data.get("deployed_version"))
    for case in data.get("cases") or []:
        labelled = resolve(case, folder)
        if labelled is None:
            found.skipped[CONFLICTING] += 1
            continue
        if not labelled.image.is_file():
            raise FileNotFoundError(f"{path} names {case['image']!r}, which is not in {folder}.")
        found.cases.append(labelled)
    if not found.cases:
        raise ValueError(f"{path} has no case with a usable label ({dict(found.skipped) or 'no cases'}).")
    return found


def split(cases: list[LabelledCase], fraction: float, seed: int) -> tuple[list[LabelledCase], list[LabelledCase]]:
    """Training and held-out cases, stratified by label: ``round(fraction * n)`` of each label held
    out, at least one of a label with two or more cases, never all of one."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"`feedback.heldout_fraction` must be in [0, 1), {fraction!r} is given.")
    rng = np.random.default_rng(seed)
    train, heldout = [], []
    for label in sorted({c.label for c in cases}):
        group = [cases[i] for i in rng.permutation([i for i, c in enumerate(cases) if c.label == label])]
        n = min(len(group) - 1, max(1 if fraction and len(group) >= 2 else 0, round(fraction * len(group))))
        heldout += group[:n]
        train += group[n:]
    return train, heldout


def write_datalist(cases: list[LabelledCase], path: Path) -> Path:
    """A ``dataset.json`` of ``cases`` with their reviewed labels (absolute image paths): the record of
    what was trained or tested on, and what :func:`training.loaders.medgate_export` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"image": str(c.image), "label": c.label, "centres": [list(p) for p in c.centres], "rule": c.rule.value}
               for c in cases]
    path.write_text(json.dumps({"name": path.parent.name, "labelSource": "clinicians' verdicts (training.feedback)",
                                "numTraining": len(entries), "training": entries}, indent=1), encoding="utf-8")
    return path


def case_dataset(cases: list[LabelledCase], folder: Path, size_px: int) -> Dataset:
    """``cases`` as task items (via their datalist in ``folder``)."""
    from training.loaders import medgate_export

    return medgate_export(write_datalist(cases, Path(folder) / DATALIST_FILE).parent, size_px=size_px)


def retraining_config(base: dict[str, Any], override: dict[str, Any] | None = None,
                      seed: int | None = None) -> dict[str, Any]:
    """The current version's training config with :data:`DEFAULTS` as ``feedback``, ``override``
    merged in, the generated split sizes from ``feedback`` and the learning rate ``feedback.lr``."""
    config = deep_merge(deep_merge(base, {"feedback": DEFAULTS}), override or {})
    if seed is not None:
        config["seed"] = int(seed)
    section = config["feedback"]
    for key in ("generated_train", "generated_val", "generated_test", "repeat", "epochs"):
        if not isinstance(section.get(key), int) or section[key] < 1:
            raise ValueError(f"`feedback.{key}` must be a positive integer, {section.get(key)!r} is given.")
    config["data"] = {**config["data"], "n_train": section["generated_train"], "n_val": section["generated_val"],
                      "n_test": section["generated_test"]}
    config["train"] = {**config["train"], "lr": float(section["lr"]), "seconds": None}
    validate_config(config)
    return config


def mixed_datasets(task: Task, config: dict[str, Any], train_cases: list[LabelledCase],
                   heldout_cases: list[LabelledCase], folder: Path) -> tuple[dict[str, Dataset], dict[str, Any]]:
    """``{"train", "val", "test", "feedback_heldout"}`` (see the module docstring) and the mix as stated
    in the metadata; sets ``config["train"]["max_steps"]`` to ``feedback.epochs`` passes."""
    section, size = config["feedback"], int(config["input"]["size_px"])
    generated = task.datasets(config)
    parts = [generated["train"]]
    if train_cases:
        parts += [case_dataset(train_cases, Path(folder) / "feedback-train", size)] * int(section["repeat"])
    test_parts = [generated["test"]]
    heldout = case_dataset(heldout_cases, Path(folder) / "feedback-heldout", size) if heldout_cases else None
    if heldout is not None:
        test_parts.append(heldout)
    datasets = {"train": ConcatDataset(parts), "val": generated["val"], "test": ConcatDataset(test_parts),
                "feedback_heldout": heldout}
    n_train = len(datasets["train"])
    config["train"]["max_steps"] = max(1, math.ceil(section["epochs"] * n_train / config["train"]["batch_size"]))
    draws = len(train_cases) * section["repeat"]
    mix = {"generated_train": len(generated["train"]), "feedback_train": len(train_cases),
           "repeat": section["repeat"], "feedback_share_of_draws": round(draws / n_train, 4),
           "feedback_heldout": len(heldout_cases), "generated_val": len(generated["val"]),
           "generated_test": len(generated["test"]), "epochs": section["epochs"],
           "steps": config["train"]["max_steps"], "lr": section["lr"],
           "rules": dict(Counter(c.rule.value for c in train_cases + heldout_cases))}
    return datasets, mix


class WarmStart(Task):
    """``task`` with its network starting from ``weights`` (the current version's) instead of afresh."""

    def __init__(self, task: Task, weights: dict[str, torch.Tensor]) -> None:
        self.task, self.weights, self.name = task, copy.deepcopy(weights), task.name

    def build_network(self, config: dict[str, Any]) -> nn.Module:
        network = self.task.build_network(config)
        network.load_state_dict(self.weights)
        return network

    def default_config(self) -> dict[str, Any]:
        return self.task.default_config()

    def datasets(self, config: dict[str, Any]) -> dict[str, Dataset]:
        return self.task.datasets(config)

    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.task.training_step(network, batch)

    def predict(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return self.task.predict(network, batch)

    def evaluate(self, predictions, config, operating_point=None) -> Evaluation:
        return self.task.evaluate(predictions, config, operating_point)

    def export_spec(self, network: nn.Module, config: dict[str, Any]) -> ExportSpec:
        return self.task.export_spec(network, config)

    def metadata(self, config: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
        return self.task.metadata(config, evaluation)


def headline(evaluation: Evaluation) -> dict[str, Any]:
    """The scalar metrics of :data:`HEADLINE` (rounded)."""
    metrics = evaluation.metrics
    return {k: round(metrics[k], 4) if isinstance(metrics[k], float) else metrics[k] for k in HEADLINE if k in metrics}


def _calls_right(task: Task, network: nn.Module, dataset: Dataset | None, threshold: float) -> dict[str, Any]:
    if dataset is None:
        return {"n": 0, "correct": 0, "accuracy": None}
    predicted = predict_split(task, network, dataset)
    right = int(np.sum((predicted["probability"] >= threshold) == (predicted["label"] >= 0.5)))
    return {"n": int(len(dataset)), "correct": right, "accuracy": round(right / len(dataset), 4)}


def compare(task: Task, current: ModelManifest, current_network: nn.Module, candidate_network: nn.Module,
            candidate_test: Evaluation, datasets: dict[str, Dataset], config: dict[str, Any]) -> dict[str, Any]:
    """Current and candidate on the same held-out set (``datasets["test"]``), each at its operating
    point, plus their right calls on the held-out feedback cases alone."""
    current_test = evaluate_split(task, current_network, datasets["test"], config, current.operating_point)
    heldout = datasets.get("feedback_heldout")
    candidate_threshold = float(candidate_test.operating_point["threshold"])
    return {"heldout": {"n": len(datasets["test"]), "generated": len(datasets["test"]) - (len(heldout) if heldout else 0),
                        "feedback": len(heldout) if heldout else 0,
                        "description": "generated test split of the current version's data config + held-out "
                                       "feedback cases"},
            "current": {"version": current.version, "metrics": headline(current_test),
                        "feedback_heldout": _calls_right(task, current_network, heldout, current.threshold)},
            "candidate": {"metrics": headline(candidate_test),
                          "feedback_heldout": _calls_right(task, candidate_network, heldout, candidate_threshold)}}


def next_version(registry: ModelRegistry, name: str) -> str:
    """The next minor version after ``name``'s newest (``1.1.0`` -> ``1.2.0``)."""
    major, minor, _ = semantic_version(registry.versions(name)[-1])
    return f"{major}.{minor + 1}.0"


def card_metadata(feedback: FeedbackSet, mix: dict[str, Any], comparison: dict[str, Any]) -> dict[str, Any]:
    """Metadata keys of the candidate that say what it was trained on and how it compares (replacing
    the task's "generated only" data source and intended use)."""
    version, n = comparison["current"]["version"], mix["feedback_train"]
    return {
        "data_source": f"{mix['generated_train']} synthetic images (training/synthetic, {feedback.model} {version}'s "
                       f"data config and seed) + {n} clinician-labelled images of a de-identified export",
        "data_type": "synthetic+dicom",
        "intended_use": f"NOT FOR CLINICAL USE. Demonstration model of medgate, trained on generated data + {n} "
                        f"feedback cases (fine-tuned from {version}); not validated for diagnosis.",
        "feedback": {"mix": mix, "left_out": dict(feedback.skipped), "deployed_version": feedback.deployed_version},
        "comparison": comparison,
    }


def summary_line(comparison: dict[str, Any]) -> str:
    """``held-out AUC 0.912 vs 0.887 of 1.1.0 on the same set (n 230, 30 feedback)``."""
    cand, cur, held = comparison["candidate"]["metrics"], comparison["current"]["metrics"], comparison["heldout"]
    fmt = (lambda v: f"{v:.3f}" if isinstance(v, float) else "n/a")
    return (f"held-out AUC {fmt(cand.get('auc'))} vs {fmt(cur.get('auc'))} of {comparison['current']['version']}, "
            f"balanced accuracy {fmt(cand.get('balanced_accuracy'))} vs {fmt(cur.get('balanced_accuracy'))}, on the "
            f"same set (n {held['n']}: {held['generated']} generated + {held['feedback']} feedback)")


def annotate(folder: Path, extra: dict[str, Any], before_key: str) -> None:
    """Merge ``extra`` into the version's ``metadata.json``, and the current version's figures into its
    ``metrics`` as ``before_key`` (so the model card's metrics table shows both)."""
    path = Path(folder) / METADATA_NAME
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.update(extra)
    current = extra["comparison"]["current"]["metrics"]
    meta["metrics"][before_key] = {k: v for k, v in current.items() if isinstance(v, (int, float))}
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=float) + "\n", encoding="utf-8")
    partial.replace(path)
