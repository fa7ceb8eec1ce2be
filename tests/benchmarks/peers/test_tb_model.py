"""benchmarks/peers/tb_model.py: the peers' tb model gives medgate's answer on the same upload."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from benchmarks.peers import VERSION_ENV
from benchmarks.peers.tb_model import TbModel
from serving.http.uploads import decode, model_item
from serving.inference.deployments import ModelServer


def png_of(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def model():
    return TbModel()


def test_an_upload_becomes_the_item_medgate_makes(model):
    png = png_of((np.random.default_rng(1).random((300, 260)) * 255).astype(np.uint8))
    item = model.item(png)
    size = model.manifest.input_size_px
    assert item.shape == (1, size, size) and item.dtype == np.float32
    np.testing.assert_array_equal(item, model_item(model.manifest, decode(png, 50_000_000)))


def test_probabilities_match_medgates_engine_one_per_item(model):
    rng = np.random.default_rng(2)
    items = [model.item(png_of((rng.random((224, 224)) * 255).astype(np.uint8))) for _ in range(3)]
    server = ModelServer("tb", {})
    server.reconfigure({"version": model.manifest.version})
    expected = [float(np.ravel(reply["probability"])[0]) for reply in server.run_batch(items)]
    assert model.probabilities(items) == pytest.approx(expected, abs=1e-5)
    assert model.probabilities(items[:1]) == pytest.approx(expected[:1], abs=1e-5)
    assert model.probabilities([]) == []


def test_the_version_comes_from_the_environment(monkeypatch, model):
    monkeypatch.setenv(VERSION_ENV, "1.0.0")
    assert TbModel().manifest.version == "1.0.0"
    monkeypatch.delenv(VERSION_ENV)
    assert TbModel().manifest.version == model.manifest.version
