"""What the fault tests send and what they count at the far end, shared by the single-node rig
(``test_faults.py``) and the cluster rig (``cluster_rig.py``).

Sending: :func:`write_studies` (one-image chest X-ray studies as files), :func:`send` (one
``storescu`` association), :class:`Modality` (sends again what got no Success, to the next port
when one is down), :class:`VitalsPublisher` (QoS 1 vitals of many beds over several wards, one
message per bed per second, those the broker acknowledged recorded).

Counting: :func:`srs_at_pacs`, :func:`reports_at_fhir`, :func:`heart_rates`,
:func:`persisted_resources`, and :func:`assert_delivered_once` / :func:`wait_processed` on any rig
that offers ``pacs_dir``, ``fhir``, ``studies``, ``vitals`` and ``store()`` (a
:class:`serving.store.Store` the caller closes).
"""
from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import paho.mqtt.client as mqtt
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from iomt import vital_records
from peers import FhirRecorder, storescu, wait_until
from serving.store import Store
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset
from training.synthetic.vitals import vitals_course

HEART_RATE = "8867-4"  # LOINC; one per vitals message
PATIENTS = [f"0791234500{p:02d}" for p in range(5)]  # the single-node rig's five beds


@dataclass(frozen=True)
class Bed:
    """One monitored bed: its ward and bed topic levels and its patient."""

    ward: str
    bed: str
    patient: str


def beds(n: int, wards: Sequence[str]) -> list[Bed]:
    """``n`` beds dealt round the ``wards``, each with a patient of its own (10-digit ids)."""
    if not wards:
        raise ValueError("at least one ward is required")
    return [Bed(wards[i % len(wards)], f"bed-{i}", f"07{91000000 + i:08d}") for i in range(n)]


FAULT_BEDS = [Bed("ward-f", f"bed-{i}", patient) for i, patient in enumerate(PATIENTS)]


class Rig(Protocol):
    """What :func:`assert_delivered_once` and :func:`wait_processed` read of a rig."""

    pacs_dir: Path
    fhir: FhirRecorder
    studies: set[str]
    vitals: set[tuple[str, datetime]]

    def store(self) -> Store: ...


