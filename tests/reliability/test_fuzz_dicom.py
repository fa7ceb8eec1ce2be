"""Fuzzing the DICOM intake: bad data sets and bad PDUs through the C-STORE SCP, bad DICOM files and
bad requests through STOW-RS (inputs: :mod:`fuzz_inputs`, all bad by construction).

Every input must be answered with a failure status, an A-ASSOCIATE-RJ, an A-ABORT or a closed
connection (STOW-RS: a 4xx, or a Failed SOP Sequence item with its Failure Reason); nothing bad may
be stored, what was stored before stays, no thread dies, and a good instance is stored afterwards.
Counts are printed and, with MEDGATE_FUZZ_REPORT set, written to that JSON file.
"""
from __future__ import annotations

import json
import random
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

import fuzz_inputs as fuzz
from dicom_gateway.routing import Rule
from dicom_wire import Connection
from peers import free_port, wait_until
from serving.http import stow
from serving.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dicom_gateway"))
from gateway_helpers import Running  # noqa: E402 - tests/dicom_gateway is not on the path here

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom")

N_DATASETS, N_DEFLATED, N_PDUS = 1_100, 40, 400
N_STOW_PARTS, N_STOW_META = 1_000, 150
RULES = (Rule(models=("tb",), modalities=frozenset({"DX", "CR"})),
         Rule(models=("nodule",), modalities=frozenset({"CT"})))
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, fuzz.DEFLATED)
REFUSALS = ("A-ASSOCIATE-RJ", "A-ABORT", "closed", "A-ASSOCIATE-AC, no context accepted")
FAILURES = {0x0110: "0110 processing failure", 0x0117: "0117 invalid SOP instance",
            0x0122: "0122 SOP class not supported", 0x0210: "0210 duplicate invocation",
            0x0211: "0211 unrecognized operation", 0x0212: "0212 mistyped argument"}


def status_class(status: int) -> str:
    """PS3.7 C (general) and PS3.4 B.2.3 (storage) status classes."""
    if status == 0:
        return "0000 success"
    if status in (0x0001, 0x0107, 0x0116) or status >> 12 == 0xB:
        return f"{status:04X} warning"
    if status in (0xFF00, 0xFF01):
        return f"{status:04X} pending"
    if status in FAILURES:
        return FAILURES[status]
    return {0xA7: "A7xx out of resources", 0xA9: "A9xx data set does not match SOP class"}.get(
        status >> 8, "Cxxx cannot understand" if status >> 12 == 0xC else f"{status:04X} failure")


def refused(outcome: str) -> bool:
    """A failure status, a rejection, an abort or a closed connection: anything but success,
    warning or pending (PS3.7 C)."""
    return outcome in REFUSALS or not outcome.endswith(("success", "warning", "pending", "with contexts", "timeout"))


@pytest.fixture
def thread_crashes(monkeypatch):
    """Exceptions that escape any thread while the test runs."""
    crashes: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashes.append(f"{args.thread}: {args.exc_value!r}"))
    return crashes


@pytest.fixture
def gateway(tmp_path):
    running = Running(tmp_path / "gateway", rules=RULES)
    yield running
    running.stop()


def _contexts(bases: list[fuzz.Encoded]) -> dict[tuple[str, str], int]:
    classes = sorted({b.sop_class for b in bases})
    return {(c, t): 1 + 2 * i for i, (c, t) in enumerate((c, t) for c in classes for t in SYNTAXES)}


def _associate(port: int, contexts: dict[tuple[str, str], int]) -> Connection:
    connection = Connection(port)
    assert connection.associate([(i, c, t) for (c, t), i in contexts.items()]) == "A-ASSOCIATE-AC"
    assert all(connection.accepted.values())
    return connection


def _good(seed: int) -> list[fuzz.Encoded]:
    """Good instances not used by the fuzz inputs (their own UIDs), Explicit VR Little Endian."""
    return [e for e in fuzz.encoded_instances(seed) if not e.implicit]


def _stored(store: Store) -> set[str]:
    return {r["sop_instance_uid"] for r in store.database.rows("SELECT sop_instance_uid FROM instances")}


