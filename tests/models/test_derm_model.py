"""The derm model pieces: preprocessing, network, temperature scaling; and the shipped version."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.derm.calibration import (CalibratedClassifier, expected_calibration_error, fit_temperature, nll,
                                     softmax)
from models.derm.network import CLASSES, DermNetConfig, build_derm_network
from models.derm.preprocess import from_derm_input, to_derm_input, to_derm_input_batch

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "derm" / "1.0.0"


def test_preprocess_shapes_range_and_crop():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    x = to_derm_input(photo, 64)
    assert x.shape == (3, 64, 64) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
    photo[:, :15] = 0  # only outside the centre square
    photo[:, -15:] = 0
    cropped = to_derm_input(photo, 64, centre_crop=True)
    assert cropped.min() > 0.0 or np.allclose(cropped, to_derm_input(photo[:, 15:-15], 64))
    rgba = np.concatenate([photo, np.full((90, 120, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(to_derm_input(rgba, 64), to_derm_input(photo, 64))
    batch = to_derm_input_batch(np.stack([photo, photo]), 64, centre_crop=True)
    assert batch.shape == (2, 3, 64, 64) and np.allclose(batch[0], cropped, atol=1e-6)
    same = to_derm_input(photo[:64, :64], 64)
    assert np.array_equal(from_derm_input(same), photo[:64, :64])
    with pytest.raises(ValueError, match="`rgb`"):
        to_derm_input(photo[..., 0], 64)
    with pytest.raises(ValueError, match="uint8"):
        to_derm_input(photo.astype(np.float32), 64)
    with pytest.raises(ValueError, match="`size_px`"):
        to_derm_input(photo, 4)


def test_network_logits_shape_and_config_checks():
    net = build_derm_network(DermNetConfig(image_size_px=64)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, len(CLASSES))
    assert sum(p.numel() for p in net.parameters()) < 500_000
    with pytest.raises(ValueError, match="`width_coefficient`"):
        DermNetConfig(width_coefficient=0)
    with pytest.raises(ValueError, match="unknown keys"):
        DermNetConfig.from_dict({"widht": 1})


def test_temperature_scaling_lowers_nll_of_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 400)
    logits = rng.normal(0, 1, (400, 7))
    logits[np.arange(400), y] += 1.0  # informative ...
    logits *= 6.0  # ... but far too confident
    t = fit_temperature(logits, y)
    assert t > 2.0
    assert nll(logits, y, t) < 0.6 * nll(logits, y)
    assert expected_calibration_error(softmax(logits, t), y) < expected_calibration_error(softmax(logits), y)
    assert (softmax(logits, t).argmax(1) == logits.argmax(1)).all()  # accuracy unchanged
    with pytest.raises(ValueError, match="`labels`"):
        fit_temperature(logits, y[:-1])
    module = CalibratedClassifier(torch.nn.Identity(), t)
    probs = module(torch.as_tensor(logits, dtype=torch.float32)).numpy()
    assert np.allclose(probs, softmax(logits, t), atol=1e-5)
    with pytest.raises(ValueError, match="`temperature`"):
        CalibratedClassifier(torch.nn.Identity(), 0.0)


@pytest.mark.skipif(not (SHIPPED / "model.onnx").is_file(), reason="derm 1.0.0 not registered")
def test_shipped_model_beats_chance_on_fresh_images():
    import onnxruntime as ort

    from models.registry import ModelRegistry
    from training.synthetic.derm import BALANCED_PRIOR, make_dataset

    manifest = ModelRegistry(SHIPPED.parents[1]).get("derm", "1.0.0")
    manifest.verify()
    assert [c.meaning for c in manifest.classes][4] == "Malignant melanoma"
    assert "NOT FOR CLINICAL USE" in manifest.intended_use
    size = manifest.input_size_px
    images, y = make_dataset(140, seed=987_654, size_px=manifest.raw["training"]["config"]["data"]["source_size_px"],
                             prior=BALANCED_PRIOR)
    session = ort.InferenceSession(str(manifest.path), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"image": to_derm_input_batch(images, size)})[0]
    assert probs.shape == (140, 7) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    recall = [(probs.argmax(1)[y == c] == c).mean() for c in range(7)]
    assert np.mean(recall) > 0.35  # chance is 1/7
