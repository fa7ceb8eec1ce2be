"""benchmarks/peers/launch.py with the real peers: LitServe and BentoML, each from its own virtual
environment (``bash benchmarks/peers/setup.sh``), serving tb with its own batching; skipped, naming
that command, where the environment is not made."""
from __future__ import annotations

import io
import socket
import sys

import numpy as np
import pytest
from PIL import Image

from benchmarks.peers import ROUTE
import benchmarks.peers.launch as launch
from benchmarks.peers.launch import PEERS, Peer, serving
from benchmarks.peers.tb_model import TbModel
from benchmarks.report import free_port
from benchmarks.serve_overhead import concurrent, probability_in, upload_client


@pytest.fixture(scope="module")
def upload():
    """A PNG and the probability the tb model gives it (medgate's engine, medgate's preprocessing)."""
    out = io.BytesIO()
    Image.fromarray((np.random.default_rng(3).random((256, 256)) * 255).astype(np.uint8)).save(out, "PNG")
    model = TbModel()
    png = out.getvalue()
    return png, model.probabilities([model.item(png)])[0], model.manifest.version


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_serves_tb_with_the_same_answer_and_stops(name, upload, tmp_path):
    peer = PEERS[name]
    missing = peer.missing()
    if missing:
        pytest.skip(reason=f"peer server not installed here: {missing}")
    png, expected, version = upload
    port = free_port()
    with serving(peer, port, tmp_path / f"{name}.log", version) as base:
        call = upload_client(base + ROUTE, png)
        assert probability_in(call()) == pytest.approx(expected, abs=1e-5)
        assert concurrent(call, 8, 4)["req_per_s"] > 0  # concurrent callers, batched by the peer
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listens after it was stopped"
    versions = peer.versions()
    assert versions[name] and versions["onnxruntime"]


def test_a_peer_that_exits_at_start_is_reported_with_its_log(tmp_path, monkeypatch):
    (tmp_path / "venvs" / "litserve" / "bin").mkdir(parents=True)
    (tmp_path / "venvs" / "litserve" / "bin" / "python").symlink_to(sys.executable)
    monkeypatch.setattr(launch, "VENVS", tmp_path / "venvs")
    peer = PEERS["litserve"]
    broken = Peer(peer.name, ("python", "-c", "raise SystemExit(3)"), peer.ready_path, peer.batching)
    assert broken.missing() is None
    with pytest.raises(RuntimeError, match=r"exited with 3 before it was ready; see .*litserve.log"):
        with serving(broken, free_port(), tmp_path / "litserve.log"):
            pass
