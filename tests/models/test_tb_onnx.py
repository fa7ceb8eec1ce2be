"""The shipped tb ONNX model runs on onnxruntime CPU and separates generated cases."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from models.registry import ModelRegistry
from models.transforms import heatmap_peak, to_model_input_batch
from training.synthetic.cxr import generate_cxr


@pytest.fixture(scope="module")
def tb():
    manifest = ModelRegistry().get("tb", "1.0.0")
    session = ort.InferenceSession(str(manifest.path), providers=["CPUExecutionProvider"])
    return manifest, session


def test_io_matches_the_manifest(tb):
    manifest, session = tb
    (inp,) = session.get_inputs()
    assert inp.name == manifest.input_name == "image"
    assert inp.shape[1:] == [1, manifest.input_size_px, manifest.input_size_px]
    assert isinstance(inp.shape[0], str)  # dynamic batch axis
    # features: the classifier's input, scored against the training data (ood.json, models.ood)
    assert [o.name for o in session.get_outputs()] == ["probability", "heatmap", "features"]


def test_batch_of_three_gives_probabilities_and_heatmaps(tb):
    manifest, session = tb
    rng = np.random.default_rng(11)
    samples = [generate_cxr(rng, 200, tb=t) for t in (True, False, True)]
    batch = to_model_input_batch([s.pixels for s in samples], manifest.input_size_px)
    prob, heat = session.run(["probability", "heatmap"], {"image": batch})
    assert prob.shape == (3, 1) and prob.dtype == np.float32
    assert ((prob >= 0) & (prob <= 1)).all()
    side = manifest.raw["network_data_format"]["outputs"]["heatmap"]["shape"][-1]
    assert heat.shape == (3, 1, side, side)
    assert heat.min() >= 0.0 and heat.max() <= 1.0 + 1e-6
    col, row = heatmap_peak(heat[0, 0], rows=200, columns=200)
    assert 0 < col < 200 and 0 < row < 200


def test_positives_score_higher_than_negatives_on_average(tb):
    manifest, session = tb
    rng = np.random.default_rng(2024)
    labels = np.array([1, 0] * 8)
    pixels = [generate_cxr(rng, 256, tb=bool(t)).pixels for t in labels]
    prob, _ = session.run(["probability", "heatmap"], {"image": to_model_input_batch(pixels, manifest.input_size_px)})
    assert prob[labels == 1].mean() > prob[labels == 0].mean() + 0.2
