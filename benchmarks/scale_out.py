"""Scale-out: one node against two nodes on this machine, on SQLite and on PostgreSQL, in one run.

Three configurations, each on a fresh database and a fresh Mosquitto, all with the one model
``tb`` (chest radiograph) in the registry and no FHIR server (``fhir.base_url`` unset: the vitals
are stored as rows, not sent on as Bundles):

1. **one node, SQLite**: ``medgate serve`` (role ``all``, a Ray of its own);
2. **one node, PostgreSQL**: the same with ``store.url`` on a throwaway PostgreSQL (``fsync`` on);
3. **two nodes, PostgreSQL**: a Ray cluster (a head and a second Ray node), a ``models`` node and two
   ``gateway,bridge`` nodes on one PostgreSQL, sharing the vitals wards (``iomt.partitions``).
   Two nodes on SQLite is not a supported configuration (roles other than ``all`` need PostgreSQL).

All of it runs on the one machine: the two nodes share its CPUs with everything else, so the
comparison is of correctness and overhead, not of speed-up. Measured in each configuration:

- **C-STORE ingest**: ``--slices`` CT slices (512², one series, routed to no model) sent by two
  ``storescu`` at once, each half; with two nodes, one half to each node's port;
- **C-STORE -> SR at the PACS**: ``--studies`` single chest radiographs one after another (each in
  its own association), alternating between the nodes' ports, timed to the SR file at DCMTK
  ``storescp``; p50 and p95;
- **vitals**: :class:`benchmarks.mqtt_load.LoadPublisher` from ``--beds`` beds (50 a ward; with
  two nodes, the wards are the partitions), first ``--messages`` flat out (acknowledged by the
  broker and stored, per second, from the first publish to the last row written), then paced at
  ``--rate`` msg/s for ``--seconds``: publish -> stored row p50/p99 (the payload's time against
  the row's ``updated_at``). Lost = acknowledged minus stored, which must be 0.

PostgreSQL's cost per study and per vitals message is (2) against (1): the difference in time per
ingested instance, per radiograph (p50) and per vitals message at saturation. The load average is
printed before and after (other jobs may share the machine). Saves ``results/scale_out.json`` and
``.png`` (``--quick``: ``results/tmp/scale_out-quick.*``, not kept).

    .venv/bin/python -m benchmarks.scale_out [--quick]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "reliability")) if p not in sys.path]

from benchmarks.imaging_peers import Pacs, imaging_server, missing_peers, send_files  # noqa: E402
from benchmarks.iomt_throughput import LoadSampler, run_publisher  # noqa: E402
from benchmarks.mqtt_load import topic  # noqa: E402
from benchmarks.readme_table import fmt, table  # noqa: E402
from benchmarks.report import RESULTS, save_figures  # noqa: E402
from benchmarks.soak import Monitors  # noqa: E402
from cluster_rig import ClusterRig  # noqa: E402
from dicom_testdata import make_ct_series  # noqa: E402
from kernel.database import database_path, open_database  # noqa: E402
from models import clinical_codes as codes  # noqa: E402
from peers import broker  # noqa: E402
from postgres import fresh_database, start_server  # noqa: E402 - tests/postgres.py: the throwaway server
from serving.store import Store  # noqa: E402
from training.synthetic.cxr import generate_cxr  # noqa: E402
from training.synthetic.dicom import make_dx_dataset  # noqa: E402

#: The one route of every configuration: chest radiographs to ``tb``; the CT slices match none
#: (stored, status ``unrouted``), so ingest measures the gateway and the store, not a model.
ROUTES = [{"models": ["tb"], "modality": ["CR", "DX"], "body_part": ["CHEST"]}]
BEDS_PER_WARD = 50  # benchmarks.mqtt_load.topic: ward w{bed // 50}
NODE_LEASE_S = 6.0  # node.lease_s, dicom.completion.lease_s, iomt.partition_lease_ttl_s on the cluster
#: What the cluster rig sets on its nodes that bears on these figures, set on the one node too.
NODE_SETTINGS: dict[str, Any] = {
    "dicom": {"routes": ROUTES, "completion": {"quiet_period_s": 0.5}, "storage": {"slot_pool_bytes": 0}},
    "outbox": {"backoff_max_s": 5.0}}
BROKER_LINES = ("allow_anonymous true", "persistence false")  # the cluster rig's Mosquitto
NOT_SUPPORTED = "two nodes on SQLite: not a supported configuration (roles other than all need PostgreSQL)"


@dataclass
class Deployment:
    """What the measurements need of a running configuration."""

    name: str
    nodes: str  # e.g. "1 (all)", "2 gateway+bridge, 1 models"
    store: str  # "SQLite" or "PostgreSQL"
    dicom_ports: list[int]
    pacs: Pacs
    mqtt_port: int
    open_store: Callable[[], Store]
    extra: dict[str, Any] = field(default_factory=dict)


# --- measurements ---------------------------------------------------------------------------------

def measure_ingest(deployment: Deployment, files: list[Path], study_uid: str) -> dict:
    """Two ``storescu`` at once, each half of ``files``; share k to port k modulo the ports."""
    shares = [files[0::2], files[1::2]]
    ports = [deployment.dicom_ports[k % len(deployment.dicom_ports)] for k in range(len(shares))]
    errors: list[BaseException] = []

    def send(port: int, share: list[Path]) -> None:
        try:
            send_files(port, share)
        except BaseException as exc:  # noqa: BLE001 - reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=send, args=pair) for pair in zip(ports, shares)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    store = deployment.open_store()
    try:
        stored = len(store.gateway.instances_of(study_uid))
    finally:
        store.close()
    return {"instances": len(files), "stored": stored, "associations": len(shares), "ports": sorted(set(ports)),
            "seconds": round(elapsed, 3), "instances_per_s": round(len(files) / elapsed, 1)}


def measure_cxr(deployment: Deployment, files: list[Path]) -> dict:
    """One radiograph at a time, alternating ports: storescu start -> SR file at the PACS."""
    latencies_ms = []
    for index, path in enumerate(files):
        port = deployment.dicom_ports[index % len(deployment.dicom_ports)]
        known = deployment.pacs.names()
        start = time.perf_counter()
        send_files(port, [path])
        arrived = deployment.pacs.wait_for(("SR",), known, timeout_s=120)
        latencies_ms.append((arrived["SR"] - start) * 1000)
    lat = np.array(latencies_ms)
    return {"n": len(lat), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1), "max_ms": round(float(lat.max()), 1),
            "latencies_ms": [round(x, 1) for x in lat]}


def _stored_count(store: Store) -> int:
    return store.vitals.count(codes.HEART_RATE)


def vitals_phase(deployment: Deployment, beds: int, n: int, rate: float, name: str) -> dict:
    """``n`` messages from ``beds`` beds at ``rate`` msg/s (0: flat out); waits until as many rows
    as acknowledged messages are stored (or a deadline), then reads their latencies."""
    store = deployment.open_store()
    try:
        before = _stored_count(store)
        proc, acked, started = run_publisher(deployment.mqtt_port, beds, n, rate, f"scale-out-{name}")
        deadline = time.monotonic() + 60 + n / 500
        stored = 0
        while time.monotonic() < deadline:
            stored = _stored_count(store) - before
            if stored >= n or (not proc.is_alive() and stored >= acked.value):
                break
            time.sleep(0.25)
        proc.join(timeout=120)
        rows = store.vitals.rows_measured_between(int(started.value * 1e6), 2**62)
    finally:
        store.close()
    published = np.array([row.effective_us / 1e6 for row in rows])
    written = np.array([row.updated_at for row in rows])
    latency_ms = (written - published) * 1000 if rows else np.array([float("nan")])
    elapsed = (written.max() - started.value) if rows else float("nan")
    return {"messages": n, "rate_msgs_per_s": rate, "acked": acked.value, "stored": stored,
            "lost": acked.value - stored, "msgs_per_s": round(len(rows) / elapsed, 1) if rows else 0.0,
            "p50_ms": round(float(np.percentile(latency_ms, 50)), 1),
            "p99_ms": round(float(np.percentile(latency_ms, 99)), 1)}


def measure(deployment: Deployment, ct_files: list[Path], ct_study: str, cxr_files: list[Path],
            args: argparse.Namespace) -> dict:
    print(f"[{deployment.name}] ingest, {len(ct_files)} CT slices", flush=True)
    ingest = measure_ingest(deployment, ct_files, ct_study)
    print(f"[{deployment.name}] C-STORE -> SR, {len(cxr_files)} radiographs", flush=True)
    cxr = measure_cxr(deployment, cxr_files)
    print(f"[{deployment.name}] vitals, {args.beds} beds", flush=True)
    admit(deployment.mqtt_port, args.beds, deployment.open_store)
    saturated = vitals_phase(deployment, args.beds, args.messages, 0, f"{deployment.store}-saturated")
    time.sleep(1.0)  # the flat-out messages' times (ahead of the clock by up to a few ms a bed) pass
    paced = vitals_phase(deployment, args.beds, int(args.rate * args.seconds), args.rate,
                         f"{deployment.store}-paced")
    return {"configuration": deployment.name, "nodes": deployment.nodes, "store": deployment.store,
            "ingest": ingest, "cxr": cxr, "vitals_saturated": saturated, "vitals_paced": paced,
            **deployment.extra}


# --- configurations -------------------------------------------------------------------------------

class FolderPacs(Pacs):
    """The cluster rig's ``storescp``, read through its folder as :class:`Pacs` reads its own."""

    def __init__(self, folder: Path) -> None:  # the rig starts and stops the process
        self.folder = Path(folder)

    def stop(self) -> None:
        pass


