"""What ``medgate demo`` does: exercise a running server end to end and say where the results went.

Sends one generated chest X-ray (DX, with upper-lobe opacities) by C-STORE and publishes a minute of
generated, deteriorating vitals (one reading a second, sent at once) to the server's broker, then
waits for the SR, the Observations and the alerts.  Everything it sends is generated: no patient.
"""
from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from dicom_gateway.scu import send_files
from iomt.bridge import broker_address
from kernel.database import database_path
from serving.components import read_components
from serving.config import Settings
from serving.store import Store
from training.synthetic.cxr import generate_cxr
from training.synthetic.dicom import make_dx_dataset
from training.synthetic.vitals import vitals_course

DEMO_WARD, DEMO_BED = "ward-a", "bed-01"


def _send_study(settings: Settings, port: int) -> tuple[str, float]:
    sample = generate_cxr(np.random.default_rng(7), tb=True)
    ds = make_dx_dataset(sample.pixels, patient_id="DEMO-" + uuid.uuid4().hex[:8])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cxr.dcm"
        ds.save_as(path, enforce_file_format=True)
        sent_at = time.time()
        send_files([path], ae_title=settings.dicom.ae_title, host=settings.dicom.host, port=port,
                   calling_ae_title="MEDGATE-DEMO")
    return str(ds.StudyInstanceUID), sent_at


def _publish_vitals(client: mqtt.Client, prefix: str, patient_id: str) -> int:
    course = vitals_course(60, patient_id=patient_id, deteriorating=True, seed=1, device="demo-monitor-1")
    for payload in course:
        client.publish(f"{prefix}/{DEMO_WARD}/{DEMO_BED}/vitals", json.dumps(payload), qos=1).wait_for_publish(10)
    return len(course)


def run_demo(settings: Settings, timeout_s: float = 120.0) -> int:
    """Run the demo against the server configured by ``settings``; 0 when every result arrived."""
    state_dir = settings.state_dir.resolve()
    status = read_components(state_dir)
    if not status:
        print(f"no running medgate found (no status under {state_dir}); start it with `make run`")
        return 1
    port = status.get("dicom_port") or settings.dicom.port
    host, mqtt_port, tls = broker_address(settings.mqtt.url, settings.mqtt.embedded_port, settings.mqtt.embedded_host)
    prefix = settings.mqtt.topic_prefix
    alerts: list[dict] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"medgate-demo-{uuid.uuid4().hex[:6]}")
    if tls:
        client.tls_set()
    client.on_message = lambda c, u, m: alerts.append(json.loads(m.payload))
    client.connect(host, mqtt_port)
    client.subscribe(f"{prefix}/alerts/{DEMO_WARD}/{DEMO_BED}", qos=1)
    client.loop_start()
    patient_id = "DEMO-VITALS-" + uuid.uuid4().hex[:6]
    try:
        study_uid, sent_at = _send_study(settings, port)
        print(f"sent chest X-ray study {study_uid} to {settings.dicom.ae_title}@{settings.dicom.host}:{port}")
        n = _publish_vitals(client, prefix, patient_id)
        print(f"published {n} vitals readings for {patient_id} on {prefix}/{DEMO_WARD}/{DEMO_BED}/vitals")
        return _report(settings, state_dir, study_uid, sent_at, patient_id, alerts, timeout_s)
    finally:
        client.loop_stop()
        client.disconnect()


def _report(settings: Settings, state_dir: Path, study_uid: str, sent_at: float, patient_id: str,
            alerts: list[dict], timeout_s: float) -> int:
    store = Store(database_path(state_dir))
    deadline = time.time() + timeout_s
    sr, observations, delivered = None, [], settings.destinations.pacs is None
    try:
        while time.time() < deadline:
            results = store.results_of(study_uid)
            sr = results[0] if results else None
            observations = store.resources("Observation", f"Patient/{patient_id}")
            if sr and settings.destinations.pacs:
                key = f"dicom:{sr.summary['sop_instance_uid']}:pacs"
                item = store.outbox.item(key)
                delivered = item is not None and item.status == "sent"
            if sr and delivered and len(observations) >= 60 and alerts:
                break
            time.sleep(0.2)
    finally:
        store.close()
    ok = True
    if sr:
        f = sr.summary["findings"][0]
        print(f"SR (TID 1500): {sr.path}  [{sr.summary['model']}@{sr.summary['version']}: "
              f"p(TB)={f['probability']:.3f}, {'positive' if f['positive'] else 'negative'}; "
              f"stored {sr.created_at - sent_at:.2f} s after C-STORE]")
        pacs = settings.destinations.pacs
        if pacs:
            print(f"SR sent to PACS {pacs.ae_title}@{pacs.host}:{pacs.port}: {'yes' if delivered else 'NOT YET'}")
            ok &= delivered
        else:
            print("no PACS destination configured: SR kept in the local store")
    else:
        print(f"no SR for study {study_uid} within {timeout_s:.0f} s")
        ok = False
    news2 = [o for o in observations if o.get("valueInteger") is not None]
    print(f"FHIR Observations stored for Patient/{patient_id}: {len(observations)} "
          f"({len(news2)} NEWS2 scores) in {database_path(state_dir)}")
    if news2:
        print(f"latest NEWS2: {news2[-1]['valueInteger']}")
    print(f"alerts received on {settings.mqtt.topic_prefix}/alerts/{DEMO_WARD}/{DEMO_BED}: {len(alerts)}"
          + (f" (last: NEWS2 {alerts[-1]['news2']}, band {alerts[-1]['band']})" if alerts else ""))
    print(f"dashboard: http://{settings.http.host}:{settings.http.port}/ (sign in with a token of auth.tokens"
          f" or the one in {state_dir / 'auth' / 'admin.token'})")
    print("all results are generated test data - not for clinical use")
    return 0 if ok and observations and alerts else 1
