"""Failover of several medgate nodes with the real engines (:mod:`cluster_rig`): a PostgreSQL
server of this module's own (Debian's ``postgresql``), Mosquitto, a two-node Ray cluster, a
``models`` node and two ``gateway,bridge`` nodes, ``node-a`` and ``node-b``, with leases of
``LEASE_S`` and the wards of ``WARDS`` as partitions.  Every test sends studies half to each node's
DICOM port (three per association, what got no Success sent again, to the other node when its own
is down) and QoS 1 vitals of ``BEDS`` beds over the wards, one message per bed per second, then
checks at the PACS and the FHIR server that each study has one SR and one DiagnosticReport and
each vitals message the broker acknowledged one heart-rate Observation, and that no outbox item
is dead.  The tests run in order on one rig:

1. kill -9 of ``node-a`` mid-load: ``node-b`` takes its partitions and its dispatches; the
   takeover times are printed and written to ``takeover.json`` in the test's folder.
2. ``node-a`` restarted with its clock 120 s ahead (libfaketime): it takes its share of the
   partitions and nothing ``node-b`` holds alive, under load.
3. The PostgreSQL server restarted under load (``pg_ctl stop -m fast``, a few seconds down,
   start): C-STOREs meanwhile refused with Out of Resources and sent again, nothing accepted
   lost, both nodes go on without a restart.
4. kill -9 of the skewed ``node-a``: its partitions and dispatches move after the lease on the
   database's clock, not 120 s later.

An instance acknowledged by a node killed before its row's commit (the SCP commits rows just after
the C-STORE response) is left in the shared spool without a row; the surviving node records it
after a lease (``StorageScp._adopt_orphans``). Tests 1 and 4 count such instances and wait for
that (printed, and ``unrecorded`` in ``takeover.json``).

Chest radiographs only (``tb``): a CT's nodule model takes tens of seconds per study on this 2-core
machine.  Random kill points come from ``MEDGATE_FAULT_SEED`` (printed).
"""
from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from cluster_rig import WARDS, ClusterRig
from fault_rig import (Modality, VitalsPublisher, assert_delivered_once, beds, heart_rates, persisted_resources,
                       reports_at_fhir, srs_at_pacs, wait_processed, write_studies)
from kernel.cluster import ClusterStore
from peers import require_peer, wait_until
from postgres import Unavailable, fresh_database, restart_server, start_server

SEED = int(os.environ.get("MEDGATE_FAULT_SEED") or random.SystemRandom().randrange(2**32))
LEASE_S = 6.0  # node.lease_s, dicom.completion.lease_s, iomt.partition_lease_ttl_s
BEDS = beds(100, WARDS)
PATIENTS = [bed.patient for bed in BEDS]
SKEW = "+120s"  # node-a's clock in tests 2 to 4
FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1")
FAKETIME = next((lib for lib in FAKETIME_LIBS if Path(lib).is_file()), None)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    for name, package in (("storescu", "dcmtk"), ("storescp", "dcmtk"), ("mosquitto", "mosquitto")):
        require_peer(name, package)
    print(f"fault seed {SEED} (set MEDGATE_FAULT_SEED={SEED} to repeat)")
    try:
        server = start_server()
        url = server.__enter__()
    except Unavailable as exc:
        pytest.skip(reason=str(exc))
    try:
        started = time.monotonic()
        with ClusterRig(tmp_path_factory.mktemp("cluster"), fresh_database(url), lease_s=LEASE_S) as cluster:
            cluster.server_url = url
            cluster.start()
            print(f"cluster up in {time.monotonic() - started:.1f} s: Ray head and worker, models-1, "
                  f"{', '.join(cluster.nodes)}; partitions {cluster.partition_holders()}")
            yield cluster
    finally:
        server.__exit__(None, None, None)


