"""Faults injected into a running ``medgate serve``; every process is started and killed by pid.

Peers are real: DCMTK ``storescu`` (the modality) and ``storescp`` (the PACS), Mosquitto, and the
recording FHIR server of the other end-to-end tests (:class:`peers.FhirRecorder`).

* kill -9 of the whole server tree, twice, while 50 chest X-ray studies and a QoS 1 vitals stream
  are in flight: after the restarts every acknowledged instance is processed, each study has one
  SR at the PACS and one DiagnosticReport at the FHIR server, and each acknowledged vitals message
  one heart-rate Observation.
* PACS and FHIR server down for ``MEDGATE_FAULT_OUTAGE_S`` (default 180 s) while studies and vitals
  arrive, then up: everything delivered once.
* Mosquitto restarted mid-stream: the bridge reconnects, no acknowledged message lost.
* The ``tb`` replica frozen (SIGSTOP) under load, so that requests are inside it, then killed: each
  request answers (or fails with a JSON error, the study parked with a reason) and the server goes
  on serving.

The broker-restart, replica-kill and kill -9 tests run while the outage server waits (module
fixture :func:`outage`); the last test ends the outage. Random kill points come from
``MEDGATE_FAULT_SEED`` (printed; random when unset).
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests
from pydicom import dcmread

from fault_rig import (Modality, VitalsPublisher, assert_delivered_once, heart_rates, persisted_resources, send,
                       wait_processed, write_studies)
from peers import FhirRecorder, broker, free_port, require_peer, start_storescp, stop_process, wait_until
from server_process import ServerProcess
from serving.store import Store

SEED = int(os.environ.get("MEDGATE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
OUTAGE_S = float(os.environ.get("MEDGATE_FAULT_OUTAGE_S", "180"))
N_STUDIES = 50
TB_REPLICA = "ray::ServeReplica:medgate:tb"  # process title of the tb model replica


@pytest.fixture(scope="module", autouse=True)
def peers_installed():
    for name, package in (("storescu", "dcmtk"), ("storescp", "dcmtk"), ("mosquitto", "mosquitto")):
        require_peer(name, package)
    print(f"fault seed {SEED} (set MEDGATE_FAULT_SEED={SEED} to repeat)")


class Rig:
    """``medgate serve`` with its peers (Mosquitto, storescp as PACS, a FHIR server) and what was
    sent to it that must come out: studies and acknowledged vitals messages."""

    def __init__(self, root: Path, *broker_lines: str) -> None:
        self.root = root
        self.broker = broker(root, "allow_anonymous true", *broker_lines)
        self.pacs_port, self.pacs_dir, self.pacs = free_port(), root / "pacs", None
        self.fhir = FhirRecorder(free_port())
        config = {
            "state_dir": str(root / "var"),
            "dicom": {"ae_title": "MEDGATE", "port": free_port()},
            "destinations": {"pacs": {"ae_title": "PACS", "port": self.pacs_port, "objects": ["sr"]}},
            "http": {"port": free_port()},
            "mqtt": {"url": f"mqtt://127.0.0.1:{self.broker.port}", "reconnect_min_s": 0.2,
                     "reconnect_max_s": 2.0},
            "fhir": {"base_url": f"http://127.0.0.1:{self.fhir.port}/fhir"},
            "outbox": {"backoff_max_s": 5.0},  # retry often: the test waits for the first one after an outage
        }
        self.server = ServerProcess(config, root)
        self.studies: set[str] = set()
        self.vitals: set[tuple[str, datetime]] = set()
        self.outage_started = time.monotonic()

    @property
    def dicom_port(self) -> int:
        return self.server.config["dicom"]["port"]

    def store(self) -> Store:
        return Store(self.root / "var" / "medgate.sqlite3")

    def peers_up(self) -> None:
        self.pacs = start_storescp(self.pacs_port, self.pacs_dir)
        self.fhir.start()

    def stop(self) -> None:
        self.server.stop()
        if self.pacs is not None:
            stop_process(self.pacs)
        self.fhir.stop()
        self.broker.stop()
        print(self.server.log_tail())


# -- the outage server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """A server whose PACS and FHIR server are down from its start for ``OUTAGE_S``; 20 studies
    arrive at once. :func:`test_outage_then_everything_delivered_once` ends the outage."""
    root = tmp_path_factory.mktemp("outage")
    rig = Rig(root, "persistence true", f"persistence_location {root}/", "autosave_interval 1")
    try:
        rig.server.start()
        rig.outage_started = time.monotonic()
        files = write_studies(root / "studies", 20, seed=SEED % 1000)
        acked = send(rig.dicom_port, list(files))
        assert len(acked) == len(files)
        rig.studies |= {files[f] for f in acked}
        yield rig
    finally:
        rig.stop()


def test_mosquitto_restart_mid_stream_loses_no_acknowledged_message(outage):
    rng = random.Random(SEED + 3)
    publisher = VitalsPublisher(outage.broker.port, "restart")
    publisher.start()
    time.sleep(rng.uniform(2.0, 5.0))
    outage.broker.restart()  # SIGTERM; queued messages persist, the bridge's session too
    restarted_at = datetime.now(timezone.utc)
    wait_until(lambda: outage.server.http_get("/readyz")[1].get("checks", {}).get("mqtt") == "ok"
               and len(publisher.acked()) > 0, timeout_s=60)
    time.sleep(4.0)  # keep publishing after the reconnect
    acked = publisher.stop()
    store = outage.store()
    try:  # the FHIR server is down: the resources wait in the outbox, persisted with the batch
        rates = wait_until(lambda: (r := heart_rates(persisted_resources(store))).keys() >= acked and r,
                           timeout_s=60, interval_s=0.5)
    finally:
        store.close()
    after = {key for key in acked if key[1] > restarted_at}
    print(f"broker restart: {len(publisher.sent)} published, {len(acked)} acknowledged ({len(after)} after "
          f"the restart), {len(rates)} persisted")
    assert after  # the bridge reconnected and went on storing
    assert all(len(ids) == 1 for ids in rates.values())
    outage.vitals |= acked


def test_tb_replica_killed_under_load_requests_answer_and_server_goes_on(outage, tmp_path):
    rng = random.Random(SEED + 4)
    server = outage.server
    (victim,) = [pid for pid, cmd in server.descendants().items() if cmd.startswith(TB_REPLICA)]
    files = write_studies(tmp_path / "studies", 9, seed=SEED % 1000 + 1)
    upload, stored = next(iter(files)), list(files)[1:]
    url = f"http://127.0.0.1:{server.config['http']['port']}/v1/infer/tb"
    headers = {"Authorization": f"Bearer {server.token}"}
    answers: list[tuple[int, object]] = []
    halt = threading.Event()

    def infer() -> tuple[int, object]:
        response = requests.post(url, files={"file": (upload.name, upload.read_bytes())}, headers=headers,
                                 timeout=120)  # a hang fails the test
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def load() -> None:
        while not halt.is_set():
            answers.append(infer())

    def modality() -> set[Path]:  # one study per association, around the kill
        acked = set()
        for path in stored:
            acked |= send(outage.dicom_port, [path])
            time.sleep(0.4)
        return acked

    assert infer()[0] == 200  # warm: the load below is steady
    # An admin's DICOM upload writes its results as a routed study's are (serving.imaging.results):
    # its SR goes to the PACS and its report to the FHIR server, once however often it is uploaded.
    outage.studies.add(files[upload])
    with ThreadPoolExecutor(5) as pool:
        clients = [pool.submit(load) for _ in range(4)]
        sent = pool.submit(modality)
        time.sleep(rng.uniform(1.0, 2.5))
        os.kill(victim, signal.SIGSTOP)  # frozen first, so that requests are inside it when it dies
        time.sleep(rng.uniform(1.0, 2.0))
        os.kill(victim, signal.SIGKILL)
        killed_after = len(answers)
        time.sleep(3.0)
        halt.set()
        for client in clients:
            client.result()
        acked = sent.result()
    statuses = [status for status, _ in answers]
    print(f"tb replica {victim} killed after {killed_after} answers; HTTP statuses "
          f"{ {s: statuses.count(s) for s in set(statuses)} }")
    for status, body in answers:
        assert (status == 200 and "findings" in body) or (
            status >= 500 and isinstance(body, dict) and body.get("error")), (status, body)
    settled = wait_processed(outage, {files[f] for f in acked})
    print(f"C-STORE {len(acked)}/{len(stored)} acknowledged; studies "
          f"{[status + (f' ({detail})' if status != 'done' else '') for status, detail in settled.values()]}")
    for study, (status, detail) in settled.items():
        assert status == "done" or detail, (study, status, detail)  # or parked with a reason
    outage.studies |= {s for s, (status, _) in settled.items() if status == "done"}

    # Serve starts a new replica; new requests on both paths succeed.
    wait_until(lambda: any(cmd.startswith(TB_REPLICA) and pid != victim
                           for pid, cmd in server.descendants().items()), timeout_s=120, interval_s=1.0)
    wait_until(lambda: infer()[0] == 200, timeout_s=120, interval_s=2.0)
    more = write_studies(tmp_path / "after", 1, seed=SEED % 1000 + 2)
    assert send(outage.dicom_port, list(more)) == set(more)
    assert {s for s, _ in wait_processed(outage, set(more.values())).values()} == {"done"}
    outage.studies |= set(more.values())


def test_kill_9_twice_with_studies_and_vitals_in_flight(tmp_path):
    rng = random.Random(SEED)
    rig = Rig(tmp_path, "persistence false")
    rig.peers_up()
    files = write_studies(tmp_path / "studies", N_STUDIES, seed=SEED % 1000 + 3)
    paths = list(files)
    try:
        rig.server.start()
        publisher = VitalsPublisher(rig.broker.port, "kill")
        publisher.start()
        modalities = [Modality(rig.dicom_port, paths[i::2]) for i in range(2)]  # two associations at a time
        for m in modalities:
            m.start()
        for kill in (1, 2):
            time.sleep(rng.uniform(1.0, 8.0))
            acked = set().union(*(m.acked for m in modalities))
            rig.server.kill()
            store = rig.store()
            try:  # every instance answered with Success before the crash is on disk
                held = {r["sop_instance_uid"] for r in store.database.rows("SELECT sop_instance_uid FROM instances")}
                studies = dict(store.database.rows("SELECT status, count(*) FROM studies GROUP BY status"))
                waiting = store.database.rows("SELECT count(*) AS n FROM outbox WHERE status='pending'")[0]["n"]
            finally:
                store.close()
            assert {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in acked} <= held
            print(f"kill {kill}: {len(acked)} instances acknowledged, {len(held)} held, studies {studies}, "
                  f"{waiting} outbox items pending, {len(publisher.acked())} vitals acknowledged")
            rig.server.start()
        for m in modalities:
            m.join(120)
            assert not m.pending, m.pending
        rig.studies = {files[p] for p in paths}
        settled = wait_processed(rig, rig.studies)
        assert {s for s, _ in settled.values()} == {"done"}, settled
        rig.vitals = publisher.stop()
        assert_delivered_once(rig)
        print(f"associations: {sum(m.associations for m in modalities)}; vitals published "
              f"{len(publisher.sent)}")
    finally:
        rig.stop()


def test_outage_then_everything_delivered_once(outage, tmp_path):
    publisher = VitalsPublisher(outage.broker.port, "outage")
    publisher.start()
    files = write_studies(tmp_path / "studies", 10, seed=SEED % 1000 + 4)
    outage.studies |= {files[f] for f in send(outage.dicom_port, list(files))}
    left = OUTAGE_S - (time.monotonic() - outage.outage_started)
    time.sleep(max(left, 0.0))
    outage.vitals |= publisher.stop()
    store = outage.store()
    try:
        pending = store.database.rows("SELECT kind, count(*) AS n, max(attempts) AS attempts FROM outbox"
                              " WHERE status!='sent' GROUP BY kind")
    finally:
        store.close()
    print(f"after {OUTAGE_S:.0f} s down: " + ", ".join(f"{r['n']} {r['kind']} items waiting "
                                                     f"(up to {r['attempts']} attempts)" for r in pending))
    outage.peers_up()
    assert_delivered_once(outage)
