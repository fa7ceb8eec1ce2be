"""CT volume datasets: LUNA16 nodules and Medical Segmentation Decathlon datalists.

LUNA16 items (one per scan; nodule counts differ, so batch them one at a time):
``image`` float32 (1, Z, Y, X) in Hounsfield units, ``spacing_mm`` float32 (3,) as (z, y, x),
``origin_mm`` float32 (3,) as (x, y, z), ``nodules`` float32 (K, 4): voxel centre (z, y, x) and
diameter in mm, from ``annotations.csv`` (world mm -> voxel via Offset, ElementSpacing and
TransformMatrix), and ``seriesuid``.

Decathlon items: ``image`` float32 and, for training entries, ``label`` float32 arrays as stored
(z, y, x[, channel]) from ``.nii``/``.nii.gz``, ``.mhd`` or ``.npy`` files named in the datalist.

Layouts::

    <root>/annotations.csv                 # seriesuid,coordX,coordY,coordZ,diameter_mm
    <root>/subset*/<seriesuid>.mhd + .raw

    <root>/dataset.json                    # {"training": [{"image": .., "label": ..}], "test": [..]}
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from training.data import ListDataset
from training.loaders.volumes import read_mhd, read_nifti


def read_volume(path: Path) -> np.ndarray:
    """A volume as float32 from ``.nii``/``.nii.gz``, ``.mhd`` or ``.npy``."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)[0]
    if name.endswith(".mhd"):
        return read_mhd(path)[0].astype(np.float32)
    if name.endswith(".npy"):
        return np.load(path).astype(np.float32)
    raise ValueError(f"`path` must be a .nii, .nii.gz, .mhd or .npy file, {path} is given.")


def luna16_annotations(csv_path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """Series UID -> nodules as (x, y, z, diameter) in world millimetres."""
    out: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.setdefault(row["seriesuid"].strip(), []).append(
                tuple(float(row[k]) for k in ("coordX", "coordY", "coordZ", "diameter_mm")))
    return out


def _luna_item(path: Path, nodules: list[tuple[float, float, float, float]]) -> dict:
    volume, header = read_mhd(path)
    world = np.array([n[:3] for n in nodules], dtype=np.float64).reshape(-1, 3)
    voxels = header.world_to_voxel(world) if len(nodules) else np.zeros((0, 3))
    table = np.concatenate([voxels, np.array([n[3] for n in nodules]).reshape(-1, 1)], axis=1)
    return {"image": torch.from_numpy(volume.astype(np.float32)[None]),
            "spacing_mm": torch.tensor(header.spacing_mm[::-1].copy(), dtype=torch.float32),
            "origin_mm": torch.tensor(header.origin_mm, dtype=torch.float32),
            "nodules": torch.tensor(table, dtype=torch.float32), "seriesuid": path.stem}


def luna16(root: Path) -> ListDataset:
    """LUNA16 scans under ``root`` (any ``subset*`` folder), sorted by series UID."""
    root = Path(root)
    csv_path = root / "annotations.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"`root` must hold LUNA16's annotations.csv, {root} is given.")
    annotations = luna16_annotations(csv_path)
    scans = sorted(root.rglob("*.mhd"), key=lambda p: p.stem)
    if not scans:
        raise FileNotFoundError(f"no .mhd volumes under {root}.")
    return ListDataset([(p, annotations.get(p.stem, [])) for p in scans], lambda r: _luna_item(*r))


def decathlon(datalist: Path, section: str = "training", root: Path | None = None) -> ListDataset:
    """Entries of ``section`` in a Decathlon-style datalist JSON; paths relative to ``root`` (its folder)."""
    datalist = Path(datalist)
    if not datalist.is_file():
        raise FileNotFoundError(f"`datalist` must be an existing JSON file, {datalist} is given.")
    data = json.loads(datalist.read_text(encoding="utf-8"))
    if section not in data or not isinstance(data[section], list):
        raise ValueError(f"`section` {section!r} is not a list in {datalist}; sections: {sorted(data)}.")
    base = Path(root) if root is not None else datalist.parent
    entries = [e if isinstance(e, dict) else {"image": e} for e in data[section]]

    def load(entry: dict) -> dict:
        item = {"image": torch.from_numpy(read_volume(base / entry["image"]))}
        if entry.get("label"):
            item["label"] = torch.from_numpy(read_volume(base / entry["label"]))
        return item

    return ListDataset(entries, load)
