"""Orthanc (a full PACS) configured with medgate as a modality pushes a study to it."""
from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest

from gateway_helpers import Running, write_ct_series
from dicom_gateway.routing import Rule
from peers import free_port, require_peer, stop_process, wait_for_port, wait_until


@pytest.fixture
def orthanc(tmp_path):
    """Yields ``(http_url, set_medgate_port)``; Orthanc starts once medgate's port is known."""
    binary = require_peer("Orthanc", "orthanc")
    procs = []

    def start(medgate_port: int) -> str:
        http_port, dicom_port = free_port(), free_port()
        config = {"Name": "medgate-test", "StorageDirectory": str(tmp_path / "orthanc-db"),
                  "IndexDirectory": str(tmp_path / "orthanc-db"), "HttpPort": http_port,
                  "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "HttpServerEnabled": True,
                  "DicomModalities": {"medgate": ["MEDGATE", "127.0.0.1", medgate_port]},
                  "Plugins": []}
        path = tmp_path / "orthanc.json"
        path.write_text(json.dumps(config))
        log = open(tmp_path / "orthanc.log", "wb")
        procs.append(subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT))
        wait_for_port(http_port, timeout_s=30, proc=procs[-1])
        return f"http://127.0.0.1:{http_port}"

    yield start
    for proc in procs:
        stop_process(proc)


def _http(url: str, data: bytes | None = None, content_type: str = "application/dicom") -> dict:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"{}")


def test_orthanc_pushes_a_ct_study(tmp_path, orthanc):
    running = Running(tmp_path, rules=(Rule(models=("nodule",), modalities=frozenset({"CT"})),))
    try:
        base = orthanc(running.scp.port)
        files = write_ct_series(tmp_path / "ct", 20)
        uploaded = [_http(base + "/instances", f.read_bytes()) for f in files]
        study_id = uploaded[0]["ParentStudy"]
        reply = _http(base + "/modalities/medgate/store", json.dumps(study_id).encode(), "application/json")
        assert reply.get("InstancesCount", len(files)) == len(files), reply
        wait_until(lambda: running.completed, timeout_s=20)
        study_uid = _http(base + f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"]
        assert running.completed == [(study_uid, "nodule")]
        rows = running.store.instances_of(study_uid)
        assert len(rows) == len(files) and {r["calling_ae"] for r in rows} == {"ORTHANC"}
    finally:
        running.stop()