def admit(port: int, beds: int, open_store: Callable[[], Store], timeout_s: float = 60.0) -> None:
    """An ADT admit per bed (:class:`benchmarks.soak.Monitors`: device ``dev{bed}``, the devices of
    :class:`~benchmarks.mqtt_load.LoadPublisher`), then wait until the bridges hold as many
    associations: a message of an unknown device would be parked, not stored."""
    monitors = Monitors(port, beds)
    try:
        monitors.admit()
    finally:
        monitors.close()
    store = open_store()
    try:
        deadline = time.monotonic() + timeout_s
        while len(store.vitals.associations()) < beds:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(store.vitals.associations())} of {beds} beds admitted after {timeout_s} s")
            time.sleep(0.2)
    finally:
        store.close()


@contextmanager
def one_node(root: Path, store_url: str | None) -> Iterator[Deployment]:
    """``medgate serve`` (role all, a Ray of its own) with a storescp PACS and a Mosquitto of its
    own, set as the cluster rig sets its nodes (:data:`NODE_SETTINGS`)."""
    root.mkdir(parents=True)
    registry = root / "registry"
    registry.mkdir()
    (registry / "tb").symlink_to(ROOT / "models" / "tb")
    mosquitto = broker(root, *BROKER_LINES)
    config: dict[str, Any] = {"models_root": str(registry), **NODE_SETTINGS,
                              "mqtt": {"url": f"mqtt://127.0.0.1:{mosquitto.port}"}}
    if store_url is not None:
        config["store"] = {"url": store_url}
    try:
        with imaging_server(root, config=config, pacs_objects=["sr"]) as rig:
            name = "PostgreSQL" if store_url else "SQLite"
            opener = _postgres_opener(store_url) if store_url else _sqlite_opener(root / "var")
            yield Deployment(f"one node, {name}", "1 (all)", name, [rig.dicom_port], rig.pacs, mosquitto.port,
                             opener)
    finally:
        mosquitto.stop()


