"""The owner stores on SQLite and on PostgreSQL: what one vitals batch and one C-STORE cost each.

Two operations as the server runs them, on a fresh database of each backend:

- **vitals batch**: :meth:`iomt.store.VitalsStore.commit_batch` of ``--beds`` messages (one per bed:
  the message rows, the patient index, the bed census, an outbox item) committed without waiting for
  the disk, then :meth:`~iomt.store.VitalsStore.sync_log` (the bridge acknowledges after it);
- **C-STORE record**: :meth:`dicom_gateway.store.GatewayStore.record_arrivals` of one instance (the
  instance, its study, its route and its group's counter), as the SCP records each C-STORE.

PostgreSQL is a throwaway server started here (Debian's ``postgresql``, ``initdb`` + ``pg_ctl``,
default durability: ``fsync`` on) on the loopback; SQLite is the file under a temporary
``state_dir``.  Prints a table and saves ``results/store_backends.json`` and ``.png``::

    .venv/bin/python benchmarks/store_backends.py --batches 200 --instances 2000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from benchmarks.report import save_figures  # noqa: E402
from dicom_gateway.ledger import Arrival  # noqa: E402
from iomt import vital_records  # noqa: E402
from iomt.payload import parse_payload  # noqa: E402
from kernel.database import database_path, open_database  # noqa: E402
from serving.store import Store  # noqa: E402

#: A bedside monitor's message (heart rate, SpO2, respiratory rate, systolic, temperature).
VITALS = [{"code": "8867-4", "value": 92, "unit": "/min"}, {"code": "59408-5", "value": 95, "unit": "%"},
          {"code": "9279-1", "value": 22, "unit": "/min"}, {"code": "8480-6", "value": 118, "unit": "mm[Hg]"},
          {"code": "8310-5", "value": 37.1, "unit": "Cel"}]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"  # PS3.4 B.5


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {"n": len(ms), "mean_ms": round(statistics.fmean(ms), 3), "p50_ms": round(ms[len(ms) // 2], 3),
            "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 3), "max_ms": round(ms[-1], 3)}


def vitals_batches(store: Store, batches: int, beds: int) -> list[float]:
    """Seconds per batch commit + flush, ``beds`` messages a batch."""
    took, t0 = [], 1_795_000_000
    for b in range(batches):
        rows, outbox, census = [], [], []
        for bed in range(beds):
            at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t0 + b))
            msg = parse_payload(f'{{"patient": {{"id": "P{bed:05d}"}}, "device": "MON-{bed}", "time": "{at}",'
                                f' "vitals": {str(VITALS).replace(chr(39), chr(34))}}}'.encode())
            rows.append(vital_records.record(msg, f"Patient/P{bed:05d}", f"MON-{bed}"))
            outbox.append((f"news2:{b}:{bed}", "mqtt", f"alerts/w/{bed}", "{}"))
            census.append(("w", f"b{bed}", "s", f"Patient/P{bed:05d}", f"MON-{bed}", at))
        start = time.perf_counter()
        store.vitals.commit_batch([], [], outbox, beds=census, vitals=rows, durable=False)
        store.vitals.sync_log()
        took.append(time.perf_counter() - start)
    return took


def cstore_records(store: Store, instances: int) -> list[float]:
    """Seconds per C-STORE instance record (a CT series of ``instances`` images)."""
    took = []
    for i in range(instances):
        arrival = Arrival(f"1.2.826.0.1.9.{i}", "1.2.826.0.1.9", "1.2.826.0.1.9.1", CT_IMAGE_STORAGE, "CT",
                          f"/spool/1.2.826.0.1.9/{i}.dcm", "MODALITY", "1.2.826.0.1.9.1", ("nodule",), None, False)
        start = time.perf_counter()
        store.gateway.record_arrivals([arrival], time.time())
        took.append(time.perf_counter() - start)
    return took


def measure(location, batches: int, beds: int, instances: int) -> dict:
    store = Store(open_database(location))
    try:
        return {"vitals_batch": {**percentiles(vitals_batches(store, batches, beds)), "messages": beds},
                "cstore_record": percentiles(cstore_records(store, instances))}
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="vitals batches (default 200)")
    parser.add_argument("--beds", type=int, default=100, help="messages a batch, one per bed (default 100)")
    parser.add_argument("--instances", type=int, default=2000, help="C-STORE records (default 2000)")
    args = parser.parse_args(argv)
    from postgres import fresh_database, start_server  # tests/postgres.py: the same throwaway server

    figures: dict = {"batches": args.batches, "beds": args.beds, "instances": args.instances, "backends": {}}
    with tempfile.TemporaryDirectory() as state:
        figures["backends"]["sqlite"] = measure(database_path(state), args.batches, args.beds,
                                                args.instances)
    with start_server(fast=False) as server:
        figures["backends"]["postgresql"] = measure(fresh_database(server), args.batches, args.beds,
                                                    args.instances)
    print(f"{'backend':<12}{'operation':<16}{'mean ms':>10}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for backend, ops in figures["backends"].items():
        for op in ("vitals_batch", "cstore_record"):
            f = ops[op]
            print(f"{backend:<12}{op:<16}{f['mean_ms']:>10}{f['p50_ms']:>10}{f['p95_ms']:>10}{f['max_ms']:>10}")
    sqlite, pg = figures["backends"]["sqlite"], figures["backends"]["postgresql"]
    figures["postgresql_over_sqlite"] = {op: round(pg[op]["p50_ms"] / sqlite[op]["p50_ms"], 2)
                                         for op in ("vitals_batch", "cstore_record")}
    print("PostgreSQL / SQLite (p50):", figures["postgresql_over_sqlite"])

    def plot(axes) -> None:
        labels = [f"vitals batch\n({args.beds} msgs)", "C-STORE record"]
        for k, (backend, ops) in enumerate(figures["backends"].items()):
            axes.bar([x + 0.4 * k for x in range(2)], [ops["vitals_batch"]["p50_ms"], ops["cstore_record"]["p50_ms"]],
                     0.4, label=backend)
        axes.set_xticks([x + 0.2 for x in range(2)], labels)
        axes.set_ylabel("ms per operation (p50)")
        axes.legend()

    save_figures("store_backends", figures, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