# -- sending -------------------------------------------------------------------------------------
def write_studies(folder: Path, n: int, seed: int) -> dict[Path, str]:
    """``n`` one-image chest X-ray studies as files; path -> Study Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        ds = make_dx_dataset(generate_cxr(rng, size_px=128, tb=bool(i % 2)).pixels)
        path = folder / f"cxr{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out[path] = ds.StudyInstanceUID
    return out


def store_responses(port: int, files: list[Path]) -> tuple[set[Path], list[str]]:
    """``storescu -v`` of ``files`` in one association: the files answered with Success, and the
    text of every other C-STORE response (e.g. ``Refused: OutOfResources [...]``)."""
    result = storescu(port, *files, extra=("-v",), timeout_s=60)
    acked, refusals, current = set(), [], None
    for line in (result.stdout + result.stderr).splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response (" in line:
            status = line.split("Received Store Response (", 1)[1].rstrip(")")
            if status.startswith("Success") and current is not None:
                acked.add(current)
            elif not status.startswith("Success"):
                refusals.append(status)
    return acked, refusals


def send(port: int, files: list[Path]) -> set[Path]:
    """``storescu -v`` of ``files`` in one association; the files answered with Success."""
    return store_responses(port, files)[0]


class Modality(threading.Thread):
    """Sends ``files`` a few per association, ``gap_s`` apart, and sends again what got no Success
    until every file has one.  ``port`` is one port, or several: an association that got no Success
    at all (its node down) moves the modality on to the next port, as a modality configured with a
    second gateway would."""

    def __init__(self, port: int | Sequence[int], files: list[Path], per_association: int = 3,
                 gap_s: float = 1.5) -> None:
        super().__init__(daemon=True)
        self.ports = [port] if isinstance(port, int) else list(port)
        self.pending = list(files)
        self.per_association, self.gap_s = per_association, gap_s
        self.acked: set[Path] = set()
        self.acked_by: dict[Path, int] = {}  # file -> the port that answered Success
        self.refusals: list[tuple[float, str]] = []  # (wall time, response) of each non-Success response
        self.associations = 0
        self.failovers = 0  # moves to the next port

    @property
    def port(self) -> int:
        return self.ports[0]

    def run(self) -> None:
        while self.pending:
            port = self.ports[0]
            got, refused = store_responses(port, self.pending[:self.per_association])
            self.refusals += [(time.time(), status) for status in refused]
            self.associations += 1
            self.acked |= got
            self.acked_by.update(dict.fromkeys(got, port))
            self.pending = [f for f in self.pending if f not in self.acked]
            if not got and len(self.ports) > 1:
                self.ports.append(self.ports.pop(0))
                self.failovers += 1
            time.sleep(self.gap_s if got else 1.0)


class VitalsPublisher(threading.Thread):
    """One QoS 1 vitals message per bed per ``interval_s`` (message time = wall time, whole
    seconds) on ``{prefix}/{ward}/{bed}/vitals`` until stopped; :meth:`acked` gives the
    (patient, time) of those the broker acknowledged with PUBACK."""

    def __init__(self, port: int, name: str, monitored: Sequence[Bed] = FAULT_BEDS, *,
                 prefix: str = "medgate", interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.beds, self.prefix, self.interval_s = list(monitored), prefix, interval_s
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"monitor-{name}-{port}")
        self.client.max_inflight_messages_set(max(20, 2 * len(self.beds)))
        self.client.on_publish = lambda client, userdata, mid, reason, props: self._acked.append(mid)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent: dict[int, tuple[str, datetime]] = {}
        self._acked: list[int] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = datetime.now(timezone.utc).replace(microsecond=0)
        k = 0
        while not self._halt.wait(self.interval_s):
            for i, bed in enumerate(self.beds):
                payload = vitals_course(1, patient_id=bed.patient, deteriorating=False, seed=k * 1000 + i,
                                        start=start + timedelta(seconds=k))[0]
                info = self.client.publish(f"{self.prefix}/{bed.ward}/{bed.bed}/vitals", json.dumps(payload),
                                           qos=1)
                self.sent[info.mid] = (bed.patient, datetime.fromisoformat(payload["time"]))
            k += 1

    def stop(self) -> set[tuple[str, datetime]]:
        """Stop publishing; wait a moment for outstanding PUBACKs; returns :meth:`acked`."""
        self._halt.set()
        self.join(10)
        time.sleep(2.0)
        self.client.loop_stop()
        self.client.disconnect()
        return self.acked()

    def acked(self) -> set[tuple[str, datetime]]:
        return {self.sent[mid] for mid in list(self._acked) if mid in self.sent}


# -- what arrived --------------------------------------------------------------------------------
_PACS_FILES: dict[Path, tuple[str, str, str]] = {}  # path -> (Modality, Study, SOP Instance UID)


def srs_at_pacs(pacs_dir: Path) -> dict[str, list[str]]:
    """Study UID -> SOP Instance UID of each SR received (one entry per reception)."""
    out: dict[str, list[str]] = defaultdict(list)
    for path in sorted(pacs_dir.glob("*")) if pacs_dir.is_dir() else []:
        if path.name.endswith(".tmp"):
            continue
        if path not in _PACS_FILES:
            try:
                ds = dcmread(path, stop_before_pixels=True)
                _PACS_FILES[path] = (ds.Modality, ds.StudyInstanceUID, ds.SOPInstanceUID)
            except (InvalidDicomError, OSError, EOFError, AttributeError):
                continue  # still being written
        modality, study, sop = _PACS_FILES[path]
        if modality == "SR":
            out[study].append(sop)
    return out


def reports_at_fhir(fhir: FhirRecorder) -> dict[str, list[str]]:
    """Study UID -> DiagnosticReport id of each one received."""
    out: dict[str, list[str]] = defaultdict(list)
    for report in fhir.resources("DiagnosticReport"):
        for study in report.get("imagingStudy", []):
            out[study["identifier"]["value"].removeprefix("urn:oid:")].append(report["id"])
    return out


def heart_rates(resources: list[dict], patients: Sequence[str] = PATIENTS) -> dict[tuple[str, datetime], set[str]]:
    """(patient, time) -> ids of the heart-rate Observations among ``resources``; the patient is
    the one of ``patients`` the Observation's subject names."""
    out: dict[tuple[str, datetime], set[str]] = defaultdict(set)
    for obs in resources:
        if obs.get("resourceType") != "Observation" or obs["code"]["coding"][0]["code"] != HEART_RATE:
            continue
        subject = json.dumps(obs.get("subject"))
        patient = next((p for p in patients if p in subject), subject)
        out[(patient, datetime.fromisoformat(obs["effectiveDateTime"]))].add(obs["id"])
    return out


