"""dicom_gateway.store: the gateway's tables, created by the gateway, read and written as typed records,
on SQLite and on PostgreSQL (``backend``)."""
from __future__ import annotations

import time

import pytest

from dicom_gateway.ledger import Arrival, Refusal
from dicom_gateway.status import StoreStatus
from dicom_gateway.store import GatewayStore, Group, Instance, SeriesGeometry, Study
from kernel.database import Database, open_database
from kernel.migrations import version

GATEWAY_TABLES = ("instances", "studies", "dicom_groups", "dicom_instance_routes", "dicom_series_geometry",
                  "dicom_dispatches", "dicom_object_index", "dicom_index_results")


@pytest.fixture
def gateway(database_location):
    database = open_database(database_location)
    yield GatewayStore(database)
    database.close()


def arrival(study: str, sop: str, models=("tb",), group: str | None = None) -> Arrival:
    return Arrival(sop, study, f"{study}.1", "1.2.840.10008.5.1.4.1.1.1", "DX", f"/spool/{study}/{sop}.dcm",
                   "MODALITY", group or study, tuple(models), None, True)


def test_the_gateway_creates_only_its_own_tables(gateway):
    assert all(gateway.database.has_table(t) for t in GATEWAY_TABLES)
    assert version(gateway.database, "gateway") == 2
    if gateway.database.dialect == "sqlite":
        names = {r[0] for r in gateway.database.rows("SELECT name FROM sqlite_master WHERE type='table'")}
        assert names - {"sqlite_sequence", "schema_versions"} == set(GATEWAY_TABLES)


def test_arrivals_studies_and_dispatches_are_typed_records(gateway):
    now = time.time()
    assert gateway.record_arrivals([arrival("1.2.3", "1.2.3.1"), arrival("1.2.3", "1.2.3.1")], now) == [True, False]
    (group,) = gateway.receiving_groups()
    assert isinstance(group, Group) and group.model_names == ("tb",) and group.received_count == 1
    assert gateway.complete_group("1.2.3", "quiet", now, owner="local", lease_s=30.0) == ("1.2.3", ["tb"])
    assert gateway.complete_group("1.2.3", "quiet", now, owner="local", lease_s=30.0) is None  # claimed once
    study = gateway.study("1.2.3")
    assert isinstance(study, Study) and (study.status, study.route) == ("complete", "tb")
    assert study["status"] == "complete"  # as the rows read before typed records
    (instance,) = gateway.instances_of("1.2.3")
    assert isinstance(instance, Instance) and instance.path == "/spool/1.2.3/1.2.3.1.dcm"
    assert gateway.instance_paths() == {"/spool/1.2.3/1.2.3.1.dcm"}
    assert gateway.instance_routes("1.2.3") == {"1.2.3.1": ("tb",)}
    assert gateway.unprocessed_dispatches() == [("1.2.3", "tb")]
    gateway.mark_processed("1.2.3", "tb", now)
    assert gateway.unprocessed_dispatches() == [] and gateway.dispatches("1.2.3")[0].processed_at == now
    assert gateway.latest_completion() == now and gateway.group_counts() == {"complete": 1}


def test_a_series_group_counts_its_instances_and_notes_a_late_one(gateway):
    now = time.time()
    first, second, late = (Arrival(f"1.2.4.{i}", "1.2.4", "1.2.4.1", "1.2.840.10008.5.1.4.1.1.2", "CT",
                                   f"/spool/1.2.4/{i}.dcm", "MODALITY", "1.2.4.1", ("nodule",), None, False)
                           for i in range(3))
    assert gateway.record_arrivals([first, second], now) == [True, True]
    (group,) = gateway.receiving_groups()
    assert (group.received_count, group.single_image, group.reason) == (2, 0, None)
    assert gateway.complete_group("1.2.4.1", "quiet", now, owner="local", lease_s=30.0) == ("1.2.4", ["nodule"])
    gateway.record_arrivals([late], now)
    (group,) = gateway.all_groups()
    assert (group.received_count, group.reason) == (3, "instance received after completion")


def test_worklist_export_and_status_reads(gateway):
    base = time.time()
    for n, study in enumerate(("1.1", "1.2", "1.3")):
        gateway.add_instance({"sop_instance_uid": f"{study}.1", "study_uid": study, "series_uid": f"{study}.9",
                              "sop_class_uid": "1.2", "modality": "CR", "path": f"/x/{study}", "calling_ae": "A"})
        time.sleep(0.01)
    gateway.set_study_status("1.1", "done")
    gateway.set_study_status("1.3", "done")
    assert [s.study_uid for s in gateway.recent_studies(2)] == ["1.3", "1.2"]
    assert gateway.done_studies(base) == ["1.1", "1.3"] and gateway.done_studies(time.time() + 1) == []
    assert gateway.status_counts() == {"done": 2, "receiving": 1}
    assert gateway.studies_with_status("receiving") == ["1.2"]
    with pytest.raises(ValueError, match="'finished' is given"):
        gateway.set_study_status("1.2", "finished")


def test_refusals_geometry_and_deleting_a_study(gateway):
    now = time.time()
    gateway.record_refusal(Refusal("9.9", "9.9.1", "AE", StoreStatus.CANNOT_UNDERSTAND, "bad"), now)
    assert gateway.study("9.9").status == "refused"
    assert gateway.first_geometry("9.9.1", SeriesGeometry(512, 512, "1\\0")) == (512, 512, "1\\0")
    assert gateway.first_geometry("9.9.1", SeriesGeometry(256, 256, "0\\1")) == (512, 512, "1\\0")
    assert gateway.studies_before(("refused",), now + 1) == ["9.9"]
    assert gateway.delete_study("9.9", ("done",)) is False  # not in those statuses: kept
    assert gateway.delete_study("9.9", ("refused",)) is True and gateway.study("9.9") is None


def test_a_database_of_before_processed_at_gets_the_column(database_location):
    database = open_database(database_location)
    database.create("CREATE TABLE dicom_dispatches (group_uid TEXT NOT NULL, model TEXT NOT NULL,"
                    " study_uid TEXT NOT NULL, dispatched_at REAL NOT NULL, PRIMARY KEY (group_uid, model));")
    with database.transaction() as db:
        db.execute("INSERT INTO dicom_dispatches VALUES ('g', 'tb', '1.2', 5.0)")
    gateway = GatewayStore(database)
    try:
        assert gateway.dispatches("1.2")[0].processed_at == 5.0  # its study is not complete: processed
    finally:
        database.close()