@contextmanager
def two_nodes(root: Path, store_url: str, ward_names: list[str]) -> Iterator[Deployment]:
    """:class:`cluster_rig.ClusterRig`: a Ray cluster of two Ray nodes, a ``models`` node and two
    ``gateway,bridge`` nodes on PostgreSQL, the wards as the bridges' partitions, no FHIR server."""
    with ClusterRig(root, store_url, wards=ward_names, lease_s=NODE_LEASE_S) as rig:
        for server in (rig.models, *rig.nodes.values()):
            server.config.pop("fhir")  # vitals stored as rows, as on the one node (else sent as Bundles)
        rig.start()
        holders = rig.partition_holders()
        yield Deployment("two nodes, PostgreSQL", "2 gateway+bridge, 1 models", "PostgreSQL", rig.dicom_ports,
                         FolderPacs(rig.pacs_dir), rig.broker.port, rig.store,
                         {"partition_holders": holders})


def _sqlite_opener(state_dir: Path) -> Callable[[], Store]:
    return lambda: Store(open_database(database_path(state_dir)))


def _postgres_opener(url: str) -> Callable[[], Store]:
    return lambda: Store(open_database(url))


# --- the table ------------------------------------------------------------------------------------

HEADER = ["configuration", "nodes", "ingest inst/s", "CXR → SR p50 / p95 ms", "vitals msg/s (flat out)",
          "paced msg/s", "publish → stored p50 / p99 ms", "lost"]


