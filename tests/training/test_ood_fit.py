"""training.ood: the statistic fitted at training time, the `features` output, and a version given both."""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.ood import load_statistic
from models.registry import ModelRegistry, file_sha256
from serving.inference.engine_torch import TorchEngine
from training import ood
from training.data import ArrayDataset
from training.tasks.base import ExportSpec
from training.torchscript import TORCHSCRIPT_NAME, save_torchscript


def _gaussians(rng, n: int, shift: float = 0.0):
    labels = rng.integers(0, 2, n)
    means = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 1.0]])
    features = means[labels] + rng.multivariate_normal([0, 0, 0], [[1, .5, 0], [.5, 2, 0], [0, 0, .5]], n) + shift
    return features, labels


def test_threshold_flags_the_chosen_share_of_held_out_data_and_far_inputs():
    rng = np.random.default_rng(0)
    train, labels = _gaussians(rng, 4000)
    calibration, _ = _gaussians(rng, 2000)
    statistic = ood.fit(train, labels, ["absent", "present"], calibration=calibration, rate=0.05)
    heldout, _ = _gaussians(rng, 4000)
    flagged = np.mean(statistic.scores(heldout) > statistic.threshold)
    assert 0.03 <= flagged <= 0.07
    far, _ = _gaussians(rng, 500, shift=8.0)
    assert np.mean(statistic.scores(far) > statistic.threshold) > 0.99
    assert statistic.raw["calibration"]["flagged"] == pytest.approx(0.05, abs=0.002)
    assert statistic.raw["fit"]["per_class"]["absent"] + statistic.raw["fit"]["per_class"]["present"] == 4000


def test_shrinkage_keeps_a_rank_deficient_covariance_invertible():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 2)) @ np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])  # rank 2 in 3 dims
    covariance, shrinkage = ood.shrunk_covariance(x - x.mean(axis=0))
    assert 0 < shrinkage <= 1 and np.linalg.eigvalsh(covariance).min() > 0


@pytest.mark.parametrize("labels, classes, message", [
    ([0, 0, 0, 1], ["a", "b"], "every class needs at least 2 rows"),
    ([0, 2, 1, 1], ["a", "b"], "`labels` must index the classes ['a', 'b'], values [0, 1, 2] are given"),
    ([0, 1], ["a", "b"], "`labels` must have one entry per feature row (4), 2 are given"),
])
def test_fit_refuses_bad_labels_naming_them(labels, classes, message):
    with pytest.raises(ValueError) as caught:
        ood.fit(np.zeros((4, 2)), np.array(labels), classes, calibration=np.zeros((2, 2)))
    assert message in str(caught.value)


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.body(image)), dim=1)


def _onnx(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript exporter
        torch.onnx.export(module.eval(), (torch.zeros(2, 1, 4, 4),), buffer, dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}})
    return buffer.getvalue()


def test_feature_output_taps_the_classifier_input_and_keeps_outputs_bit_identical():
    before = _onnx(_Classifier())
    after, tapped, width = ood.add_feature_output(before)
    assert width == 8 and tapped
    x = np.random.default_rng(2).random((5, 1, 4, 4), dtype=np.float32)
    assert ood.check_unchanged(before, after, [x]) == 5
    module = _Classifier().eval()
    with torch.no_grad():
        want = module.body(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ood.features_of(after, x), want, rtol=1e-5, atol=1e-6)
    assert ood.add_feature_output(after)[0] == after  # already tapped: unchanged


def test_a_changed_output_is_refused():
    other = _Classifier()
    with torch.no_grad():
        other.head.bias[0] += 1.0
    before, changed = _onnx(_Classifier()), ood.add_feature_output(_onnx(other))[0]
    with pytest.raises(ood.FeatureOutputError, match="changed output 'probabilities'"):
        ood.check_unchanged(before, changed, [np.ones((2, 1, 4, 4), np.float32)])


def test_a_graph_without_classifier_layer_is_refused():
    model = _onnx(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sigmoid()))
    with pytest.raises(ood.FeatureOutputError, match="no Gemm/MatMul classifier layer"):
        ood.add_feature_output(model)


def _version(root, model: bytes):
    folder = root / "demo" / "1.0.0"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model)
    (folder / "metadata.json").write_text(json.dumps({
        "name": "demo", "version": "1.0.0", "file": "model.onnx", "sha256": file_sha256(folder / "model.onnx"),
        "intended_use": "NOT FOR CLINICAL USE.", "classes": [
            {"name": "a", "value": "1", "scheme": "99MEDGATE", "meaning": "a"},
            {"name": "b", "value": "2", "scheme": "99MEDGATE", "meaning": "b"}],
        "network_data_format": {"inputs": {"image": {"shape": [None, 1, 4, 4], "size_px": 4}},
                                "outputs": {"probabilities": {"shape": [None, 2]}}}}))
    (root / "demo" / "serving.json").write_text(json.dumps({
        "input": "image", "reply": "classes", "preprocess": "models.transforms:to_model_input",
        "uploads": ["png"]}))
    return ModelRegistry(root).get("demo@1.0.0")