class Load:
    """Studies sent half to each node (each modality falling back to the other node) and vitals of
    every bed, for ``vitals_s``; :meth:`finish` waits for the modalities and adds what must come out
    to the rig."""

    def __init__(self, rig: ClusterRig, folder: Path, n_studies: int, vitals_s: float, seed: int) -> None:
        self.rig, self.vitals_s = rig, vitals_s
        self.files = write_studies(folder, n_studies, seed=seed)
        paths, (a, b) = list(self.files), rig.dicom_ports
        gap_s = max(1.0, vitals_s / (n_studies / 8))  # two per association, spread over the vitals' time
        self.modalities = [Modality(ports, paths[i::4], per_association=2, gap_s=gap_s)
                           for i, ports in enumerate(([a, b], [a, b], [b, a], [b, a]))]
        self.publisher = VitalsPublisher(rig.broker.port, folder.name, BEDS)
        self.started = time.monotonic()

    def start(self) -> "Load":
        self.started = time.monotonic()
        self.publisher.start()
        for modality in self.modalities:
            modality.start()
        return self

    def finish(self) -> set:
        """Publish until ``vitals_s`` after the start, wait for every study's Success; returns the
        acknowledged vitals messages."""
        time.sleep(max(0.0, self.vitals_s - (time.monotonic() - self.started)))
        acked = self.publisher.stop()
        for modality in self.modalities:
            modality.join(180)
            assert not modality.pending, modality.pending
        self.rig.studies |= set(self.files.values())
        self.rig.vitals |= acked
        return acked

    def summary(self) -> str:
        return (f"{len(self.files)} studies in {sum(m.associations for m in self.modalities)} associations "
                f"({sum(m.failovers for m in self.modalities)} moves to the other node, "
                f"{sum(len(m.refusals) for m in self.modalities)} refused responses); vitals "
                f"{len(self.publisher.sent)} published, {len(self.publisher.acked())} acknowledged")


def unrecorded_after_kill(rig: ClusterRig, load: Load, victim: str) -> int:
    """The acknowledged instances without a row once the load ended.  The SCP acknowledges an
    instance once its spool file is durable and commits its row just after: a node killed in between
    leaves the file without a row, and the survivor records it after a lease (docs/dicom-gateway.md,
    "Several nodes on one database").  Waits for that; returns how many there were."""
    acked = {dcmread(path, stop_before_pixels=True).SOPInstanceUID for m in load.modalities for path in m.acked}
    store = rig.store()
    try:
        def missing() -> set[str]:
            return acked - {r["sop_instance_uid"] for r in store.database.rows("SELECT sop_instance_uid FROM instances")}

        left = missing()
        if left:
            started = time.monotonic()
            wait_until(lambda: not missing(), timeout_s=4 * LEASE_S + 30, interval_s=0.5)
            print(f"{len(left)} acknowledged instance(s) without a row after the kill of {victim} (acknowledged, "
                  f"then killed before the row's commit): recorded by the survivor after "
                  f"{time.monotonic() - started:.1f} s")
    finally:
        store.close()
    return len(left)


def check_delivered(rig: ClusterRig, studies: set[str]) -> str:
    """Each of ``studies`` done, everything of the rig delivered once (:func:`fault_rig.assert_delivered_once`),
    each acknowledged vitals message stored once; returns the counts and how long the wait took."""
    started = time.monotonic()
    settled = wait_processed(rig, studies, timeout_s=240)
    assert {status for status, _ in settled.values()} == {"done"}, settled
    line = assert_delivered_once(rig, timeout_s=240, patients=PATIENTS)
    store = rig.store()
    try:  # stored once: one heart-rate Observation id per (patient, time) in the shared database
        stored = heart_rates(persisted_resources(store), PATIENTS)
    finally:
        store.close()
    assert rig.vitals <= stored.keys(), sorted(rig.vitals - stored.keys())[:5]
    assert all(len(ids) == 1 for ids in stored.values())
    return f"{line}; delivered {time.monotonic() - started:.1f} s after the load"


