"""ModelServer (the deployment's core) used directly, without Ray: engines, batches, version swap, shadow.

Batching of concurrent requests (serving.inference.batcher) in a Serve replica: see test_http_api.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from models.registry import ModelRegistry
from serving.inference.deployments import ModelServer
from serving.inference.engine_base import batch_buckets
from serving.inference.engines import create_engine


def tb_item(size: int) -> np.ndarray:
    return np.random.default_rng(0).random((1, size, size), dtype=np.float32)


@pytest.fixture(scope="module")
def tb():
    server = ModelServer("tb", {"max_batch_size": 8})
    server.reconfigure({})
    return server


def test_batch_buckets():
    assert batch_buckets(16) == (1, 2, 4, 8, 16)
    assert batch_buckets(12) == (1, 2, 4, 8, 12)
    with pytest.raises(ValueError, match="`max_batch_size` must be positive"):
        batch_buckets(0)


def test_onnx_engine_on_cpu_runs_and_checks_inputs():
    manifest = ModelRegistry().get("tb")
    engine = create_engine(manifest.path.parent, manifest.path.name, device="cpu")
    assert engine.device == "cpu" and "CPUExecutionProvider" in engine.name
    size = manifest.input_size_px
    out = engine.run({engine.input_names[0]: np.zeros((3, 1, size, size), np.float32)})
    assert out["probability"].shape == (3, 1)
    with pytest.raises(ValueError, match="lacks"):
        engine.run({"wrong": np.zeros((1, 1, size, size), np.float32)})
    with pytest.raises(ValueError, match="`engine` must be one of"):
        create_engine(manifest.path.parent, engine="tensorflow")


def test_cpu_sessions_do_not_spin_between_runs():
    """Spinning intra-op threads take the cores the ingress and the gateway share with the replica."""
    from serving.inference.engine_onnx import NO_SPINNING

    manifest = ModelRegistry().get("tb")
    engine = create_engine(manifest.path.parent, manifest.path.name, engine="onnxruntime", device="cpu")
    assert engine.session.get_session_options().get_session_config_entry(NO_SPINNING[0]) == "0"


def test_a_batch_is_one_engine_call_with_one_reply_per_item(tb):
    size = tb.active.manifest.input_size_px
    replies = tb.run_batch([tb_item(size) for _ in range(8)])
    assert len(replies) == 8 and {r["batch_size"] for r in replies} == {8}
    assert all(0.0 <= float(r["probability"][0]) <= 1.0 for r in replies)
    assert tb.stats()["batch_sizes"][-1] == 8
    with pytest.raises(ValueError, match="must share a shape"):
        tb.run_batch([tb_item(size), tb_item(size // 2)])


def test_an_item_may_be_a_whole_batch_of_samples():
    vitals = ModelServer("vitals", {})
    vitals.reconfigure({})
    windows = np.random.default_rng(3).normal(size=(37, 12, 10)).astype(np.float32)
    replies = vitals.run_batch([windows, windows[0]])
    assert replies[0]["probability"].shape == (37, 1) and replies[1]["probability"].shape == (1,)
    assert np.allclose(replies[0]["probability"][0], replies[1]["probability"])


def test_reconfigure_swaps_version_and_runs_shadow(tb):
    versions = ModelRegistry().versions("tb")
    if len(versions) < 2:
        pytest.skip(reason=f"one registered tb version ({versions}); swapping needs two")
    old, new = versions[0], versions[-1]
    size = tb.active.manifest.input_size_px
    tb.reconfigure({"version": old, "shadow_version": new})
    assert tb.info()["version"] == old and tb.info()["shadow_version"] == new
    reply = tb.run_batch([tb_item(size)])[0]
    assert reply["version"] == old and tb.shadow_runs >= 1
    assert tb.shadow_log[-1]["version"] == new
    tb.reconfigure({"version": new})
    assert tb.info()["version"] == new and tb.info()["shadow_version"] is None


@pytest.mark.parametrize("name", ["tb", "derm", "vitals"])
def test_torch_engine_matches_onnxruntime(name):
    if name not in ModelRegistry().names():
        pytest.skip(reason=f"no {name} model registered")
    manifest = ModelRegistry().get(name)
    if not (manifest.path.parent / "model.ts").exists():
        pytest.skip(reason=f"{name}@{manifest.version} has no TorchScript export")
    ort_engine = create_engine(manifest.path.parent, manifest.path.name, engine="onnxruntime", device="cpu")
    torch_engine = create_engine(manifest.path.parent, manifest.path.name, engine="torch", device="cpu")
    assert torch_engine.name.startswith("torch") and torch_engine.input_names == ort_engine.input_names
    batch = np.random.default_rng(0).random([3] + ort_engine.input_shapes[0][1:], dtype=np.float32)
    a = ort_engine.run({ort_engine.input_names[0]: batch})
    b = torch_engine.run({torch_engine.input_names[0]: batch})
    for key in a:
        assert np.abs(a[key] - b[key]).max() <= 1e-4 * max(1.0, float(np.abs(a[key]).max()))


#: A site's own code for derm's melanoma class and for bkl (a local code until a licensed SNOMED CT
#: browser confirms a concept), as configuration ``class_codes.derm`` gives them.
SITE_CODES = {"mel": {"value": "mel-site", "scheme": "99MEDGATE", "meaning": "Melanoma (site code)"},
              "bkl": {"value": "bkl-site", "scheme": "99MEDGATE", "meaning": "Benign keratosis (site code)"}}


def test_class_codes_change_the_code_a_derm_finding_gets():
    from dicom_testdata import make_photo_dataset
    from serving.imaging.findings import class_finding

    ds = make_photo_dataset(np.full((64, 64, 3), 150, np.uint8))
    findings = {}
    for label, codes in (("card", None), ("site", SITE_CODES)):
        server = ModelServer("derm", {"engine": "onnxruntime", "device": "cpu", "class_codes": codes})
        server.reconfigure({})
        info = server.info()
        reply = server.run_batch([np.zeros((3, info["input_size_px"], info["input_size_px"]), np.float32)])[0]
        findings[label] = class_finding(ds, reply, info)
    assert (findings["card"].code.value, findings["card"].code.scheme) == ("372244006", "SCT")
    site = findings["site"]
    assert (site.code.value, site.code.scheme, site.code.meaning) == ("mel-site", "99MEDGATE", "Melanoma (site code)")
    assert site.probability == findings["card"].probability
    assert "bkl (Benign keratosis (site code))" in " ".join(site.notes)
    mapped = {c["name"]: c for c in server.info()["classes"]}
    assert mapped["bkl"]["card_code"]["value"] == "bkl" and mapped["df"]["snomed_ct"] == "UNVERIFIED"


@pytest.mark.parametrize("model, codes, message", [
    ("derm", {"melanoma": SITE_CODES["mel"]}, "class_codes.derm .*melanoma"),
    ("tb", {"tb": SITE_CODES["mel"]}, "class_codes.tb is given, but tb .* no classes")])
def test_class_codes_that_do_not_fit_the_model_fail_its_load(model, codes, message):
    with pytest.raises(ValueError, match=message):
        ModelServer(model, {"device": "cpu", "class_codes": codes}).reconfigure({})
