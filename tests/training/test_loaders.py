"""Public-dataset loaders on tiny fixture files written in each dataset's layout."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training import loaders


def _png(path, value=100, size=(40, 32), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)


def test_tbx11k_lists_labels_and_boxes(tmp_path):
    for rel in ("tb/tb0001.png", "health/h0001.png", "sick/s0001.png"):
        _png(tmp_path / "imgs" / rel)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "TBX11K_train.txt").write_text("tb/tb0001.png\nhealth/h0001.png\n")
    (tmp_path / "lists" / "TBX11K_val.txt").write_text("sick/s0001.png\n")
    coco = {"images": [{"id": 7, "file_name": "tb0001.png", "width": 40, "height": 32}],
            "annotations": [{"image_id": 7, "bbox": [4, 8, 8, 8], "category_id": 1}],
            "categories": [{"id": 1, "name": "ActiveTuberculosis"}]}
    (tmp_path / "annotations" / "json").mkdir(parents=True)
    (tmp_path / "annotations" / "json" / "TBX11K_train.json").write_text(json.dumps(coco))
    data = loaders.tbx11k(tmp_path, size_px=16)
    assert len(data) == 3
    item = data[0]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"] == 1.0
    assert item["centres"][0].tolist() == pytest.approx([8 / 40, 12 / 32]) and torch.isnan(item["centres"][1]).all()
    assert [data[i]["label"].item() for i in (1, 2)] == [0.0, 0.0]
    assert len(loaders.tbx11k(tmp_path, split="TBX11K_val", size_px=16)) == 1
    with pytest.raises(FileNotFoundError, match="imgs/"):
        loaders.tbx11k(tmp_path / "imgs")


def test_shenzhen_and_montgomery_suffix_labels(tmp_path):
    for name in ("CHNCXR_0001_0.png", "CHNCXR_0002_1.png", "MCUCXR_0001_1.png"):
        _png(tmp_path / "CXR_png" / name)
    shenzhen = loaders.shenzhen(tmp_path, size_px=8)
    assert [shenzhen[i]["label"].item() for i in range(len(shenzhen))] == [0.0, 1.0]
    montgomery = loaders.montgomery(tmp_path, size_px=8)
    assert len(montgomery) == 1 and montgomery[0]["image"].shape == (1, 8, 8)


def test_ham10000_dx_to_seven_classes(tmp_path):
    _png(tmp_path / "HAM10000_images_part_1" / "ISIC_0000001.jpg", mode="RGB")
    _png(tmp_path / "HAM10000_images_part_2" / "ISIC_0000002.jpg", mode="RGB")
    (tmp_path / "HAM10000_metadata.csv").write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0000001,mel,histo,50,male,back\nHAM_2,ISIC_0000002,nv,follow_up,40,female,trunk\n")
    data = loaders.ham10000(tmp_path, size_px=12)
    assert len(loaders.HAM10000_CLASSES) == 7
    assert data[0]["image"].shape == (3, 12, 12) and 0 <= data[0]["image"].min() <= data[0]["image"].max() <= 1
    assert [data[i]["label"].item() for i in range(2)] == [loaders.HAM10000_CLASSES.index("mel"),
                                                            loaders.HAM10000_CLASSES.index("nv")]


def test_isic2019_one_hot(tmp_path):
    _png(tmp_path / "ISIC_2019_Training_Input" / "ISIC_0000003.jpg", mode="RGB")
    (tmp_path / "ISIC_2019_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\nISIC_0000003,0.0,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0\n")
    data = loaders.isic2019(tmp_path, size_px=10)
    assert data[0]["label"].item() == loaders.ISIC2019_CLASSES.index("BCC")
    (tmp_path / "ISIC_2019_Training_GroundTruth.csv").write_text("image,MEL,NV\nISIC_0000009,1.0,0.0\n")
    with pytest.raises(FileNotFoundError, match="ISIC_0000009"):
        loaders.isic2019(tmp_path)


def _mhd(path, volume, spacing=(0.7, 0.8, 2.5), offset=(-100.0, -120.0, -300.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    z, y, x = volume.shape
    path.write_text(f"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                    f"TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = {' '.join(map(str, offset))}\n"
                    f"ElementSpacing = {' '.join(map(str, spacing))}\nDimSize = {x} {y} {z}\n"
                    f"ElementType = MET_SHORT\nElementDataFile = {path.stem}.raw\n")
    volume.astype("<i2").tofile(path.with_suffix(".raw"))


def test_luna16_world_to_voxel(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    _mhd(tmp_path / "subset0" / "1.2.3.mhd", volume)
    _mhd(tmp_path / "subset1" / "1.2.4.mhd", volume)
    (tmp_path / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                              "1.2.3,-97.2,-116.0,-295.0,6.5\n")
    data = loaders.luna16(tmp_path)
    item = data[0]
    assert item["seriesuid"] == "1.2.3" and torch.equal(item["image"][0], torch.from_numpy(volume.astype(np.float32)))
    # x: (-97.2 + 100) / 0.7 = 4, y: (-116 + 120) / 0.8 = 5, z: (-295 + 300) / 2.5 = 2
    assert item["nodules"].tolist() == [pytest.approx([2.0, 5.0, 4.0, 6.5], abs=1e-5)]
    assert item["spacing_mm"].tolist() == pytest.approx([2.5, 0.8, 0.7])
    assert data[1]["nodules"].shape == (0, 4)


def test_decathlon_datalist(tmp_path):
    np.save(tmp_path / "img0.npy", np.ones((2, 3, 4), np.float32))
    np.save(tmp_path / "lab0.npy", np.zeros((2, 3, 4), np.uint8))
    np.save(tmp_path / "img1.npy", np.full((2, 3, 4), 5, np.int16))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "training": [{"image": "./img0.npy", "label": "./lab0.npy"}], "test": ["./img1.npy"]}))
    train = loaders.decathlon(tmp_path / "dataset.json")
    assert train[0]["image"].shape == (2, 3, 4) and train[0]["label"].sum() == 0
    test = loaders.decathlon(tmp_path / "dataset.json", "test")
    assert "label" not in test[0] and test[0]["image"].max() == 5
    with pytest.raises(ValueError, match="validation"):
        loaders.decathlon(tmp_path / "dataset.json", "validation")
