"""Partitions of the topic space, the state a new holder rebuilds from the store, fencing, and a
bridge that loses its database: without a broker, or with one Mosquitto."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import paho.mqtt.client as mqtt
import pytest
from pydantic import ValidationError

from iomt import workers
from iomt.bridge import VitalsBridge
from iomt.config import IdentifierSystems, IomtConfig
from iomt.identity import DeviceRegistry
from iomt.partitions import PartitionSpec, PartitionSupervisor, client_id
from iomt.rebuild import restore_partitions
from iomt.store import FencedOut
from iomt.topics import Location, Partition
from models import clinical_codes as codes
from peers import wait_until
from serving.store import Store

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)


def payload(at: datetime, patient: str = "P1", **values) -> bytes:
    """A full-form vitals message; ``values``: rr, spo2, hr, sbp, temp, on_oxygen, consciousness."""
    units = {"rr": ("9279-1", "/min"), "spo2": ("59408-5", "%"), "hr": ("8867-4", "/min"),
             "sbp": ("8480-6", "mm[Hg]"), "temp": ("8310-5", "Cel")}
    doc = {"patient": {"id": patient}, "time": at.isoformat(),
           "vitals": [{"code": units[k][0], "value": v, "unit": units[k][1]} for k, v in values.items()
                      if k in units]}
    for key in ("on_oxygen", "consciousness"):
        if key in values:
            doc[key] = values[key]
    return json.dumps(doc).encode()


# -- partitions and their client ids -----------------------------------------------------------------
def test_partitions_parse_filter_and_hold():
    ward, site_ward = Partition.parse("icu"), Partition.parse("h1/icu")
    assert ward == Partition("icu") and site_ward == Partition("icu", site="h1")
    assert ward.vitals_filters("medgate") == ("medgate/icu/+/vitals", "medgate/+/icu/+/+/vitals")
    assert site_ward.vitals_filters("medgate") == ("medgate/h1/icu/+/+/vitals",)
    assert ward.holds(Location("icu", "b1")) and ward.holds(Location("icu", "b1", "h2", "m"))
    assert site_ward.holds(Location("icu", "b1", "h1", "m")) and not site_ward.holds(Location("icu", "b1"))
    assert ward.overlaps(site_ward) and not site_ward.overlaps(Partition("icu", site="h2"))


@pytest.mark.parametrize("text, says", [
    ("", "ward must be one topic level"), ("a/b/c", "'ward' or 'site/ward'"), ("ic+u", "'+'"),
    ("#", "'#'"), ("w\u202e1", "U+202E"), ("h1/", "ward must be"), ("/icu", "site must be"),
])
def test_bad_partitions_are_refused_by_name(text, says):
    with pytest.raises(ValueError, match=says.replace("+", r"\+")):
        Partition.parse(text)


def test_config_refuses_overlapping_partitions():
    assert IomtConfig(partitions=["icu", "h1/ed"]).partitions == ["icu", "h1/ed"]
    with pytest.raises(ValidationError, match="must not overlap"):
        IomtConfig(partitions=["icu", "h1/icu"])
    with pytest.raises(ValidationError, match="'ward' or 'site/ward'"):
        IomtConfig(partitions=["a/b/c"])


def test_client_ids_are_stable_safe_and_distinct():
    assert client_id("medgate-bridge", Partition("icu")) == "medgate-bridge-icu"
    slash, dash = client_id("m", Partition.parse("h1/icu")), client_id("m", Partition("h1-icu"))
    assert slash.startswith("m-h1-icu-") and slash != dash
    assert slash == client_id("m", Partition.parse("h1/icu"))
    assert all(c.isalnum() or c in "-_." for c in client_id("m", Partition("khoa hồi sức")))


# -- the state a new holder rebuilds ------------------------------------------------------------------
def _bridge(store: Store) -> VitalsBridge:
    return VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals, client_id="unit",
                        checkpoints=False)


def _kinds(resources: list[dict]) -> list[str]:
    return [r["resourceType"] for r in resources]


def _news2(resources: list[dict]) -> dict:
    return next(r for r in resources if r["resourceType"] == "Observation"
                and r["code"]["coding"][0]["code"] == codes.NEWS2_TOTAL_SCORE)


def test_takeover_rebuilds_news2_values_and_alert_deduplication(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    topic = "medgate/w1/b1/vitals"
    node_a = _bridge(store)
    # RR 26 scores 3 (a red score), oxygen 2: NEWS2 5, medium: an alert
    first = node_a.handle(topic, payload(T0, rr=26, spo2=97, hr=80, sbp=120, temp=37.0, on_oxygen=True,
                                          consciousness="A"))
    assert "Flag" in _kinds(first) and _news2(first)["valueInteger"] == 5
    # node A dies; node B takes the partition: a minute later, pulse and SpO2 alone
    later = payload(T0 + timedelta(minutes=1), spo2=97, hr=80)
    node_b = _bridge(store)
    rebuilt = restore_partitions(store.vitals, [Partition("w1")], node_b.pipeline.states, node_b.pipeline.alerts)
    assert (rebuilt.patients, rebuilt.alerts) == (1, 1)
    second = node_b.handle(topic, later)
    news2 = _news2(second)
    assert news2["valueInteger"] == 5  # A's respiratory rate and oxygen, B's pulse and SpO2
    assert "Flag" not in _kinds(second)  # the same band within the hour: no second alert
    # the control: values without the alert memory would alert again; nothing at all would not score 5
    forgetful = _bridge(store)
    restore_partitions(store.vitals, [Partition("w1")], forgetful.pipeline.states,
                       forgetful.pipeline.alerts.empty_copy())
    assert "Flag" in _kinds(forgetful.handle(topic, later))
    assert _news2(_bridge(store).handle(topic, later))["valueInteger"] < 5
    # another partition's beds are not this one's patients
    other = _bridge(store)
    assert restore_partitions(store.vitals, [Partition("w2")], other.pipeline.states,
                              other.pipeline.alerts).patients == 0
    store.close()


def test_a_batch_of_an_older_epoch_is_refused(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    assert store.vitals.fence_partition("w1", 3)
    assert not store.vitals.fence_partition("w1", 2)
    store.vitals.commit_batch([], [], fence=("w1", 3))
    assert store.vitals.fence_partition("w1", 4)
    with pytest.raises(FencedOut, match="no longer held at epoch 3"):
        store.vitals.commit_batch([], [], fence=("w1", 3))
    store.close()


# -- the database lost --------------------------------------------------------------------------------
class Flaky:
    """Makes ``store.vitals``'s ``method`` raise ``error`` ``times`` times, then works."""

    def __init__(self, store: Store, method: str, times: int, error: Exception) -> None:
        self.real, self.left, self.error, self.calls = getattr(store.vitals, method), times, error, 0
        setattr(store.vitals, method, self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.left > 0:
            self.left -= 1
            raise self.error
        return self.real(*args, **kwargs)


class Unreachable(sqlite3.OperationalError):
    """A database error that is not an OSError, as PostgreSQL's driver raises for a lost connection."""


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(workers, "COMMIT_RETRY_MIN_S", 0.05)


def _mqtt_bridge(store: Store, port: int, acked: list[int]) -> VitalsBridge:
    bridge = VitalsBridge("127.0.0.1", port, topic_prefix="medgate", store=store.vitals,
                          client_id="db-lost", checkpoints=False)
    real_ack = bridge.client.ack_many

    def ack_many(mids):
        acked.extend(mids)
        real_ack(mids)
    bridge.client.ack_many = ack_many
    return bridge


def _publish(port: int, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="db-lost-pub")
    client.connect("127.0.0.1", port)
    client.loop_start()
    for info in [client.publish(t, p, qos=1) for t, p in messages]:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


@pytest.mark.parametrize("where", ["commit", "flush", "adt"])
def test_database_lost_nothing_acknowledged_until_it_is_back(tmp_path, mosquitto, fast_retries, where):
    store, acked = Store(tmp_path / "db.sqlite3"), []
    bridge = _mqtt_bridge(store, mosquitto, acked)
    gate = {"commit": "commit_batch", "flush": "sync_log", "adt": "put_association"}[where]
    flaky = Flaky(store, gate, 10 ** 6, Unreachable("server closed the connection unexpectedly"))
    bridge.start()
    try:
        assert bridge.connected.wait(10)
        messages = [("medgate/adt", json.dumps({"event": "admit", "device": "MON-1", "patient": {"id": "P9"},
                                                 "time": T0.isoformat()}).encode())]
        messages += [("medgate/w1/b1/vitals", payload(T0 + timedelta(seconds=i), patient="P1", hr=70 + i))
                     for i in range(5)]
        _publish(mosquitto, messages)
        wait_until(lambda: flaky.calls >= 3, timeout_s=15)  # the database is away, retried with backoff
        assert acked == [] and len(bridge._ledger) == 6 and not bridge.sync_failed
        flaky.left = 0  # the database is back
        wait_until(lambda: len(acked) == 6, timeout_s=15)
    finally:
        bridge.stop()
    assert store.vitals.count(codes.HEART_RATE) == 5
    assert store.vitals.dead_letters() == []  # the ADT message was applied, not dead-lettered
    assert [a.patient_id for a in store.vitals.associations()] == ["P9"]
    store.close()


# -- the supervisor, with a keeper driven by the test --------------------------------------------------
class HandKeeper:
    """:class:`kernel.leases.LeaseKeeper`'s interface; the test grants and takes the leases."""

    def __init__(self, cluster, holder, names, ttl_s, on_acquired, on_lost, **_) -> None:
        self.names, self.on_acquired, self.on_lost = list(names), on_acquired, on_lost
        self.epochs: dict[str, int] = {}
        self.started = False

    def start(self) -> None:
        self.started = True

    def grant(self, name: str, epoch: int) -> None:
        self.epochs[name] = epoch
        self.on_acquired(name)

    def take(self, name: str) -> None:
        self.epochs.pop(name)
        self.on_lost(name)

    def held(self) -> set[str]:
        return set(self.epochs)

    def stop(self, *, release: bool = True) -> None:
        for name in sorted(self.epochs):
            self.take(name)


def test_supervisor_starts_a_session_per_leased_partition(tmp_path, mosquitto):
    store = Store(tmp_path / "db.sqlite3")
    specs: list[PartitionSpec] = []
    registry = DeviceRegistry(store.vitals, IdentifierSystems())

    def make_bridge(spec: PartitionSpec) -> VitalsBridge:
        specs.append(spec)
        return VitalsBridge("127.0.0.1", mosquitto, topic_prefix="medgate", store=store.vitals,
                            client_id=spec.client_id, registry=registry, subscriptions=spec.subscriptions,
                            owns=spec.owns, fence=spec.fence, checkpoints=False)

    supervisor = PartitionSupervisor(["w1", "h1/w2"], cluster=None, node_id="n1", ttl_s=5, store=store.vitals,
                                     registry=registry, topic_prefix="medgate", client_id_base="mg",
                                     make_bridge=make_bridge, keeper=HandKeeper)
    supervisor.start()
    keeper = supervisor.keeper
    try:
        assert keeper.names == ["bridge/w1", "bridge/h1/w2"] and keeper.started
        keeper.grant("bridge/h1/w2", 7)
        spec = specs[-1]
        assert spec.client_id.startswith("mg-h1-w2-") and spec.fence == ("h1/w2", 7)
        assert spec.subscriptions == ("medgate/h1/w2/+/+/vitals", "medgate/adt")
        assert not spec.owns("medgate/adt") and spec.owns("medgate/h1/w2/b1/m1/vitals")
        assert not spec.owns("medgate/w2/b1/vitals")
        keeper.grant("bridge/w1", 3)
        assert specs[-1].owns("medgate/adt")  # the first partition stores ADT resources
        wait_until(supervisor.connected.is_set, timeout_s=10)
        assert supervisor.held() == ["h1/w2", "w1"]
        bridge = supervisor.bridges()["w1"]
        keeper.take("bridge/w1")
        assert supervisor.held() == ["h1/w2"] and bridge._abandoned
    finally:
        supervisor.stop()
    assert supervisor.held() == []
    store.close()