def test_attach_writes_the_statistic_and_a_verifiable_version(tmp_path):
    manifest = _version(tmp_path, _onnx(_Classifier()))
    assert ood.applies(manifest)
    rng = np.random.default_rng(3)

    def split(n):
        return ArrayDataset({"image": rng.random((n, 1, 4, 4), dtype=np.float32), "label": rng.integers(0, 2, n)})

    statistic = ood.attach(manifest, None, {"train": split(400), "val": split(200), "test": split(200)})
    again = ModelRegistry(tmp_path).get("demo@1.0.0")
    again.verify()
    assert again.raw["network_data_format"]["outputs"]["features"]["shape"] == [None, 8]
    assert again.raw["ood"]["threshold"] == round(statistic.threshold, 4)
    stored = load_statistic(again.folder)
    assert stored.classes == ("a", "b") and stored.raw["heldout"]["n"] == 200
    assert stored.raw["heldout"]["flagged"] <= 0.12
    assert stored.raw["outputs_unchanged"]["items_compared"] == 200
    far = np.full((3, 1, 4, 4), 50.0, np.float32)
    assert (stored.scores(ood.features_of(again.path.read_bytes(), far)) > stored.threshold).all()


class _DemoTask:
    """The two methods :func:`training.ood.retrace_with_features` needs of a task."""

    name = "demo"

    def build_network(self, config):
        return _Classifier()

    def export_spec(self, network, config):
        return ExportSpec(module=network.eval(), example_inputs=(torch.zeros(2, 1, 4, 4),), input_names=["image"],
                          output_names=["probabilities"])


def test_attach_traces_the_torchscript_export_again_with_the_same_features(tmp_path):
    manifest = _version(tmp_path, _onnx(_Classifier()))
    task = _DemoTask()
    network = task.build_network({})
    torch.save({"task": "demo", "config": {}, "network": network.state_dict()}, manifest.folder / "model.pt")
    save_torchscript(task.export_spec(network, {}), manifest.folder / TORCHSCRIPT_NAME)
    rng = np.random.default_rng(6)

    def split(n):
        return ArrayDataset({"image": rng.random((n, 1, 4, 4), dtype=np.float32), "label": rng.integers(0, 2, n)})

    statistic = ood.attach(manifest, task, {"train": split(300), "val": split(100), "test": split(100)})
    assert statistic.raw["outputs_unchanged"]["torchscript_items_compared"] == ood.BATCH
    again = ModelRegistry(tmp_path).get("demo@1.0.0")
    assert again.raw["torchscript_sha256"] == file_sha256(again.folder / TORCHSCRIPT_NAME)
    engine = TorchEngine(again.folder / TORCHSCRIPT_NAME)
    x = rng.random((3, 1, 4, 4), dtype=np.float32)
    assert engine.output_names == ["probabilities", "features"]
    np.testing.assert_allclose(engine.run({"image": x})["features"], ood.features_of(again.path.read_bytes(), x),
                               rtol=1e-5, atol=1e-6)


def test_a_model_that_does_not_read_single_images_gets_no_statistic(tmp_path):
    manifest = _version(tmp_path, _onnx(_Classifier()))
    (tmp_path / "demo" / "serving.json").write_text(json.dumps({"input": "window", "reply": "risk"}))
    assert not ood.applies(ModelRegistry(tmp_path).get("demo@1.0.0"))
    (tmp_path / "demo" / "serving.json").unlink()
    assert not ood.applies(ModelRegistry(tmp_path).get("demo@1.0.0")) and manifest


def test_a_named_layer_is_tapped_flattened_in_onnx_and_torchscript_alike():
    module = _Classifier()
    before = _onnx(module)
    relu = next(n.output[0] for n in onnx.load_from_string(before).graph.node if n.op_type == "Relu")
    after, tapped, width = ood.add_feature_output(before, tensor=relu)
    assert (tapped, width) == (relu, 8)
    x = np.random.default_rng(5).random((3, 1, 4, 4), dtype=np.float32)
    with torch.no_grad():
        traced = ood._FeatureTap(module.eval(), "body.2")(torch.from_numpy(x))
    np.testing.assert_allclose(ood.features_of(after, x), traced[-1].numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ood.FeatureOutputError, match="`tensor` must be a tensor of the ONNX graph, 'nope' is given"):
        ood.add_feature_output(before, tensor="nope")
