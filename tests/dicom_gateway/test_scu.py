"""C-STORE SCU delivery errors against real peers: a PACS that refuses (DCMTK ``storescp --refuse``,
A-ASSOCIATE-RJ rejected-permanent) is dead-lettered at once with its reason; an abort, a closed port,
a transient rejection and Out of Resources are retried; each C-STORE status class is classified
per PS3.4 B.2.3 and PS3.7 Annex C."""
from __future__ import annotations

import subprocess

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from dicom_gateway.scu import is_stored, is_transient, send_files
from kernel.delivery_errors import PermanentDeliveryError, TransientDeliveryError
from peers import DCMTK_ENV, free_port, require_peer, stop_process, wait_for_port
from serving.delivery.outbox import Outbox
from serving.store import Store

CT = get_testdata_file("CT_small.dcm")


@pytest.fixture
def storescp(tmp_path):
    """DCMTK ``storescp`` as ``PACS`` with extra options; yields a function that starts one, returns its port."""
    procs = []

    def start(*options: str) -> int:
        port = free_port()
        out = tmp_path / f"pacs-{port}"
        out.mkdir()
        proc = subprocess.Popen([require_peer("storescp", "dcmtk"), "-aet", "PACS", *options, "-od", str(out),
                                 str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_for_port(port, proc=proc)
        return port

    yield start
    for proc in procs:
        stop_process(proc)


def deliver_once(tmp_path, port: int) -> dict:
    """One object enqueued for the PACS on ``port`` and attempted once; returns the outbox item."""
    store = Store(tmp_path / "db.sqlite3")

    def send_dicom(destination: str, payload: dict) -> None:
        send_files(payload["paths"], ae_title="PACS", host="127.0.0.1", port=port, timeout_s=10)

    box = Outbox(store, {"dicom": send_dicom}, max_attempts=100, backoff_base_s=1.0)
    box.enqueue("dicom:1.2.3:pacs", "dicom", "pacs", {"paths": [CT]})
    box.deliver_due()
    (item,) = box.items()
    store.close()
    return item


def test_a_pacs_refusing_the_association_is_dead_lettered_at_once(tmp_path, storescp):
    port = storescp("--refuse")  # A-ASSOCIATE-RJ: rejected-permanent, service-user, no-reason-given
    item = deliver_once(tmp_path, port)
    assert (item["status"], item["attempts"]) == ("dead", 1)
    assert item["last_error"] == (f"PermanentDeliveryError: PACS@127.0.0.1:{port} rejected the association: "
                                  "rejected-permanent, service_user: no_reason_given")


def test_a_pacs_that_stores_is_delivered(tmp_path, storescp):
    item = deliver_once(tmp_path, storescp())
    assert (item["status"], item["attempts"]) == ("sent", 1)


def test_an_abort_and_a_closed_port_are_retried(tmp_path, storescp):
    port = storescp("--abort-after")  # A-ABORT after the C-STORE-RQ, before the response
    item = deliver_once(tmp_path, port)
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert item["last_error"].startswith("TransientDeliveryError: no C-STORE response from PACS@")
    closed = free_port()  # nothing listens there
    with pytest.raises(TransientDeliveryError, match=f"association with PACS@127.0.0.1:{closed} was not "
                                                     "established"):
        send_files([CT], ae_title="PACS", host="127.0.0.1", port=closed, timeout_s=5)


@pytest.fixture
def pynetdicom_scp():
    """A pynetdicom storage SCP answering every C-STORE with a chosen status; yields a starter."""
    servers = []

    def start(status: int, contexts=(CTImageStorage,), maximum_associations: int = 10) -> int:
        ae = AE(ae_title="PACS")
        ae.maximum_associations = maximum_associations
        for context in contexts:
            ae.add_supported_context(context)
        handlers = [(evt.EVT_C_STORE, lambda event: status)]
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers))
        return port

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize("status, error", [
    (0xA700, TransientDeliveryError),  # PS3.4 B.2.3 Refused: Out of Resources
    (0xA702, TransientDeliveryError),
    (0x0110, TransientDeliveryError),  # PS3.7 Annex C Processing failure
    (0x0213, TransientDeliveryError),  # PS3.7 Annex C Resource limitation
    (0xA900, PermanentDeliveryError),  # PS3.4 B.2.3 Error: Data Set does not match SOP Class
    (0xC000, PermanentDeliveryError),  # PS3.4 B.2.3 Error: Cannot understand
    (0xC123, PermanentDeliveryError),
    (0x0122, PermanentDeliveryError),  # PS3.7 Annex C Refused: SOP Class not supported
    (0x0124, PermanentDeliveryError),  # PS3.7 Annex C Refused: Not authorized
])
def test_c_store_statuses_are_classified(pynetdicom_scp, status, error):
    port = pynetdicom_scp(status)
    with pytest.raises(error, match=f"PACS@127.0.0.1:{port} answered C-STORE of .* with status 0x{status:04X}"):
        send_files([CT], ae_title="PACS", host="127.0.0.1", port=port, timeout_s=10)


def test_warnings_are_stored_and_failures_are_not():
    assert is_stored(0x0000) and is_stored(0xB000) and is_stored(0xB007)
    assert not any(is_stored(code) for code in (0xA700, 0xA900, 0xC000, 0x0110, 0x0122))
    assert is_transient(0xA7FF) and not is_transient(0xA900) and not is_transient(0xC000)


def test_a_transient_rejection_is_retried_and_an_unsupported_sop_class_is_permanent(pynetdicom_scp):
    busy = pynetdicom_scp(0x0000, maximum_associations=1)
    caller = AE(ae_title="MODALITY")
    caller.add_requested_context(CTImageStorage)
    held = caller.associate("127.0.0.1", busy, ae_title="PACS")  # takes the only association
    try:
        assert held.is_established
        with pytest.raises(TransientDeliveryError, match="rejected-transient, service_provider_presentation: "
                                                         "local_limit_exceeded"):
            send_files([CT], ae_title="PACS", host="127.0.0.1", port=busy, timeout_s=10)
    finally:
        held.release()
    mr_only = pynetdicom_scp(0x0000, contexts=(MRImageStorage,))
    with pytest.raises(PermanentDeliveryError, match="accepted none of the proposed presentation contexts"):
        send_files([CT], ae_title="PACS", host="127.0.0.1", port=mr_only, timeout_s=10)
