"""The event-driven pynetdicom reactors: same behaviour, no sleep-polling, reversible."""
from __future__ import annotations

import time

import numpy as np
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from dicom_gateway import reactor
from dicom_gateway.status import StoreStatus
from dicom_gateway.testdata import make_dx_dataset
from gateway_helpers import Running


def test_install_is_idempotent_and_reversible():
    reactor.install()
    patched = DULServiceProvider.run_reactor
    reactor.install()
    assert DULServiceProvider.run_reactor is patched and reactor.installed()
    reactor.uninstall()
    assert DULServiceProvider.run_reactor is not patched and not reactor.installed()
    assert Association._run_reactor.__module__ == "pynetdicom.association"
    reactor.install()


def test_many_small_stores_round_trip_quickly(tmp_path):
    running = Running(tmp_path)  # installs the reactors
    try:
        ds = make_dx_dataset(np.zeros((16, 16), np.uint16))
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", running.scp.port, ae_title="MEDGATE")
        assert assoc.is_established
        start = time.perf_counter()
        statuses = [assoc.send_c_echo().Status for _ in range(50)]
        echo_ms = (time.perf_counter() - start) / 50 * 1000
        assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
        start = time.perf_counter()
        assoc.release()
        release_ms = (time.perf_counter() - start) * 1000
        print(f"C-ECHO round trip {echo_ms:.2f} ms, release {release_ms:.1f} ms")
        assert statuses == [0] * 50
        assert assoc.is_released
        assert release_ms < 2000  # the acceptor answers the release without waiting out a timeout
    finally:
        running.stop()