def test_kill_9_of_one_node_mid_load_the_other_takes_over(rig, tmp_path):
    rng = random.Random(SEED)
    load = Load(rig, tmp_path / "kill", 50, vitals_s=30.0, seed=SEED % 1000).start()
    time.sleep(rng.uniform(5.0, 10.0))
    takeover = rig.watch_takeover("node-a", wait_for_dispatch_s=10.0)
    acked_vitals = load.finish()
    print(f"kill -9 node-a: {load.summary()}")
    unrecorded = unrecorded_after_kill(rig, load, "node-a")
    line = check_delivered(rig, set(load.files.values()))
    figures = {**takeover.as_dict(), "lease_s": LEASE_S, "studies": len(load.files), "unrecorded": unrecorded,
               "vitals_acknowledged": len(acked_vitals), "beds": len(BEDS), "wards": len(WARDS)}
    (tmp_path / "takeover.json").write_text(json.dumps(figures, indent=2))
    print(f"takeover after kill -9 of node-a (lease {LEASE_S:.0f} s): partitions {takeover.partitions} held by "
          f"node-b after {takeover.partitions_taken_s} s; {len(takeover.dispatches)} open dispatches claimed "
          f"after {takeover.dispatches_claimed_s} s, processed after {takeover.dispatches_processed_s} s; "
          f"{line} ({tmp_path / 'takeover.json'})")
    assert takeover.partitions and takeover.partitions_taken_s is not None
    assert takeover.partitions_taken_s < 3 * LEASE_S, takeover
    assert set(takeover.holders.values()) == {"node-b"}, takeover.holders
    if takeover.dispatches:
        assert takeover.dispatches_processed_s is not None and takeover.dispatches_claimed_s < 3 * LEASE_S, takeover


class OwnerWatch(threading.Thread):
    """Every 0.2 s: partition holders and open dispatch owners; records each change of holder of a
    partition or a dispatch from one live node to another (``live``: the node ids alive)."""

    def __init__(self, rig: ClusterRig, live: set[str]) -> None:
        super().__init__(daemon=True)
        self.rig, self.live = rig, live
        self.steals: list[tuple[str, str, str]] = []  # (what, from, to)
        self.epochs: dict[str, set[int]] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        store = self.rig.store()
        cluster = ClusterStore(store.database)
        seen: dict[str, str] = {}
        try:
            while not self._halt.wait(0.2):
                try:
                    leases = cluster.leases("bridge/")
                    owners = {f"dispatch {s} {m}": o for (s, m), o in self.rig.open_dispatches(store).items()}
                except Exception:  # noqa: BLE001 - the database restarting: look again
                    continue
                now = {lease.name: lease.holder for lease in leases} | owners
                for lease in leases:
                    self.epochs.setdefault(lease.name, set()).add(lease.epoch)
                for what, holder in now.items():
                    before = seen.get(what)
                    if before and holder and before != holder and before in self.live and holder in self.live:
                        self.steals.append((what, before, holder))
                seen.update(now)
        finally:
            store.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def _shared(rig: ClusterRig, counts: dict[str, int]) -> dict[str, str] | None:
    """The partition holders when each node of ``counts`` holds that many partitions, else None."""
    holders = rig.partition_holders()
    held = list(holders.values())
    return holders if all(held.count(node) == n for node, n in counts.items()) else None


