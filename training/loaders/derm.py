"""Dermoscopy datasets: HAM10000 and ISIC 2019, as classification items.

Items: ``image`` float32 (3, S, S) in [0, 1] (:func:`training.loaders.images.rgb_to_model_input`)
and ``label`` int64, the index of the class in the dataset's class list.

Layouts::

    <root>/HAM10000_metadata.csv          # lesion_id,image_id,dx,... ; dx is one of HAM10000_CLASSES
    <root>/**/<image_id>.jpg              # e.g. HAM10000_images_part_1/ and _part_2/

    <root>/ISIC_2019_Training_GroundTruth.csv   # image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK (one-hot)
    <root>/**/<image>.jpg                        # ISIC_2019_Training_Input/
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from training.data import ListDataset
from training.loaders.images import read_rgb, rgb_to_model_input

#: HAM10000 ``dx`` codes in label order (alphabetical, as commonly used).
HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
#: ISIC 2019 ground-truth columns in label order.
ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


def _index_images(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(root.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")}


def _item(path: Path, label: int, size_px: int) -> dict[str, torch.Tensor]:
    return {"image": torch.from_numpy(rgb_to_model_input(read_rgb(path), size_px)),
            "label": torch.tensor(label, dtype=torch.int64)}


def _find(images: dict[str, Path], name: str, csv_path: Path) -> Path:
    if name not in images:
        raise FileNotFoundError(f"{csv_path} lists image {name!r}, but no {name}.jpg/.png is under {csv_path.parent}.")
    return images[name]


def ham10000(root: Path, size_px: int = 224) -> ListDataset:
    """HAM10000 items, labels indexing :data:`HAM10000_CLASSES`."""
    root = Path(root)
    csv_path = root / "HAM10000_metadata.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"`root` must hold HAM10000_metadata.csv, {root} is given.")
    images = _index_images(root)
    records = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            dx = row["dx"].strip()
            if dx not in HAM10000_CLASSES:
                raise ValueError(f"{csv_path}: image {row['image_id']} has dx {dx!r}, not one of {HAM10000_CLASSES}.")
            records.append((_find(images, row["image_id"].strip(), csv_path), HAM10000_CLASSES.index(dx)))
    return ListDataset(records, lambda r: _item(*r, size_px))


def isic2019(root: Path, size_px: int = 224) -> ListDataset:
    """ISIC 2019 training items, labels indexing :data:`ISIC2019_CLASSES` (argmax of the one-hot row)."""
    root = Path(root)
    csv_path = root / "ISIC_2019_Training_GroundTruth.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"`root` must hold ISIC_2019_Training_GroundTruth.csv, {root} is given.")
    images = _index_images(root)
    records = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            onehot = np.array([float(row.get(c, 0) or 0) for c in ISIC2019_CLASSES])
            if onehot.sum() != 1.0:
                raise ValueError(f"{csv_path}: image {row['image']} must have exactly one class, {onehot} is given.")
            records.append((_find(images, row["image"].strip(), csv_path), int(onehot.argmax())))
    return ListDataset(records, lambda r: _item(*r, size_px))
