"""models.ood (the statistic a version carries) and the out-of-distribution field of models.finding."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.finding import OUTSIDE_TRAINING_DISTRIBUTION, Concept, Finding, OutOfDistribution, SourceImage
from models.ood import LAYER_FILE, OOD_ARRAYS, OOD_FILE, FeatureStatistic, feature_layer, load_statistic, write_statistic
from models.registry import ModelRegistry

TB = Concept("154283005", "SCT", "Pulmonary tuberculosis")
IMAGE = SourceImage("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.1.1", 256, 256)


def _statistic(threshold: float = 3.0) -> FeatureStatistic:
    covariance = np.array([[4.0, 1.0], [1.0, 2.0]])
    whitening = np.linalg.cholesky(np.linalg.inv(covariance))
    return FeatureStatistic(means=[[0.0, 0.0], [5.0, 5.0]], whitening=whitening, threshold=threshold,
                            false_flag_rate=0.05, classes=("absent", "present"))


def test_score_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    statistic = _statistic()
    f = np.array([[1.0, -2.0], [5.5, 4.0], [50.0, 50.0]])
    inverse = np.linalg.inv(np.array([[4.0, 1.0], [1.0, 2.0]]))
    expected = [min(math.sqrt((x - m) @ inverse @ (x - m)) for m in statistic.means) for x in f]
    np.testing.assert_allclose(statistic.scores(f), expected, rtol=1e-12)


def test_non_finite_features_score_infinite_and_lie_outside():
    statistic = _statistic()
    scores = statistic.scores(np.array([[np.nan, 0.0], [0.0, 0.0]]))
    assert math.isinf(scores[0]) and scores[1] == 0.0
    verdict = statistic.verdict(scores[0])
    assert verdict == {"score": None, "threshold": 3.0, "outside": True}
    assert OutOfDistribution.from_dict(verdict).outside


def test_verdict_round_trips_into_the_finding_field():
    statistic = _statistic()
    for score in (0.5, 3.0, 3.0000001, 12.0):
        ood = OutOfDistribution.from_dict(json.loads(json.dumps(statistic.verdict(score))))
        assert ood.outside == (score > 3.0)


@pytest.mark.parametrize("change, message", [
    ({"whitening": np.eye(3)}, "`whitening` must be (2, 2)"),
    ({"threshold": 0.0}, "`threshold` must be a positive finite number, 0.0 is given"),
    ({"threshold": math.inf}, "`threshold` must be a positive finite number"),
    ({"false_flag_rate": 1.5}, "`false_flag_rate` must be within (0, 1), 1.5 is given"),
    ({"unit": "voxel"}, "`unit` must be one of ['image', 'patch'], 'voxel' is given"),
    ({"statistic": "knn"}, "`statistic` must be 'class_mahalanobis', 'knn' is given"),
    ({"classes": ("one",)}, "`classes` must name the 2 means"),
])
def test_statistic_refuses_bad_fields_naming_them(change, message):
    base = _statistic()
    fields = dict(means=base.means, whitening=base.whitening, threshold=3.0, false_flag_rate=0.05,
                  classes=("absent", "present"))
    with pytest.raises(ValueError) as caught:
        FeatureStatistic(**{**fields, **change})
    assert message in str(caught.value)


def test_features_of_the_wrong_width_are_refused():
    with pytest.raises(ValueError, match=r"`features` must be \(N, 2\), \(1, 3\) is given"):
        _statistic().scores(np.zeros((1, 3)))


def test_file_round_trip_and_bad_files(tmp_path):
    assert load_statistic(tmp_path) is None
    write_statistic(tmp_path, _statistic())
    assert json.loads((tmp_path / OOD_FILE).read_text())["arrays"] == OOD_ARRAYS
    loaded = load_statistic(tmp_path)
    np.testing.assert_allclose(loaded.scores(np.array([[1.0, 2.0]])), _statistic().scores(np.array([[1.0, 2.0]])),
                               rtol=1e-6)
    (tmp_path / OOD_ARRAYS).unlink()
    with pytest.raises(ValueError, match="names the arrays ood.npz, which is missing"):
        load_statistic(tmp_path)
    (tmp_path / OOD_FILE).write_text(json.dumps({**_statistic().to_dict(), "arrays": "../elsewhere.npz"}))
    with pytest.raises(ValueError, match="`arrays` must name a file beside it"):
        load_statistic(tmp_path)
    (tmp_path / OOD_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_statistic(tmp_path)
    write_statistic(tmp_path, _statistic())
    (tmp_path / OOD_FILE).write_text(json.dumps({"statistic": "class_mahalanobis"}))
    with pytest.raises(ValueError, match=r"ood.json lacks the key\(s\) unit"):
        load_statistic(tmp_path)


def _finding(probability: float, ood: OutOfDistribution | None) -> Finding:
    return Finding("tb", "1.1.0", TB, probability, 0.5, IMAGE, ood=ood)


def test_positive_call_is_withheld_outside_the_training_distribution():
    inside = _finding(0.9, OutOfDistribution(4.0, 7.3, False))
    outside = _finding(0.9, OutOfDistribution(30.8, 7.3, True))
    unknown = _finding(0.9, None)
    assert inside.positive and unknown.positive and inside.ood_note is None
    assert not outside.positive and outside.outside
    assert OUTSIDE_TRAINING_DISTRIBUTION in outside.ood_note and "30.80 > 7.30" in outside.ood_note
    assert "withheld" in _finding(0.9, OutOfDistribution(math.inf, 7.3, True)).ood_note


@pytest.mark.parametrize("args, message", [
    ((5.0, 7.3, True), "ood outside must be score > threshold, outside=True is given with score 5.0"),
    ((9.0, 7.3, False), "ood outside must be score > threshold, outside=False"),
    ((-1.0, 7.3, False), "ood score must be a number >= 0, -1.0 is given"),
    ((1.0, 0.0, False), "ood threshold must be a positive finite number, 0.0 is given"),
])
def test_out_of_distribution_checks_its_fields(args, message):
    with pytest.raises(ValueError) as caught:
        OutOfDistribution(*args)
    assert message in str(caught.value)


def test_finding_refuses_an_ood_of_another_type():
    with pytest.raises(ValueError, match="ood must be an OutOfDistribution, dict is given"):
        _finding(0.9, {"score": 1.0, "threshold": 2.0, "outside": False})
    with pytest.raises(ValueError, match="ood must be {score, threshold, outside}"):
        OutOfDistribution.from_dict({"score": 1.0})


@pytest.mark.parametrize("reference", ["tb@1.0.0", "tb@1.1.0", "derm@1.0.0"])
def test_every_shipped_image_classifier_carries_its_statistic(reference):
    manifest = ModelRegistry().get(reference)
    manifest.verify()  # the ONNX file with its `features` output is the one the metadata records
    statistic = load_statistic(manifest.folder)
    assert statistic is not None and statistic.false_flag_rate == 0.05
    assert manifest.raw["network_data_format"]["outputs"]["features"]["shape"] == [None, statistic.dim]
    assert manifest.raw["ood"]["threshold"] == round(statistic.threshold, 4)
    raw = statistic.raw
    assert raw["outputs_unchanged"]["bit_identical"] and raw["outputs_unchanged"]["items_compared"] > 0
    assert raw["calibration"]["split"] == "val" and raw["calibration"]["flagged"] <= 0.05 + 1 / raw["calibration"]["n"]
    assert raw["heldout"]["split"] == "test" and raw["heldout"]["flagged"] <= 0.10
    assert raw["fit"]["n"] >= 1000


def test_a_model_folder_may_name_the_layer_to_score(tmp_path):
    assert feature_layer(tmp_path) is None
    (tmp_path / LAYER_FILE).write_text(json.dumps({"onnx_tensor": "/pool_output_0", "module": "pool", "why": "x"}))
    assert feature_layer(tmp_path)["module"] == "pool"
    (tmp_path / LAYER_FILE).write_text(json.dumps({"onnx_tensor": "/pool_output_0"}))
    with pytest.raises(ValueError, match="must name `onnx_tensor` and `module`"):
        feature_layer(tmp_path)
    assert feature_layer(ModelRegistry().root / "derm")["module"].endswith("_se_adaptpool")
