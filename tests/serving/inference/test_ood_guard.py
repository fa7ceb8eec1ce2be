"""The out-of-distribution guard on the serving path: the shipped tb and derm versions flag what they
were never trained on (a wrong body part, a skin photo, a CT slice as an X-ray, a blank image, noise)
and flag in-distribution held-out generated inputs at about their 5 % false-flag rate."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from models.derm.preprocess import to_derm_input
from models.ood import load_statistic
from models.registry import ModelRegistry
from models.transforms import to_model_input
from serving.inference.deployments import ModelServer
from serving.inference.ood import OodGuard
from training.synthetic.ct import generate_ct
from training.synthetic.cxr import generate_cxr, make_dataset as cxr_dataset
from training.synthetic.derm import generate_lesion, make_dataset as derm_dataset

#: Held-out generated inputs may be flagged at the 5 % rate the threshold was set for, plus sampling
#: error (two standard errors of 200 draws: 3 points).
HELD_OUT_BOUND = 0.08


def _server(model: str, version: str) -> ModelServer:
    server = ModelServer(model, {"version": version, "device": "cpu", "engine": "onnxruntime"})
    server.reconfigure({})
    return server


@pytest.fixture(scope="module")
def tb():
    return _server("tb", "1.1.0")


@pytest.fixture(scope="module")
def derm():
    return _server("derm", "1.0.0")


def _ct_slice() -> np.ndarray:
    volume = generate_ct(np.random.default_rng(1)).volume_hu
    return volume[volume.shape[0] // 2] + 1024.0  # stored values of a CT slice


def _abdomen(rng) -> np.ndarray:
    """An abdomen-like radiograph: one soft-tissue body with a denser liver, no air-filled lungs."""
    yy, xx = np.mgrid[0:256, 0:256]
    body = 2000 * np.exp(-2 * (((xx - 128) / 100) ** 2 + ((yy - 128) / 80) ** 2))
    liver = 600 * np.exp(-(((xx - 90) / 20) ** 2 + ((yy - 110) / 30) ** 2))
    return body + liver + rng.normal(0, 30, body.shape)


def _grey_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "blank": np.zeros((256, 256)),
        "uniform noise": rng.uniform(0, 4095, (256, 256)),
        "gaussian noise": rng.normal(2000, 300, (256, 256)),
        "generated CT slice as an X-ray": _ct_slice(),
        "real CT slice as an X-ray (pydicom CT_small)": pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array,
        "head MR (wrong body part, pydicom MR_small)": pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array,
        "abdomen-like radiograph (wrong body part)": _abdomen(rng),
        "skin photo": generate_lesion(np.random.default_rng(3), "mel").pixels.mean(axis=2),
    }


def _grey_as_rgb(pixels: np.ndarray) -> np.ndarray:
    p = np.asarray(pixels, np.float64)
    span = max(float(p.max() - p.min()), 1e-6)
    return np.repeat(((p - p.min()) / span * 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.mark.parametrize("case", sorted(_grey_images()))
def test_tb_flags_what_is_not_a_generated_chest_radiograph(tb, case):
    reply = tb.run_batch([to_model_input(_grey_images()[case], 224)])[0]
    assert "features" not in reply
    assert reply["ood"]["outside"], f"{case}: score {reply['ood']['score']} <= {reply['ood']['threshold']}"


def test_tb_flags_held_out_generated_radiographs_at_about_the_chosen_rate(tb):
    images, labels, _ = cxr_dataset(200, 987654, 256, 224)  # a seed none of the splits used
    replies = tb.run_batch(list(images))
    flagged = np.mean([r["ood"]["outside"] for r in replies])
    assert flagged <= HELD_OUT_BOUND
    assert len(replies) == len(images) and labels.sum() > 0


def test_a_batch_item_gets_one_verdict_per_image(tb):
    rng = np.random.default_rng(4)
    inside = to_model_input(generate_cxr(np.random.default_rng(100), 256, tb=False).pixels, 224)
    batch = np.stack([inside, to_model_input(rng.uniform(0, 4095, (256, 256)), 224)])
    reply = tb.run_batch([batch])[0]
    assert [v["outside"] for v in reply["ood"]] == [False, True]


@pytest.mark.parametrize("case", ["blank", "uniform noise", "generated CT slice as an X-ray",
                                  "abdomen-like radiograph (wrong body part)"])
def test_derm_flags_what_is_not_a_generated_skin_photo(derm, case):
    reply = derm.run_batch([to_derm_input(_grey_as_rgb(_grey_images()[case]), 96)])[0]
    assert reply["ood"]["outside"], f"{case}: score {reply['ood']['score']} <= {reply['ood']['threshold']}"


def test_derm_flags_a_chest_radiograph_sent_as_a_photo(derm):
    pixels = generate_cxr(np.random.default_rng(5), 256, tb=True).pixels
    assert derm.run_batch([to_derm_input(_grey_as_rgb(pixels), 96)])[0]["ood"]["outside"]


def test_derm_flags_held_out_generated_photos_at_about_the_chosen_rate(derm):
    images, _ = derm_dataset(200, 987654, 128)  # as the task draws them (128 px, resized); a seed no split used
    flagged = np.mean([r["ood"]["outside"] for r in derm.run_batch([to_derm_input(i, 96) for i in images])])
    assert flagged <= HELD_OUT_BOUND


def test_an_engine_without_features_gives_no_verdict_and_says_so(caplog):
    manifest = ModelRegistry().get("tb@1.1.0")
    guard = OodGuard(load_statistic(manifest.folder), ["probability", "heatmap"], "tb 1.1.0")
    assert not guard.available and "no 'features' output" in caplog.text
    assert guard.verdicts({"probability": np.zeros((2, 1))}) is None


def test_a_version_without_statistic_is_served_without_guard():
    manifest = ModelRegistry().get("vitals")
    assert OodGuard.of(manifest, ["probability"]) is None