def persisted_resources(store: Store) -> list[dict]:
    """Resources the server holds: the local store, and Bundles in its outbox (sent or not)."""
    resources = [json.loads(r["body"]) for r in store.database.rows("SELECT body FROM fhir_resources")]
    resources += vital_records.observations(vital_records.select(store.vitals))
    for row in store.database.rows("SELECT payload FROM outbox WHERE kind='fhir'"):
        resources += [e["resource"] for e in json.loads(row["payload"]).get("entry", [])]
    return resources


def assert_delivered_once(rig: Rig, timeout_s: float = 180.0, patients: Sequence[str] = PATIENTS) -> str:
    """Every study of ``rig``: one SR at the PACS, one DiagnosticReport at the FHIR server; every
    acknowledged vitals message: one heart-rate Observation there; no outbox item dead.  Returns
    the counts as one line (also printed)."""
    def arrived():
        srs, reports = srs_at_pacs(rig.pacs_dir), reports_at_fhir(rig.fhir)
        return (all(srs.get(s) and reports.get(s) for s in rig.studies)
                and rig.vitals <= heart_rates(rig.fhir.resources("Observation"), patients).keys())

    try:
        wait_until(arrived, timeout_s=timeout_s, interval_s=1.0)
    finally:
        time.sleep(3.0)  # anything sent twice would arrive by now
        srs, reports = srs_at_pacs(rig.pacs_dir), reports_at_fhir(rig.fhir)
        rates = heart_rates(rig.fhir.resources("Observation"), patients)
        store = rig.store()
        try:
            dead = store.database.rows("SELECT key, last_error FROM outbox WHERE status='dead'")
            statuses = {r["status"]: r["n"] for r in
                        store.database.rows("SELECT status, count(*) AS n FROM studies GROUP BY status")}
        finally:
            store.close()
        line = (f"{len(rig.studies)} studies ({statuses}): {sum(map(len, srs.values()))} SR receptions, "
                f"{sum(len(set(v)) for v in srs.values())} distinct; {sum(map(len, reports.values()))} "
                f"DiagnosticReport receptions, {sum(len(set(v)) for v in reports.values())} distinct; "
                f"{len(rig.vitals)} acknowledged vitals messages, {len(rates)} with a heart rate at the "
                f"FHIR server; {len(dead)} dead outbox items")
        print(line)
    assert not dead, [dict(r) for r in dead[:5]]
    for study in rig.studies:
        assert len(set(srs[study])) == 1, (study, srs[study])
        assert len(set(reports[study])) == 1, (study, reports[study])
    assert set(srs) <= rig.studies  # nothing for a study that was not sent or was parked
    assert rig.vitals <= rates.keys(), sorted(rig.vitals - rates.keys())[:5]
    assert all(len(ids) == 1 for ids in rates.values())  # deterministic ids: no duplicate resource
    return line


def wait_processed(rig: Rig, studies: set[str], timeout_s: float = 180.0) -> dict[str, tuple[str, str]]:
    """Wait until each study is done or failed; study -> (status, detail)."""
    store = rig.store()
    try:
        def settled():
            rows = {s: store.study(s) for s in studies}
            if all(r is not None and r["status"] in ("done", "failed") for r in rows.values()):
                return {s: (r["status"], r["detail"]) for s, r in rows.items()}
            return None

        return wait_until(settled, timeout_s=timeout_s, interval_s=0.5)
    finally:
        store.close()