def _restart_node_a_skewed(rig: ClusterRig) -> None:
    rig.nodes["node-a"].stop()  # started again after the kill to record its spool files, or dead
    if FAKETIME is not None:
        rig.node_env["node-a"] = {"LD_PRELOAD": FAKETIME, "FAKETIME": SKEW, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    rig.restart("node-a")


def test_a_node_with_a_skewed_clock_takes_only_its_share(rig, tmp_path):
    _restart_node_a_skewed(rig)
    if FAKETIME is None:
        pytest.skip(reason="libfaketime not installed (Debian package faketime): node-a restarted unskewed")
    holders = wait_until(lambda: _shared(rig, {"node-a": 3, "node-b": 3}), timeout_s=4 * LEASE_S,
                         interval_s=0.2)  # node-b sheds three; node-a takes them
    watch = OwnerWatch(rig, {"node-a", "node-b"})
    watch.start()
    load = Load(rig, tmp_path / "skew", 20, vitals_s=15.0, seed=SEED % 1000 + 1).start()
    load.finish()
    line = check_delivered(rig, set(load.files.values()))
    watch.stop()
    srs, reports = srs_at_pacs(rig.pacs_dir), reports_at_fhir(rig.fhir)
    twice = {s: (srs[s], reports[s]) for s in load.files.values() if len(srs[s]) != 1 or len(reports[s]) != 1}
    after = rig.partition_holders()
    print(f"node-a {SKEW}: partitions {holders}; under load: {load.summary()}; holders after {after}; "
          f"epochs seen {watch.epochs}; moves between live nodes {watch.steals}; {line}")
    assert not twice, twice  # no fault here: each sent once, by one node
    assert watch.steals == [], watch.steals  # neither node took what the other held alive
    assert after == holders, (holders, after)
    assert all(len(epochs) == 1 for epochs in watch.epochs.values()), watch.epochs


def test_postgresql_restarted_under_load_nothing_accepted_lost(rig, tmp_path):
    rng = random.Random(SEED + 1)
    load = Load(rig, tmp_path / "pg", 30, vitals_s=35.0, seed=SEED % 1000 + 2).start()
    time.sleep(rng.uniform(5.0, 10.0))
    down_at = time.time()
    restart_server(rig.server_url, down_s=5.0)
    up_at = time.time()
    load.finish()
    refusals = [(t, status) for m in load.modalities for t, status in m.refusals]
    line = check_delivered(rig, set(load.files.values()))
    holders = wait_until(lambda: _shared(rig, {"node-a": 3, "node-b": 3}), timeout_s=4 * LEASE_S,
                         interval_s=0.5)
    print(f"PostgreSQL down {up_at - down_at:.1f} s: {load.summary()}; refused: "
          f"{sorted({status for _, status in refusals})}; partitions {holders}; {line}")
    assert all("OutOfResources" in status.replace(" ", "") or "a700" in status.lower() for _, status in refusals), \
        refusals
    for node in rig.nodes.values():  # no restart: the same processes
        assert node.proc.poll() is None, node.log_tail()
    assert set(holders.values()) == {"node-a", "node-b"}, holders


def test_the_skewed_node_killed_its_leases_end_on_the_database_clock(rig, tmp_path):
    if FAKETIME is None:
        pytest.skip(reason="libfaketime not installed (Debian package faketime)")
    rng = random.Random(SEED + 2)
    load = Load(rig, tmp_path / "skew-kill", 20, vitals_s=20.0, seed=SEED % 1000 + 3).start()
    time.sleep(rng.uniform(4.0, 8.0))
    takeover = rig.watch_takeover("node-a", wait_for_dispatch_s=8.0)
    load.finish()
    unrecorded = unrecorded_after_kill(rig, load, "node-a")
    line = check_delivered(rig, set(load.files.values()))
    (tmp_path / "takeover.json").write_text(json.dumps({**takeover.as_dict(), "skew": SKEW, "unrecorded": unrecorded},
                                                       indent=2))
    print(f"kill -9 of node-a ({SKEW}): partitions {takeover.partitions} held by node-b after "
          f"{takeover.partitions_taken_s} s; {len(takeover.dispatches)} open dispatches claimed after "
          f"{takeover.dispatches_claimed_s} s, processed after {takeover.dispatches_processed_s} s; {load.summary()}; "
          f"{line}")
    assert takeover.partitions and takeover.partitions_taken_s is not None
    assert takeover.partitions_taken_s < 3 * LEASE_S, takeover  # not the 120 s of its clock
    if takeover.dispatches:
        assert takeover.dispatches_claimed_s is not None and takeover.dispatches_claimed_s < 3 * LEASE_S, takeover
