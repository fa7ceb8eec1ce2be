"""The nodule model's out-of-distribution guard, per volume: CTs from generators the model never saw
(a water cylinder with air 'lungs', uniform noise, a head-like ellipsoid) and blank volumes are
flagged; fresh generated chest CTs are flagged at about the calibrated 5 % or less; a flagged
volume's findings make no call in the SR and the FHIR Observation."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fhir.resources.R4B.observation import Observation
from pydicom.uid import generate_uid

from dicom_gateway.sr import build_measurement_report
from dicom_testdata import make_ct_series
from models.finding import OUTSIDE_TRAINING_DISTRIBUTION
from models.ood import OOD_FILE
from models.registry import ModelRegistry
from serving.fhir.report import PatientIdentity, build_report_resources
from serving.imaging.pipeline import ImagingPipeline
from serving.inference.deployments import ModelServer
from training.synthetic.ct import generate_ct
from test_ood_results import _codes, _texts  # the SR walkers of the image models' test

#: The calibration volumes' grid (models/nodule/<version>/metadata.json training.config.data).
SHAPE_VOX, SPACING_MM = (64, 96, 96), (1.25, 0.7, 0.7)
#: Fresh generated chest CTs: seed 0, stream 4, which the fit (1), the calibration (2) and the held-out
#: measurement (3) of training.ood_volume never draw from.
FRESH_STREAM, FRESH = 4, range(20)
#: At most this many of the fresh volumes flagged: at a 5 % rate P(more) is 1.6 % (binomial, n = 20).
FRESH_FLAGGED_MAX = 3
PRESENT_ABSENT = {"52101004", "272519000"}  # SCT Present, Absent (PS3.16 CID 241)


@pytest.fixture(scope="module")
def nodule():
    if "nodule" not in ModelRegistry().names():
        pytest.skip(reason="no nodule model registered")
    server = ModelServer("nodule", {"device": "cpu", "engine": "onnxruntime"})
    server.reconfigure({})
    return server


def _mm_grid():
    axes = [(np.arange(n) - n / 2 + 0.5) * s for n, s in zip(SHAPE_VOX, SPACING_MM)]
    return np.meshgrid(*axes, indexing="ij")


def water_cylinder_with_air_lungs() -> np.ndarray:
    """A water cylinder in air holding two air-filled elliptic cylinders: lung-shaped air inside a
    body, with none of a chest's texture, vessels or ribs."""
    _z, y, x = _mm_grid()
    volume = np.full(SHAPE_VOX, -1000.0, np.float32)
    volume[(y / 30) ** 2 + (x / 32) ** 2 <= 1] = 0.0
    for centre_mm in (-14.0, 14.0):
        volume[(y / 18) ** 2 + ((x - centre_mm) / 10) ** 2 <= 1] = -1000.0
    return volume


def head_ellipsoid() -> np.ndarray:
    """A skull-like shell (800 HU) around brain-like tissue (35 HU)."""
    z, y, x = _mm_grid()
    volume = np.full(SHAPE_VOX, -1000.0, np.float32)
    radius = (z / 38) ** 2 + (y / 30) ** 2 + (x / 26) ** 2
    volume[radius <= 1] = 800.0
    volume[radius <= 0.8] = 35.0
    return volume


def uniform_noise() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1000, 400, SHAPE_VOX).astype(np.float32)


def _ood(nodule: ModelServer, volume: np.ndarray) -> dict:
    return nodule.run_batch([{"volume": volume, "spacing_mm": SPACING_MM}])[0]["ood"]


@pytest.mark.parametrize("make", [water_cylinder_with_air_lungs, uniform_noise, head_ellipsoid,
                                  lambda: np.full(SHAPE_VOX, -1000.0, np.float32),
                                  lambda: np.full(SHAPE_VOX, 0.0, np.float32)],
                         ids=["water-cylinder", "noise", "head", "blank-air", "blank-water"])
def test_a_volume_from_another_generator_or_blank_is_flagged(nodule, make):
    ood = _ood(nodule, make())
    assert ood is not None and ood["outside"], ood


def test_fresh_generated_chest_cts_are_flagged_at_about_the_calibrated_rate_or_less(nodule):
    statistic = json.loads((nodule.active.manifest.folder / OOD_FILE).read_text(encoding="utf-8"))
    assert statistic["unit"] == "patch" and statistic["aggregate"] == "max"
    assert statistic["heldout"]["n_volumes"] >= 40 and statistic["heldout"]["flagged"] <= 0.10
    verdicts = [_ood(nodule, generate_ct(np.random.default_rng([0, FRESH_STREAM, i]), SHAPE_VOX,
                                         SPACING_MM).volume_hu) for i in FRESH]
    flagged = sum(v["outside"] for v in verdicts)
    assert flagged <= FRESH_FLAGGED_MAX, f"{flagged} of {len(verdicts)} fresh chest CTs flagged: {verdicts}"


def test_a_flagged_volume_makes_no_call_in_the_sr_and_the_fhir_observation():
    series = make_ct_series(np.zeros((3, 32, 32), np.uint16))
    info = {"name": "nodule", "version": "1.0.0", "threshold": 0.98,
            "finding": {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"}}
    reply = {"mask": None, "candidates": [{"label": 1, "probability": 0.995}], "max_probability": 0.995,
             "ood": {"score": 40.2, "threshold": 6.1, "outside": True}}
    findings = ImagingPipeline._volume_findings(series, reply, info)
    assert findings and all(f.outside and not f.positive for f in findings)
    sr = build_measurement_report(findings, series, algorithm_name="medgate-nodule", algorithm_version="1.0.0",
                                  series_instance_uid=generate_uid(), sop_instance_uid=generate_uid())
    assert any(OUTSIDE_TRAINING_DISTRIBUTION in t for t in _texts(sr))
    assert not PRESENT_ABSENT & set(_codes(sr.ContentSequence[-2]))
    _report, observation, _device = build_report_resources(findings, series[0], PatientIdentity())
    Observation.model_validate(observation)
    assert "valueCodeableConcept" not in observation
