"""Retention of refused studies: a study whose instances were all refused at intake is a row with no
files, purged after ``retention_days`` like a processed one; one moved on by a stored instance is not."""
from __future__ import annotations

import time

from dicom_gateway import ledger
from dicom_gateway.retention import PROCESSED_STATUSES, purge_processed
from dicom_gateway.status import StoreStatus
from dicom_gateway.store import open_gateway_store


def test_refused_studies_are_purged_like_processed_ones(tmp_path):
    assert "refused" in PROCESSED_STATUSES
    store = open_gateway_store(tmp_path / "medgate.sqlite3")
    try:
        for study in ("1.2.3", "1.2.4"):
            ledger.record_refusal(store, ledger.Refusal(study, f"{study}.1", "MODALITY",
                                                        StoreStatus.NOT_READABLE_BY_MODEL, "why"))
        ledger.record_instances(store, [ledger.Arrival(  # 1.2.4 moved on: receiving, kept
            "1.2.4.2", "1.2.4", "1.2.4.9", "1.2.840.10008.5.1.4.1.1.77.1.4", "XC", str(tmp_path / "x.dcm"),
            "MODALITY", "1.2.4", ("derm",), None, True)])
        assert store.study("1.2.4")["status"] == "receiving" and store.study("1.2.4")["detail"] is None
        spool = tmp_path / "spool"
        assert purge_processed(store, spool, 1.0, now=time.time() + 0.5 * 86400) == []
        assert purge_processed(store, spool, 1.0, now=time.time() + 2 * 86400) == ["1.2.3"]
        assert store.study("1.2.3") is None and store.study("1.2.4") is not None
    finally:
        store.close()
