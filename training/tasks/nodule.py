"""The ``nodule`` task: lung-nodule detection on chest CT by 3D segmentation and connected components.

Data: generated CT volumes (:mod:`training.synthetic.ct`), one independent seed stream per split,
preprocessed by :func:`models.nodule.preprocess.window_hu` (the generated spacing is the model
spacing).  Train items are random patches (``input.train_patch_vox``), centred on a nodule voxel
with probability ``input.positive_fraction``, with random flips: ``image`` float32 (1, D, H, W)
in [0, 1] and ``label`` float32 nodule mask.  Validation / test items are whole volumes:
``volume`` (1, Z, Y, X), ``label``, ``nodules`` float32 (4, 5) rows ``z, y, x`` (voxels),
``diameter_mm``, ``valid`` and ``spacing_mm`` (3,).  Real CT (``data.source`` other than
``synthetic``, e.g. LUNA16) needs a loader in :mod:`training.loaders` and is refused until one
exists.

Network: :class:`models.nodule.network.NoduleNet` (MONAI SegResNet).  Loss: Dice + BCE
(``monai.losses.DiceCELoss`` with sigmoid, batch Dice).  Prediction: sliding-window inference
over each whole volume, then connected components -> candidates (peak probability, centre,
equivalent diameter).  Metrics: FROC (LUNA16 points 1/8..8 FPs per scan, CPM; a candidate hits a
nodule when its centre lies within the nodule radius), sensitivity and FPs per scan at the
operating threshold (all nodules, >= 8 mm, < 8 mm), scan-level AUC (max candidate probability vs.
any nodule), voxel Dice of the candidate segments and the diameter error of hits.  The
operating threshold on candidate probability is the lowest one that keeps validation FPs per
scan within ``eval.target_fp_per_scan``.  Prediction is the serving path
(:func:`models.nodule.inference.segment_volume`: candidates only inside the lung mask, segments
bounded by density, tube-shaped segments dropped as vessels by ``eval.max_elongation``, chosen on
the validation split).

Shift: the test split also holds volumes of a second, independent generator
(:mod:`training.synthetic.ct_phantom2`; ``shift`` config): lesion-free volumes, lesion-free
air-heavy ones (the body a small part of a wide field of view) and volumes with one nodule.  The
FROC and the metrics above are read on the training generator's volumes only; on the shift
volumes the evaluation reports false positives per volume of each kind, sensitivity, the
over-segmentation ratio of hits (segment volume over true nodule volume) and the number of
candidates lying wholly in air (every voxel below -950 HU).  Test items are padded with air to
one shape so that they batch; ``shape`` gives each one's own.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn
from torch.utils.data import Dataset

from models.nodule.inference import segment_volume
from models.nodule.network import NoduleNet, NoduleNetConfig, NoduleProbability
from models.nodule.postprocess import MAX_ELONGATION, SOLID_HU, candidates_array, label_maximum
from models.nodule.preprocess import window_hu
from training import metrics as M
from training.tasks.base import Evaluation, ExportSpec, Task

#: SNOMED CT 786838002 "Nodule of lung (disorder)", synonym "Pulmonary nodule"; it subsumes
#: "Multiple nodules of lung" (the solitary-nodule concept 427359005 is no longer a child of it).
FINDING = {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"}
MAX_NODULES = 4
LARGE_NODULE_MM = 8.0
#: Shift volume kinds (``source`` of a test item; 0 is the training generator).
SHIFT_KINDS = {1: "lesion_free", 2: "air_heavy", 3: "nodule"}
#: A candidate whose every voxel is below this lies in air (outside the patient or in the lumen of an airway).
AIR_HU = -950.0
NOT_FOR_CLINICAL_USE = ("NOT FOR CLINICAL USE — trained on generated CT volumes only. Demonstration model of "
                        "medgate; its outputs say nothing about real patients.")


def _generate(job: tuple[int, int, int, tuple, tuple, tuple]):
    """One generated, windowed volume: (volume01, mask, nodules (4, 5))."""
    from training.synthetic.ct import generate_ct

    seed, split, index, shape, spacing, window = job
    sample = generate_ct(np.random.default_rng([seed, split, index]), tuple(shape), tuple(spacing))
    nodules = np.zeros((MAX_NODULES, 5), dtype=np.float32)
    for k, nod in enumerate(sample.nodules[:MAX_NODULES]):
        nodules[k] = (*nod.centre_vox, nod.diameter_mm, 1.0)
    return window_hu(sample.volume_hu, window), sample.nodule_mask.astype(np.uint8), nodules


def _generate_shift(job: tuple[int, int, int, tuple, tuple, tuple, float]):
    """One second-generator volume of kind ``source``: (volume01, mask, nodules (4, 5))."""
    from training.synthetic.ct_phantom2 import generate_phantom

    seed, source, index, shape, spacing, window, body_fraction = job
    rng = np.random.default_rng([seed, 100 + source, index])
    sample = generate_phantom(rng, tuple(shape), tuple(spacing), n_nodules=int(source == 3),
                              body_fraction=body_fraction if source == 2 else None)
    nodules = np.zeros((MAX_NODULES, 5), dtype=np.float32)
    for k, nod in enumerate(sample.nodules[:MAX_NODULES]):
        nodules[k] = (*nod.centre_vox, nod.diameter_mm, 1.0)
    return window_hu(sample.volume_hu, window), sample.nodule_mask.astype(np.uint8), nodules


def generate_shift_volumes(seed: int, shift: dict[str, Any], data: dict[str, Any], window) -> list[tuple]:
    """The shift set: ``(source, volume)`` pairs, ``shift.n_<kind>`` volumes of each kind."""
    jobs = [(seed, source, i, tuple(shift["shape_vox"]), tuple(data["spacing_mm"]), tuple(window),
             float(shift["air_heavy_body_fraction"]))
            for source, kind in SHIFT_KINDS.items() for i in range(int(shift[f"n_{kind}"]))]
    return [(job[1], _generate_shift(job)) for job in jobs]


def generate_volumes(n: int, seed: int, split: int, data: dict[str, Any], window) -> list[tuple]:
    """``n`` generated volumes of one split; each depends only on (seed, split, index)."""
    jobs = [(seed, split, i, tuple(data["shape_vox"]), tuple(data["spacing_mm"]), tuple(window)) for i in range(n)]
    workers = int(data.get("workers", 1))
    if workers > 1 and n > 1:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return list(pool.map(_generate, jobs, chunksize=4))
    return [_generate(job) for job in jobs]


class PatchDataset(Dataset):
    """Random training patches of whole volumes (crops drawn from numpy's global generator)."""

    def __init__(self, volumes: list[tuple], patch_vox, positive_fraction: float) -> None:
        self.volumes = volumes
        self.patch = tuple(int(v) for v in patch_vox)
        self.positive_fraction = float(positive_fraction)
        self.foreground = [np.argwhere(mask > 0) for _, mask, _ in volumes]
        for vol, _, _ in volumes:
            if any(p > s for p, s in zip(self.patch, vol.shape)):
                raise ValueError(f"`input.train_patch_vox` {self.patch} must fit the volumes {vol.shape}.")

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume, mask, _ = self.volumes[index]
        fg, shape = self.foreground[index], np.asarray(volume.shape)
        half = np.asarray(self.patch) // 2
        if fg.size and np.random.random() < self.positive_fraction:
            centre = fg[np.random.randint(len(fg))] + np.random.randint(-half // 2, half // 2 + 1)
        else:
            centre = np.array([np.random.randint(0, s) for s in shape])
        start = np.clip(centre - half, 0, shape - np.asarray(self.patch))
        box = tuple(slice(int(a), int(a) + p) for a, p in zip(start, self.patch))
        image, label = volume[box], mask[box].astype(np.float32)
        for axis in (0, 2):  # craniocaudal and left-right flips
            if np.random.random() < 0.5:
                image, label = np.flip(image, axis), np.flip(label, axis)
        image = image * np.float32(np.random.uniform(0.9, 1.1)) + np.float32(np.random.uniform(-0.05, 0.05))
        return {"image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None],
                "label": torch.from_numpy(np.ascontiguousarray(label))[None]}


class VolumeDataset(Dataset):
    """Whole preprocessed volumes with their nodule lists, for validation and testing.

    ``sources`` tags each volume (0 the training generator, else a key of :data:`SHIFT_KINDS`);
    volumes of different shapes are padded with air (0 after windowing) to the largest, and
    ``shape`` gives each one's own.
    """

    def __init__(self, volumes: list[tuple], spacing_mm, sources: list[int] | None = None) -> None:
        self.volumes = volumes
        self.sources = list(sources) if sources is not None else [0] * len(volumes)
        if len(self.sources) != len(volumes):
            raise ValueError(f"`sources` must tag each of the {len(volumes)} volumes, {len(self.sources)} are given.")
        self.spacing = torch.tensor([float(v) for v in spacing_mm], dtype=torch.float32)
        self.shape = tuple(int(max(v[0].shape[a] for v in volumes)) for a in range(3)) if volumes else (0, 0, 0)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        volume, mask, nodules = self.volumes[index]
        pad = [(0, n - s) for n, s in zip(self.shape, volume.shape)]
        return {"volume": torch.from_numpy(np.pad(volume, pad))[None], "label": torch.from_numpy(np.pad(mask, pad))[None],
                "nodules": torch.from_numpy(nodules), "spacing_mm": self.spacing.clone(),
                "shape": torch.tensor(volume.shape), "source": torch.tensor(self.sources[index])}


def match_candidates(cand_mm: np.ndarray, truth_mm: np.ndarray, diam_mm: np.ndarray) -> np.ndarray:
    """Index of the nodule each candidate hits (centre within the nodule radius; nearest), or -1."""
    if len(cand_mm) == 0 or len(truth_mm) == 0:
        return np.full(len(cand_mm), -1, dtype=int)
    dist = np.linalg.norm(cand_mm[:, None, :] - truth_mm[None, :, :], axis=2)
    dist = np.where(dist <= diam_mm[None, :] / 2.0, dist, np.inf)
    return np.where(np.isfinite(dist).any(axis=1), dist.argmin(axis=1), -1)


def _scans(predictions: dict[str, np.ndarray], source: int | None = 0):
    """Per scan of ``source`` (all when ``None``): candidate centres (mm), probabilities, diameters,
    truth centres (mm), diameters, hits."""
    sources = predictions.get("source", np.zeros(len(predictions["candidates"]), dtype=int))
    for cands, nods, spacing, src in zip(predictions["candidates"], predictions["nodules"], predictions["spacing_mm"],
                                         sources):
        if source is not None and int(src) != source:
            continue
        c, t = cands[cands[:, 5] > 0], nods[nods[:, 4] > 0]
        c_mm, t_mm = c[:, :3] * spacing, t[:, :3] * spacing
        yield c_mm, c[:, 4], c[:, 3], t_mm, t[:, 3], match_candidates(c_mm, t_mm, t[:, 3])


def _n_scans(predictions: dict[str, np.ndarray], source: int = 0) -> int:
    return int(np.sum(predictions.get("source", np.zeros(len(predictions["candidates"]), dtype=int)) == source))


def shift_metrics(predictions: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """At ``threshold``, on the second generator's volumes: false positives per volume of each kind,
    sensitivity on the nodule volumes, the median over-segmentation of hits (segment volume over
    the true nodule's sphere volume) and candidates wholly in air (every voxel below :data:`AIR_HU`)."""
    out: dict[str, Any] = {}
    sources = predictions.get("source", np.zeros(len(predictions["candidates"]), dtype=int))
    for source, kind in SHIFT_KINDS.items():
        scans = list(_scans(predictions, source))
        if not scans:
            continue
        cands = [[(c, p) for c, p in zip(c_mm, prob) if p >= threshold] for c_mm, prob, *_ in scans]
        truths = [list(zip(t_mm, t_diam)) for _, _, _, t_mm, t_diam, _ in scans]
        counts = M.detection_counts(cands, truths)
        out[f"shift_fp_per_volume_{kind}"] = counts["fp_per_scan"]
        out[f"shift_n_{kind}"] = len(scans)
        if counts["n_lesions"]:
            out["shift_sensitivity"] = counts["sensitivity"]
            ratios = [float(v) / (np.pi * d ** 3 / 6.0)
                      for c_mm, prob, c_diam, t_mm, t_diam, hits in scans for v, d, p, h in
                      zip(np.pi * c_diam ** 3 / 6.0, t_diam[np.maximum(hits, 0)] if len(t_diam) else [], prob, hits)
                      if p >= threshold and h >= 0]
            out["shift_oversegmentation"] = float(np.median(ratios)) if ratios else None
    if "segment_max_hu" in predictions:
        shifted = sources > 0
        in_air = (predictions["segment_max_hu"] < AIR_HU) & (predictions["candidates"][..., 5] > 0) \
            & (predictions["candidates"][..., 4] >= threshold)
        out["shift_candidates_in_air"] = int(in_air[shifted].sum())
    return out


def froc(predictions: dict[str, np.ndarray], fp_per_scan=M.FROC_FP_PER_SCAN) -> dict[str, Any]:
    """LUNA16 FROC with the same result keys as :func:`training.metrics.froc`, also for nodule-free scans.

    A nodule counts once, at its highest-probability hit; further hits on it are neither TP nor FP.
    """
    events: list[tuple[float, int]] = []
    n_nodules = 0
    for _, prob, _, _, t_diam, hits in _scans(predictions):
        n_nodules += len(t_diam)
        events += [(float(p), 0) for p in prob[hits < 0]]
        events += [(float(prob[hits == k].max()), 1) for k in range(len(t_diam)) if (hits == k).any()]
    if n_nodules == 0:
        raise ValueError("FROC needs at least one nodule, the scans given hold none.")
    events.sort(key=lambda e: -e[0])
    scores = np.array([e[0] for e in events])
    is_tp = np.array([e[1] for e in events], dtype=bool)
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if events else np.array([], dtype=int)
    n_scans = _n_scans(predictions)
    fps = np.r_[0.0, np.cumsum(~is_tp)[last] / n_scans]
    sens = np.r_[0.0, np.cumsum(is_tp)[last] / n_nodules]
    at = [float(sens[fps <= f].max()) for f in fp_per_scan]
    return {"fp_per_scan": [float(f) for f in fp_per_scan], "sensitivity": at, "cpm": float(np.mean(at)),
            "curve_fp_per_scan": fps.tolist(), "curve_sensitivity": sens.tolist()}


def detection_at(predictions: dict[str, np.ndarray], threshold: float) -> dict[str, Any]:
    """Sensitivity (all, >= 8 mm, < 8 mm), FPs per scan and diameter error at a candidate threshold."""
    found, total, fps, errors = {"all": 0, "large": 0, "small": 0}, {"all": 0, "large": 0, "small": 0}, 0, []
    for _, prob, c_diam, _, t_diam, hits in _scans(predictions):
        keep = prob >= threshold
        fps += int(np.sum(keep & (hits < 0)))
        for k, d in enumerate(t_diam):
            group = "large" if d >= LARGE_NODULE_MM else "small"
            hit = keep & (hits == k)
            total["all"] += 1
            total[group] += 1
            if hit.any():
                found["all"] += 1
                found[group] += 1
                errors.append(abs(float(c_diam[hit][np.argmax(prob[hit])]) - float(d)))
    n = _n_scans(predictions)
    sens = {g: (found[g] / total[g] if total[g] else None) for g in total}
    return {"sensitivity": sens["all"], "sensitivity_ge8mm": sens["large"], "sensitivity_lt8mm": sens["small"],
            "fp_per_scan": fps / n, "n_nodules": total["all"], "n_nodules_ge8mm": total["large"],
            "diameter_abs_error_mm": float(np.mean(errors)) if errors else None}


def choose_threshold(predictions: dict[str, np.ndarray], target_fp_per_scan: float) -> float:
    """Lowest candidate threshold whose FPs per scan stay within ``target_fp_per_scan`` (in [0.05, 0.99])."""
    probs = np.unique(np.concatenate([p for _, p, *_ in _scans(predictions)] + [np.array([0.99])]))
    for thr in np.sort(probs):
        if detection_at(predictions, float(thr))["fp_per_scan"] <= target_fp_per_scan:
            return float(np.clip(thr, 0.05, 0.99))
    return 0.99


class NoduleTask(Task):
    """Lung-nodule detection (segmentation + components) on chest CT."""

    name = "nodule"

    def default_config(self) -> dict[str, Any]:
        return {
            "seed": 0,
            "data": {"source": "synthetic", "root": None, "n_train": 48, "n_val": 12, "n_test": 16,
                     "shape_vox": [64, 96, 96], "spacing_mm": [1.25, 0.7, 0.7], "workers": 2},
            "input": {"patch_vox": [64, 64, 64], "train_patch_vox": [32, 48, 48], "spacing_mm": [1.25, 0.7, 0.7],
                      "window_hu": [-1000.0, 400.0], "positive_fraction": 0.7},
            "network": NoduleNetConfig().as_dict(),
            "train": {"batch_size": 2, "eval_batch_size": 2, "lr": 0.003, "weight_decay": 0.0, "max_steps": 240,
                      "seconds": None, "amp": True, "checkpoint_every": 50, "num_workers": 0, "schedule": "cosine"},
            "eval": {"overlap": 0.25, "component_threshold": 0.5, "min_volume_mm3": 4.0, "max_candidates": 32,
                     "target_fp_per_scan": 1.0, "search_region": "lung_mask", "solid_hu": SOLID_HU,
                     "max_elongation": MAX_ELONGATION},
            # at least the 64-slice patch deep: thinner volumes are padded with air in z, which the
            # model never saw (1.0.0 then misses every nodule; models/nodule/card_notes.md)
            "shift": {"n_lesion_free": 4, "n_air_heavy": 4, "n_nodule": 6, "shape_vox": [64, 448, 448],
                      "air_heavy_body_fraction": 0.5},
        }

    def configure(self, config: dict[str, Any]) -> None:
        """Keep the sliding-window and component settings ``predict`` needs (its signature has no config);
        called by :meth:`build_network` and :meth:`datasets`."""
        self._eval_cfg = {**self.default_config()["eval"], **config.get("eval", {})}
        inp = {**self.default_config()["input"], **config.get("input", {})}
        self._patch_vox, self._window = list(inp["patch_vox"]), tuple(float(v) for v in inp["window_hu"])

    def build_network(self, config: dict[str, Any]) -> nn.Module:
        self.configure(config)
        arch = dict(config.get("network", {}))
        for key in ("blocks_down", "blocks_up"):
            if key in arch:
                arch[key] = tuple(arch[key])
        return NoduleNet(NoduleNetConfig(**arch))

    def datasets(self, config: dict[str, Any]) -> dict[str, Dataset]:
        self.configure(config)
        data, inp, seed = config["data"], config["input"], int(config["seed"])
        source = data.get("source", "synthetic")
        if source != "synthetic":
            raise ValueError(f"`data.source` must be 'synthetic' (no real-CT loader such as LUNA16 exists yet in "
                             f"training.loaders), {source!r} is given.")
        if [float(v) for v in data["spacing_mm"]] != [float(v) for v in inp["spacing_mm"]]:
            raise ValueError(f"`data.spacing_mm` must equal the model `input.spacing_mm` {inp['spacing_mm']}, "
                             f"{data['spacing_mm']} is given.")
        splits = {name: generate_volumes(int(data[f"n_{name}"]), seed, k, data, inp["window_hu"])
                  for k, name in enumerate(("train", "val", "test"), start=1)}
        shift = generate_shift_volumes(seed, {**self.default_config()["shift"], **config.get("shift", {})}, data,
                                       inp["window_hu"])
        return {"train": PatchDataset(splits["train"], inp["train_patch_vox"], inp["positive_fraction"]),
                "val": VolumeDataset(splits["val"], inp["spacing_mm"]),
                "test": VolumeDataset(splits["test"] + [v for _, v in shift], inp["spacing_mm"],
                                      [0] * len(splits["test"]) + [k for k, _ in shift])}

    def training_step(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not hasattr(self, "_loss"):
            self._loss = DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
        logits = network(batch["image"])
        return self._loss(logits.float(), batch["label"].float())

    def predict(self, network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        device = next(network.parameters()).device

        def run(x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(network(x.to(device)).float()).cpu()

        return self.predict_with(run, batch)

    def predict_with(self, run, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """:meth:`predict` with any patch runner (a batch of patches -> probabilities, e.g.
        :func:`models.nodule.inference.onnx_runner` of an exported or quantised model)."""
        cfg = getattr(self, "_eval_cfg", None) or self.default_config()["eval"]
        patch = getattr(self, "_patch_vox", None) or self.default_config()["input"]["patch_vox"]
        window = getattr(self, "_window", None) or tuple(self.default_config()["input"]["window_hu"])
        max_candidates = int(cfg["max_candidates"])
        cands, dice, max_hu = [], [], []
        spacings = batch["spacing_mm"].cpu().numpy()
        volumes, labels = batch["volume"].cpu().numpy(), batch["label"].cpu().numpy()
        shapes = batch["shape"].cpu().numpy() if "shape" in batch else [v.shape[1:] for v in volumes]
        for volume, label, spacing, shape in zip(volumes, labels, spacings, shapes):
            own = tuple(slice(0, int(n)) for n in shape)
            volume01 = volume[0][own]
            found = segment_volume(run, volume01, spacing, window=window, roi_size=patch,
                                   overlap=float(cfg["overlap"]), component_threshold=float(cfg["component_threshold"]),
                                   min_volume_mm3=float(cfg["min_volume_mm3"]),
                                   lung_search=cfg.get("search_region", "lung_mask") == "lung_mask",
                                   solid_hu=cfg.get("solid_hu", SOLID_HU),
                                   max_elongation=cfg.get("max_elongation", MAX_ELONGATION))
            cands.append(candidates_array(found.candidates, max_candidates))
            hu = window[0] + volume01 * (window[1] - window[0])
            peaks = np.full(max_candidates, np.nan, dtype=np.float32)
            if found.candidates:
                shown = min(len(found.candidates), max_candidates)
                where = np.nonzero(found.labels)
                peaks[:shown] = label_maximum(hu[where], found.labels[where], len(found.candidates))[:shown]
            max_hu.append(peaks)
            pred, truth = found.labels > 0, label[0][own] > 0
            dice.append([np.sum(pred & truth), pred.sum(), truth.sum()])
        return {"candidates": np.stack(cands), "dice_counts": np.asarray(dice, dtype=np.float64),
                "nodules": batch["nodules"].cpu().numpy(), "spacing_mm": spacings,
                "segment_max_hu": np.stack(max_hu),
                "source": (batch["source"].cpu().numpy() if "source" in batch
                           else np.zeros(len(volumes), dtype=np.int64))}

    def evaluate(self, predictions: dict[str, np.ndarray], config: dict[str, Any],
                 operating_point: dict[str, Any] | None = None) -> Evaluation:
        cfg = config.get("eval", {})
        target = float(cfg.get("target_fp_per_scan", 1.0))
        threshold = (choose_threshold(predictions, target) if operating_point is None
                     else float(operating_point["threshold"]))
        scans = list(_scans(predictions))
        curve = froc(predictions)
        has_nodule = np.array([len(s[3]) > 0 for s in scans], dtype=int)
        scan_score = np.array([float(s[1].max()) if len(s[1]) else 0.0 for s in scans])
        own = predictions.get("source", np.zeros(len(predictions["candidates"]), dtype=int)) == 0
        counts = predictions["dice_counts"][own].sum(axis=0)
        metrics = {"n_scans": len(scans), "cpm": curve["cpm"],
                   "froc": {f"{f:g}": s for f, s in zip(curve["fp_per_scan"], curve["sensitivity"])},
                   "threshold": threshold, **detection_at(predictions, threshold),
                   "scan_auc": (M.roc_auc(has_nodule, scan_score) if 0 < has_nodule.sum() < len(has_nodule)
                                else None),
                   "dice": float(2 * counts[0] / max(counts[1] + counts[2], 1.0)),
                   "hit_criterion": "candidate centre within the nodule radius",
                   **shift_metrics(predictions, threshold)}
        point = (metrics["fp_per_scan"], metrics["sensitivity"])
        return Evaluation(metrics=metrics, plots={"froc": lambda ax: _plot_froc(ax, curve, point)},
                          operating_point={"threshold": threshold,
                                           "component_threshold": float(cfg.get("component_threshold", 0.5)),
                                           "method": f"lowest candidate probability with at most {target:g} "
                                                     "false positives per scan on the validation split"})

    def export_spec(self, network: nn.Module, config: dict[str, Any]) -> ExportSpec:
        patch = [int(v) for v in config["input"]["patch_vox"]]
        example = torch.rand((2, 1, *patch), generator=torch.Generator().manual_seed(0))
        return ExportSpec(module=NoduleProbability(network).eval(), example_inputs=(example,),
                          input_names=["image"], output_names=["probability"])

    def metadata(self, config: dict[str, Any], evaluation: Evaluation) -> dict[str, Any]:
        inp, cfg = config["input"], config.get("eval", {})
        patch = [int(v) for v in inp["patch_vox"]]
        return {
            "task": "Detection of lung nodules on chest CT (3D segmentation, connected components to candidates "
                    "with centre, equivalent diameter and probability)",
            "description": "Small MONAI SegResNet (models.nodule.network.NoduleNet) applied by sliding windows.",
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": patch, "shape": [None, 1, *patch], "dtype": "float32",
                                 "value_range": [0, 1], "is_patch_data": True, "axes": "z, y, x",
                                 "spacing_mm": [float(v) for v in inp["spacing_mm"]],
                                 "window_hu": [float(v) for v in inp["window_hu"]],
                                 "preprocessing": "models.nodule.preprocess.prepare_volume (clip HU to the window, "
                                                  "scale to 0..1, resample to spacing_mm), then "
                                                  "models.nodule.inference.infer_volume sliding windows"}},
            "outputs": {"probability": {"type": "probabilities", "shape": [None, 1, *patch], "dtype": "float32",
                                        "value_range": [0, 1], "meaning": "per-voxel nodule probability; "
                                        "candidates by models.nodule.postprocess.extract_candidates"}},
            "finding": FINDING,
            "finding_reference": "http://snomed.info/id/786838002",
            "threshold": float(evaluation.operating_point["threshold"]),
            "postprocessing": {"component_threshold": float(cfg.get("component_threshold", 0.5)),
                               "min_volume_mm3": float(cfg.get("min_volume_mm3", 4.0)),
                               "sliding_window_overlap": float(cfg.get("overlap", 0.25)),
                               "search_region": cfg.get("search_region", "lung_mask"),
                               "solid_hu": cfg.get("solid_hu", SOLID_HU),
                               "max_elongation": cfg.get("max_elongation", MAX_ELONGATION),
                               "candidate_probability": "peak voxel probability of the component",
                               "diameter": "equivalent-sphere diameter of the segment volume",
                               "shape": "segments more elongated than max_elongation (square root of the "
                                        "covariance eigenvalue ratio in mm) are vessels and dropped"},
            "patch_size_vox": patch,
            "training_data": "generated by training/synthetic/ct.py — no real patient data",
            "data_type": "synthetic",
            "intended_use": NOT_FOR_CLINICAL_USE,
            "architecture": {"network": "monai.networks.nets.SegResNet", "wrapper": "models.nodule.network.NoduleNet",
                             **config["network"]},
        }


def _plot_froc(ax, froc: dict[str, Any], point: tuple[float, float]) -> None:
    fps = np.maximum(np.asarray(froc["curve_fp_per_scan"]), 1e-3)
    ax.step(fps, froc["curve_sensitivity"], where="post", lw=2, label=f"CPM {froc['cpm']:.3f}")
    ax.plot(froc["fp_per_scan"], froc["sensitivity"], "o", c="C1", label="LUNA16 points")
    ax.plot(max(point[0], 1e-3), point[1] or 0.0, "s", c="C3", label="operating point")
    ax.set(xscale="log", xlim=(0.1, 10), ylim=(0, 1.01), xlabel="false positives per scan", ylabel="sensitivity",
           title="FROC (held-out)")
    ax.legend(loc="lower right")


TASK = NoduleTask()