def table_rows(results: list[dict]) -> list[list[str]]:
    """One row per configuration measured, in the order given."""
    rows = []
    for r in results:
        sat, paced = r["vitals_saturated"], r["vitals_paced"]
        rows.append([r["configuration"], r["nodes"], fmt(r["ingest"]["instances_per_s"]),
                     f"{fmt(r['cxr']['p50_ms'])} / {fmt(r['cxr']['p95_ms'])}", fmt(sat["msgs_per_s"]),
                     fmt(paced["msgs_per_s"]), f"{fmt(paced['p50_ms'])} / {fmt(paced['p99_ms'])}",
                     fmt(sat["lost"] + paced["lost"])])
    return rows


def postgres_cost(results: list[dict]) -> dict | None:
    """PostgreSQL against SQLite on one node, from the same run: the extra time per ingested
    instance, per radiograph (p50, C-STORE -> SR) and per vitals message (flat out), and the
    ratios. None when either one-node configuration is missing."""
    by_store = {r["store"]: r for r in results if r["nodes"].startswith("1 ")}
    if not {"SQLite", "PostgreSQL"} <= set(by_store):
        return None
    sqlite, pg = by_store["SQLite"], by_store["PostgreSQL"]

    def per_item_ms(rate: float) -> float:
        return 1000.0 / rate if rate else float("nan")

    ingest = [per_item_ms(r["ingest"]["instances_per_s"]) for r in (sqlite, pg)]
    vitals = [per_item_ms(r["vitals_saturated"]["msgs_per_s"]) for r in (sqlite, pg)]
    cxr = [r["cxr"]["p50_ms"] for r in (sqlite, pg)]
    return {"ingest_ms_per_instance": {"sqlite": round(ingest[0], 3), "postgresql": round(ingest[1], 3),
                                       "extra_ms": round(ingest[1] - ingest[0], 3),
                                       "ratio": round(ingest[1] / ingest[0], 2)},
            "cxr_ms_per_study": {"sqlite": cxr[0], "postgresql": cxr[1], "extra_ms": round(cxr[1] - cxr[0], 1),
                                 "ratio": round(cxr[1] / cxr[0], 2)},
            "vitals_us_per_message": {"sqlite": round(vitals[0] * 1000, 1), "postgresql": round(vitals[1] * 1000, 1),
                                      "extra_us": round((vitals[1] - vitals[0]) * 1000, 1),
                                      "ratio": round(vitals[1] / vitals[0], 2)}}


def report_lines(results: list[dict], cost: dict | None, load: dict) -> list[str]:
    """The printed report: the table, PostgreSQL's cost, the unsupported configuration, the load."""
    lines = table(HEADER, table_rows(results))
    if cost is not None:
        i, c, v = cost["ingest_ms_per_instance"], cost["cxr_ms_per_study"], cost["vitals_us_per_message"]
        lines.append(f"PostgreSQL against SQLite (one node): ingest {i['postgresql']} ms/instance against "
                     f"{i['sqlite']} ({i['ratio']}×), radiograph {c['postgresql']} ms against {c['sqlite']} "
                     f"({c['extra_ms']:+} ms, {c['ratio']}×), vitals {v['postgresql']} µs/message against "
                     f"{v['sqlite']} ({v['ratio']}×)")
    lines.append(NOT_SUPPORTED)
    lines.append(f"load average (1 min): before {load['before']}, after {load['after']}, mean {load['mean']}, "
                 f"max {load['max']} on {os.cpu_count()} CPUs")
    return lines


def plot(results: list[dict]) -> Callable:
    def draw(axes) -> None:
        names = [r["configuration"] for r in results]
        panels = (("ingest inst/s", lambda r: r["ingest"]["instances_per_s"]),
                  ("CXR → SR p50 ms", lambda r: r["cxr"]["p50_ms"]),
                  ("vitals msg/s (flat out)", lambda r: r["vitals_saturated"]["msgs_per_s"]))
        for ax, (label, value) in zip(axes, panels):
            ax.barh(names, [value(r) for r in results], color=["tab:blue", "tab:orange", "tab:green"][:len(names)])
            ax.invert_yaxis()
            ax.set_xlabel(label)
    return draw


# --- the run --------------------------------------------------------------------------------------