def test_bad_datasets_through_the_scp(gateway, tmp_path, thread_crashes, caplog):
    bases = fuzz.encoded_instances(1)
    contexts = _contexts(bases)
    before, after = _good(101), _good(102)
    connection = _associate(gateway.scp.port, contexts)
    for good in before:
        assert connection.store(contexts[(good.sop_class, good.transfer_syntax)], good.sop_class,
                                good.sop_instance, good.data).status == 0

    rng = random.Random(5)
    inputs = fuzz.bad_datasets(N_DATASETS, bases=bases) + [fuzz.deflated_garbage(rng, rng.choice(bases))
                                                            for _ in range(N_DEFLATED)]
    outcomes, families, new_associations, accepted = Counter(), Counter(), 0, []
    for bad in inputs:
        reply = connection.store(contexts[(bad.sop_class, bad.transfer_syntax)], bad.sop_class,
                                 bad.sop_instance, bad.data)
        outcome = status_class(reply.status) if reply.status is not None else reply.kind
        outcomes[outcome] += 1
        families[f"{bad.family}: {outcome}"] += 1
        if reply.status == 0:
            accepted.append(bad.detail)
        if reply.status is None:  # the SCP ended the association: go on with a new one
            connection.close()
            connection = _associate(gateway.scp.port, contexts)
            new_associations += 1
    assert connection.release() == "A-RELEASE-RP"

    connection = _associate(gateway.scp.port, contexts)  # the SCP still stores a good instance
    stored_after = [connection.store(contexts[(g.sop_class, g.transfer_syntax)], g.sop_class, g.sop_instance,
                                     g.data).status for g in after]
    connection.release()
    good_uids = {g.sop_instance for g in before + after}
    refusals_logged = sum("refused" in r.getMessage() for r in caplog.records if r.name.startswith("medgate"))
    counts = {"inputs": len(inputs), "outcomes": dict(outcomes), "by_family": dict(sorted(families.items())),
              "accepted": accepted, "new_associations": new_associations, "refusals_logged": refusals_logged,
              "crashes": len(thread_crashes) + outcomes["timeout"]}
    fuzz.report("dicom_scp_datasets", counts)

    assert len(inputs) >= 1_000
    assert counts["crashes"] == 0, thread_crashes
    assert all(refused(o) for o in outcomes), outcomes
    assert refusals_logged >= len(inputs) - outcomes["closed"] - outcomes["A-ABORT"]
    assert stored_after == [0] * len(after)
    assert _stored(gateway.store) == good_uids  # nothing bad was stored, nothing good was lost
    files = sorted(p.name for p in (tmp_path / "gateway").rglob("*.dcm"))
    assert files == sorted(f"{uid}.dcm" for uid in good_uids)  # and nothing was written elsewhere


def test_bad_pdus_through_the_scp(gateway, thread_crashes):
    bases = fuzz.encoded_instances(1)
    contexts = [(1, bases[0].sop_class, bases[0].transfer_syntax), (3, bases[4].sop_class, bases[4].transfer_syntax)]
    threads = threading.active_count()
    outcomes, families = Counter(), Counter()
    inputs = fuzz.bad_pdus(N_PDUS, contexts)
    for bad in inputs:
        connection = Connection(gateway.scp.port, timeout_s=15)
        if bad.associated:
            assert connection.associate(contexts) == "A-ASSOCIATE-AC"
        connection.send(bad.data)
        try:
            connection.sock.shutdown(socket.SHUT_WR)  # all sent: the SCP must answer or close
        except OSError:
            pass
        answers = []
        while not answers or answers[-1] not in ("closed", "timeout"):
            reply = connection.reply()
            answers.append(reply.kind if reply.status is None else status_class(reply.status))
        connection.close()
        first = answers[0]
        if first == "A-ASSOCIATE-AC":
            first = "A-ASSOCIATE-AC, no context accepted" if not any(connection.accepted.values()) \
                else "A-ASSOCIATE-AC with contexts"
        outcomes[first] += 1
        families[f"{bad.family}: {first}"] += 1
        outcomes["hang"] += answers[-1] == "timeout"
    wait_until(lambda: threading.active_count() <= threads, timeout_s=20)  # every association thread ended

    connection = Connection(gateway.scp.port)
    assert connection.associate(contexts) == "A-ASSOCIATE-AC"
    good = _good(103)[2]
    assert connection.store(3, good.sop_class, good.sop_instance, good.data).status == 0
    connection.release()
    counts = {"inputs": len(inputs), "outcomes": dict(outcomes), "by_family": dict(sorted(families.items())),
              "crashes": len(thread_crashes) + outcomes["hang"]}
    fuzz.report("dicom_scp_pdus", counts)

    assert counts["crashes"] == 0, thread_crashes
    assert all(refused(o) for o in outcomes if o != "hang"), outcomes
    assert _stored(gateway.store) == {good.sop_instance}


# -- STOW-RS -----------------------------------------------------------------------------------
BOUNDARY = "fuzz-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture
def stow_url(tmp_path):
    """The STOW-RS route in a plain FastAPI app (as tests/dicom_gateway/test_stow.py runs it)."""
    uvicorn = pytest.importorskip("uvicorn")
    app = FastAPI()
    app.include_router(stow.router)
    stow.configure(app, tmp_path, {"ae_title": "MEDGATE", "group_by": "study", "min_free_bytes": 0,
                                   "routes": [{"models": ["tb"], "modality": ["DX", "CR"]},
                                              {"models": ["nodule"], "modality": ["CT"]}]})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout_s=20)
    yield f"http://127.0.0.1:{port}/dicomweb/studies"
    server.should_exit = True
    thread.join(10)


