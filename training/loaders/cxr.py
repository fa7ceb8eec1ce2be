"""Chest X-ray tuberculosis datasets: TBX11K and Shenzhen / Montgomery, as ``tb`` task items.

Items are those of :mod:`training.tasks.tb`: ``image`` float32 (1, S, S) from
:func:`models.transforms.to_model_input`, ``label`` float32 (1 = tuberculosis) and ``centres``
float32 (3, 2), the (x, y) centres of up to three TB boxes as fractions of the image size,
NaN-padded (all NaN where the dataset has no boxes).

Layouts::

    TBX11K/imgs/{health,sick,tb,test}/<file>.png     # label from the folder: tb = 1
    TBX11K/lists/TBX11K_train.txt, TBX11K_val.txt     # one "<folder>/<file>.png" per line
    TBX11K/annotations/json/TBX11K_{train,val}.json   # COCO boxes [x, y, w, h] by file_name

    <root>/CXR_png/CHNCXR_0001_0.png                  # Shenzhen; "_1" = tuberculosis
    <root>/CXR_png/MCUCXR_0001_0.png                  # Montgomery, same convention
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from models.transforms import to_model_input
from training.data import ListDataset
from training.loaders.images import read_gray

MAX_LESIONS = 3
TBX11K_LABELS = {"tb": 1, "health": 0, "sick": 0}
_SUFFIX = re.compile(r"_([01])\.png$", re.IGNORECASE)


def _item(path: Path, label: int, centres: list[tuple[float, float]], size_px: int) -> dict[str, torch.Tensor]:
    pad = np.full((MAX_LESIONS, 2), np.nan, dtype=np.float32)
    if centres:
        pad[: min(len(centres), MAX_LESIONS)] = np.asarray(centres[:MAX_LESIONS], dtype=np.float32)
    image = to_model_input(read_gray(path), size_px)
    return {"image": torch.from_numpy(image), "label": torch.tensor(float(label)), "centres": torch.from_numpy(pad)}


def _coco_centres(folder: Path) -> dict[str, list[tuple[float, float]]]:
    """File name -> normalised box centres, from every COCO json under ``folder``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im for im in data.get("images", [])}
        for ann in data.get("annotations", []):
            im = images.get(ann["image_id"])
            if im is None:
                continue
            x, y, w, h = ann["bbox"]
            out.setdefault(Path(im["file_name"]).name, []).append(
                ((x + w / 2) / im["width"], (y + h / 2) / im["height"]))
    return out


def tbx11k(root: Path, split: str | None = None, size_px: int = 224) -> ListDataset:
    """TBX11K items; ``split`` names a list file (``"TBX11K_train"``), ``None`` joins train and val."""
    root = Path(root)
    lists = root / "lists"
    if not (root / "imgs").is_dir() or not lists.is_dir():
        raise FileNotFoundError(f"`root` must hold TBX11K's imgs/ and lists/ folders, {root} is given.")
    names = [split] if split else ["TBX11K_train", "TBX11K_val"]
    boxes = _coco_centres(root / "annotations" / "json")
    records = []
    for name in names:
        list_file = lists / f"{name}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"`split` {name!r} has no list file {list_file}.")
        for line in list_file.read_text(encoding="utf-8").split("\n"):
            rel = line.strip().split(" ")[0] if line.strip() else ""
            if not rel:
                continue
            folder = Path(rel).parts[0]
            if folder not in TBX11K_LABELS:
                raise ValueError(f"{list_file} lists {rel!r}, whose folder is not one of {sorted(TBX11K_LABELS)}.")
            label = TBX11K_LABELS[folder]
            records.append((root / "imgs" / rel, label, boxes.get(Path(rel).name, []) if label else []))
    return ListDataset(records, lambda r: _item(*r, size_px))


def cxr_png(root: Path, size_px: int = 224, prefix: str = "") -> ListDataset:
    """Shenzhen / Montgomery items from ``<root>/CXR_png/<prefix>*_{0,1}.png`` (sorted by name)."""
    folder = Path(root) / "CXR_png"
    if not folder.is_dir():
        raise FileNotFoundError(f"`root` must hold a CXR_png/ folder, {root} is given.")
    records = [(p, int(m[1]), []) for p in sorted(folder.glob(f"{prefix}*.png")) if (m := _SUFFIX.search(p.name))]
    if not records:
        raise FileNotFoundError(f"{folder} holds no {prefix}*_0.png / _1.png images.")
    return ListDataset(records, lambda r: _item(*r, size_px))


def shenzhen(root: Path, size_px: int = 224) -> ListDataset:
    """Shenzhen chest X-ray set (``CHNCXR_*``)."""
    return cxr_png(root, size_px, "CHNCXR_")


def montgomery(root: Path, size_px: int = 224) -> ListDataset:
    """Montgomery County chest X-ray set (``MCUCXR_*``)."""
    return cxr_png(root, size_px, "MCUCXR_")


def _dicom_item(path: Path, label: int, centres: list, size_px: int) -> dict[str, torch.Tensor]:
    from pydicom import dcmread

    from dicom_gateway.pixels import grayscale_image

    pad = np.full((MAX_LESIONS, 2), np.nan, dtype=np.float32)
    if centres:
        pad[: min(len(centres), MAX_LESIONS)] = np.asarray(centres[:MAX_LESIONS], dtype=np.float32)
    image = to_model_input(grayscale_image(dcmread(path)), size_px)
    return {"image": torch.from_numpy(image), "label": torch.tensor(float(label)), "centres": torch.from_numpy(pad)}


def medgate_export(root: Path, size_px: int = 224) -> ListDataset:
    """A ``medgate export-training`` folder (``<out>/<model>``): ``dataset.json`` training entries
    ``{"image": "images/<uid>.dcm", "label": 0/1, "centres": [[x, y], ...]}`` (DICOM images)."""
    datalist = Path(root) / "dataset.json"
    if not datalist.is_file():
        raise FileNotFoundError(f"`root` must hold the dataset.json of medgate export-training, {root} is given.")
    entries = json.loads(datalist.read_text(encoding="utf-8")).get("training", [])
    if not entries:
        raise FileNotFoundError(f"{datalist} lists no training entries.")
    records = [(Path(root) / e["image"], int(e["label"]), [tuple(c) for c in e.get("centres", [])]) for e in entries]
    return ListDataset(records, lambda r: _dicom_item(*r, size_px))