def make_inputs(root: Path, slices: int, studies: int) -> tuple[list[Path], str, list[Path]]:
    (root / "ct").mkdir(parents=True)
    volume = np.random.default_rng(0).integers(0, 4000, (slices, 512, 512), dtype=np.uint16)
    ct = []
    for index, ds in enumerate(make_ct_series(volume)):
        ct.append(root / "ct" / f"ct{index:04d}.dcm")
        ds.save_as(ct[-1], enforce_file_format=True)
    ct_study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
    rng = np.random.default_rng(0)
    (root / "cxr").mkdir()
    cxr = []
    for i in range(studies):
        path = root / "cxr" / f"cxr{i:03d}.dcm"
        make_dx_dataset(generate_cxr(rng, tb=bool(i % 2)).pixels).save_as(path, enforce_file_format=True)
        cxr.append(path)
    return ct, ct_study, cxr


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about 3 min)")
    parser.add_argument("--slices", type=int, default=200, help="CT slices for ingest (default 200)")
    parser.add_argument("--studies", type=int, default=20, help="radiographs for C-STORE -> SR (default 20)")
    parser.add_argument("--beds", type=int, default=200, help="vitals beds, 50 a ward (default 200)")
    parser.add_argument("--messages", type=int, default=20_000, help="vitals flat out (default 20,000)")
    parser.add_argument("--rate", type=float, default=1000.0, help="paced vitals, msg/s (default 1,000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced vitals, seconds (default 10)")
    parser.add_argument("--only", choices=("1", "2", "3"), action="append",
                        help="run only these configurations (repeatable)")
    args = parser.parse_args(argv)
    if args.quick:
        args.slices, args.studies, args.beds, args.messages, args.seconds = 40, 4, 100, 2_000, 3.0
    for name in ("slices", "studies", "beds", "messages", "rate", "seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, {getattr(args, name)} is given")
    if args.beds < BEDS_PER_WARD * 2:
        parser.error(f"--beds must be at least {BEDS_PER_WARD * 2} (two wards), {args.beds} is given")
    return args


def wards(beds: int) -> list[str]:
    """The wards of ``beds`` beds as :func:`benchmarks.mqtt_load.topic` names them."""
    return sorted({topic(bed).split("/")[2] for bed in range(beds)}, key=lambda w: int(w[1:]))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    missing = missing_peers("storescu", "storescp", "mosquitto")
    if missing:
        print(f"{', '.join(missing)} not installed: nothing measured")
        return 1
    chosen = set(args.only or ("1", "2", "3"))
    results: list[dict] = []
    print(f"load average before: {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="medgate-scale-") as tmp, LoadSampler() as load, \
            start_server(fast=False) as pg_server:
        root = Path(tmp)
        ct, ct_study, cxr = make_inputs(root / "inputs", args.slices, args.studies)
        if "1" in chosen:
            with one_node(root / "one-sqlite", None) as deployment:
                results.append(measure(deployment, ct, ct_study, cxr, args))
        if "2" in chosen:
            with one_node(root / "one-postgresql", fresh_database(pg_server)) as deployment:
                results.append(measure(deployment, ct, ct_study, cxr, args))
        if "3" in chosen:
            with two_nodes(root / "two-postgresql", fresh_database(pg_server), wards(args.beds)) as deployment:
                results.append(measure(deployment, ct, ct_study, cxr, args))
    print(f"load average after: {os.getloadavg()}", flush=True)
    cost = postgres_cost(results)
    summary = load.summary()
    for line in report_lines(results, cost, summary):
        print(line)
    figures = {"quick": args.quick, "slices": args.slices, "studies": args.studies, "beds": args.beds,
               "wards": wards(args.beds), "messages": args.messages, "paced": {"rate": args.rate,
                                                                             "seconds": args.seconds},
               "model": "tb", "configurations": results, "postgresql_cost": cost,
               "not_supported": NOT_SUPPORTED, "load_average_1m": summary,
               "note": "every node on one machine: overhead and correctness, not speed-up"}
    if args.quick:  # a smoke run: its figures go where results are not kept (.gitignore)
        (RESULTS / "tmp").mkdir(parents=True, exist_ok=True)
    save_figures("tmp/scale_out-quick" if args.quick else "scale_out", figures, plot(results), panels=3)
    lost = sum(r["vitals_saturated"]["lost"] + r["vitals_paced"]["lost"] for r in results)
    short = [r for r in results if r["ingest"]["stored"] != r["ingest"]["instances"]]
    return 0 if lost == 0 and not short else 1


if __name__ == "__main__":
    sys.exit(main())