def _multipart(parts: list[bytes], media: str = "application/dicom") -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: {media}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + f"--{BOUNDARY}--\r\n".encode()


def _post(url: str, body: bytes, content_type: str | None = CONTENT_TYPE) -> tuple[int, dict]:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except ValueError:
            return exc.code, {"text": text.decode(errors="replace")}


def bad_requests(rng: random.Random, good: bytes) -> list[tuple[str, bytes, str | None]]:
    """Requests that are bad as a whole: media type, boundary, multipart structure."""
    parts = _multipart([good])
    out = [("no content type", parts, None), ("application/json", parts, "application/json"),
           ("multipart/form-data", parts, f"multipart/form-data; boundary={BOUNDARY}"),
           ("type application/dicom+json", parts, f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'),
           ("type application/dicom+xml", parts, f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'),
           ("no boundary", parts, 'multipart/related; type="application/dicom"'),
           ("empty body", b"", CONTENT_TYPE), ("closing delimiter only", f"--{BOUNDARY}--\r\n".encode(), CONTENT_TYPE),
           ("other boundary", parts, 'multipart/related; type="application/dicom"; boundary=other'),
           ("parts without headers", f"--{BOUNDARY}\r\n".encode() + good + f"\r\n--{BOUNDARY}--".encode(), CONTENT_TYPE),
           ("text/plain", parts, "text/plain")]
    for _ in range(40):
        out.append(("random body", rng.randbytes(rng.randrange(0, 4096)), CONTENT_TYPE))
    for _ in range(20):
        cut = rng.randrange(1, len(parts) // 4)
        out.append(("multipart cut before the first part ends", parts[:cut], CONTENT_TYPE))
    for media in ("application/octet-stream", "image/jpeg", "application/dicom+json", "text/plain"):
        out.append((f"part of type {media}", _multipart([good], media=media), CONTENT_TYPE))
    return out


def test_bad_files_and_requests_through_stow_rs(stow_url, tmp_path, thread_crashes):
    bases = fuzz.encoded_instances(1)
    rng = random.Random(7)
    files = [(b.family, fuzz.part10(b)) for b in fuzz.bad_datasets(N_STOW_PARTS, seed=3, bases=bases)]
    for _ in range(N_STOW_META):
        family, _, data = fuzz.bad_file_meta(rng, rng.choice(bases))
        files.append((f"file_meta.{family}", data))
    files += [("deflated_garbage", fuzz.part10(fuzz.deflated_garbage(rng, rng.choice(bases)))) for _ in range(N_DEFLATED)]
    goods = _good(104)
    good = [fuzz.part10(g) for g in goods]
    statuses, reasons, families, parts_sent, stored = Counter(), Counter(), Counter(), 0, set()
    position = 0
    while position < len(files):  # 1 to 8 bad parts a request; every 10th request also a good part
        batch = files[position:position + rng.randrange(1, 9)]
        position += len(batch)
        n = sum(statuses.values())
        extra = [good[n // 10 % len(good)]] if n % 10 == 9 else []
        status, body = _post(stow_url, _multipart([data for _, data in batch] + extra))
        statuses[status] += 1
        failed = body.get("00081198", {}).get("Value", [])
        referenced = body.get("00081199", {}).get("Value", [])
        assert status == (202 if extra else 409), (status, body, [f for f, _ in batch])
        assert len(failed) == len(batch) and len(referenced) == len(extra), body
        stored |= {r["00081155"]["Value"][0] for r in referenced}
        for (family, _), item in zip(batch, failed):
            reason = item["00081197"]["Value"][0]
            reasons[f"{reason:04X}"] += 1
            families[f"{family}: {reason:04X}"] += 1
        parts_sent += len(batch)

    requests = bad_requests(rng, good[0])
    request_statuses = Counter()
    for name, body, content_type in requests:
        status, _ = _post(stow_url, body, content_type)
        request_statuses[f"{status}"] += 1
        assert 400 <= status < 500, (name, status)
    status, body = _post(stow_url, _multipart(good))  # the endpoint still works
    assert status == 200, body
    counts = {"inputs": parts_sent + len(requests), "bad_parts": parts_sent, "bad_requests": len(requests),
              "part_requests_by_status": {str(k): v for k, v in statuses.items()},
              "failure_reasons": dict(reasons), "request_statuses": dict(request_statuses),
              "by_family": dict(sorted(families.items())), "crashes": len(thread_crashes) + statuses[500]}
    fuzz.report("dicom_stow_rs", counts)

    assert parts_sent >= 1_000 and counts["crashes"] == 0, thread_crashes
    assert set(reasons) <= {"C000", "A900", "0122", "A700"}
    good_uids = {g.sop_instance for g in goods}
    store = Store(tmp_path / "medgate.sqlite3")
    try:
        assert _stored(store) == good_uids  # nothing bad was stored
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.rglob("*.dcm")) == sorted(f"{u}.dcm" for u in good_uids)
