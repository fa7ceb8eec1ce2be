"""CPU engine settings of a replica (threads) and the engine variants of a model card."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from models.registry import ModelIntegrityError, ModelManifest, ModelRegistry
from serving.config import ServingConfig
from serving.inference.deployments import variant_file
from serving.inference.engine_onnx import cpu_threads
from serving.inference.engines import create_engine


@pytest.fixture(scope="module")
def nodule():
    return ModelRegistry().get("nodule")


def test_cpu_session_gets_the_threads_asked_for_and_every_cpu_by_default(nodule):
    import onnxruntime as ort

    one = create_engine(nodule.path.parent, nodule.path.name, engine="onnxruntime", device="cpu", intra_op_threads=1)
    options = one.session.get_session_options()
    assert one.intra_op_threads == options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1 and options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    default = create_engine(nodule.path.parent, nodule.path.name, engine="onnxruntime", device="cpu")
    # every CPU of the process, not Ray's num_cpus share (a Ray actor with num_cpus 1 would get 1)
    assert default.intra_op_threads == default.session.get_session_options().intra_op_num_threads == cpu_threads()
    with pytest.raises(ValueError, match="intra_op_threads"):
        create_engine(nodule.path.parent, nodule.path.name, engine="onnxruntime", device="cpu", intra_op_threads=0)


def test_volume_runner_gives_torch_the_engine_threads(nodule):
    import torch

    from models.nodule.serving import serve_volume
    from serving.inference.runners import VolumeRunner

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # what OMP_NUM_THREADS=1 of a Ray actor with num_cpus 1 gives
        engine = create_engine(nodule.path.parent, nodule.path.name, engine="onnxruntime", device="cpu",
                               intra_op_threads=2)
        VolumeRunner(engine, nodule, serve_volume)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_serving_config_takes_threads_and_variants():
    cfg = ServingConfig(intra_op_threads=2, variants={"nodule": "int8"})
    assert cfg.intra_op_threads == 2 and cfg.variants == {"nodule": "int8"}
    assert ServingConfig().intra_op_threads is None and ServingConfig().variants == {}
    with pytest.raises(ValueError):
        ServingConfig(intra_op_threads=0)


def test_variant_file_is_the_cards_checked_file(tmp_path, nodule):
    folder = tmp_path / "nodule" / nodule.version
    folder.mkdir(parents=True)
    shutil.copy(nodule.path, folder / nodule.path.name)
    (folder / "model.int8.onnx").write_bytes(b"not really a model")
    from models.registry import file_sha256

    meta = dict(nodule.raw)
    meta["engine_variants"] = {"int8": {"file": "model.int8.onnx", "sha256": file_sha256(folder / "model.int8.onnx")},
                               "bad": {"file": "model.int8.onnx", "sha256": "0" * 64}}
    (folder / "metadata.json").write_text(json.dumps(meta))
    manifest = ModelManifest.from_file(folder / "metadata.json")
    assert variant_file(manifest, None) == nodule.path.name
    assert variant_file(manifest, "int8") == "model.int8.onnx"
    with pytest.raises(ModelIntegrityError, match="bad"):
        variant_file(manifest, "bad")
    with pytest.raises(ValueError, match="no engine variant 'fp8'"):
        variant_file(manifest, "fp8")


def test_the_cards_int8_evaluation_is_recorded_with_its_margin_and_decision():
    """Both held-out figures and the decision travel with the model card (models/nodule/int8.json)."""
    from pathlib import Path

    record = json.loads((Path(__file__).resolve().parents[3] / "models" / "nodule" / "int8.json").read_text())
    entry = record["1.0.0"]
    fp32, int8 = entry["evaluation"]["fp32"], entry["evaluation"]["int8"]
    decision = entry["decision"]
    assert decision["cpm_margin"] == 0.02 and fp32["n_scans"] == int8["n_scans"] == 16
    assert decision["cpm_delta"] == pytest.approx(int8["cpm"] - fp32["cpm"], abs=1e-4)
    assert decision["offered"] == (decision["within_margin"] and decision["faster"])
    meta = ModelRegistry().get("nodule", "1.0.0").raw
    assert ("int8" in (meta.get("engine_variants") or {})) == decision["offered"]
    assert np.isfinite(decision["ms_per_patch"]["int8"])
