"""DICOM ingest: 500 CT slices (512x512, 16-bit) from DCMTK storescu to medgate, DCMTK storescp and Orthanc.

Measured side by side in one run on loopback, with ``TCP_NODELAY=1`` for the DCMTK programs, first
with one association, then with ``--parallel`` (4) ``storescu`` processes at once, each sending an
equal share (``storescp --fork`` for those):

* ``storescp``: DCMTK's receiver writing each instance to a file (no fsync);
* ``Orthanc``: a full PACS with its defaults for durability (``SyncStorageArea: true``: each file
  flushed before the response; index in SQLite): the peer with the same durability as medgate;
* ``medgate``: :class:`dicom_gateway.scp.StorageScp` as configured by default, with a CT route
  (every slice is checked as decodable): each instance flushed to disk (into a pre-written slot,
  :mod:`dicom_gateway.slots`) before its C-STORE success.  The pool holds its slots for this size,
  as it does once a study of that size has come and a pause has followed (the pool refills in
  pauses); instances beyond it are written as new files, and the run reports how many
  (``slot_misses``).  Completion by quiet period;
* ``medgate, known count``: the same with Number of Study Related Instances in every slice, so the
  study completes at the last instance;
* ``medgate, new file per instance``: the same with the slot pool off (``dicom.storage.
  slot_pool_bytes: 0``): temp file, fsync, rename, directory fsync per instance, which is also
  what the first study of a size gets;
* ``medgate, no fsync``: ``dicom.storage.fsync: false``, which is the durability storescp offers
  (files left to the page cache): the like-for-like comparison;
* ``medgate, group commit on`` (four associations): ``dicom.storage.group_commit: true``:
  instances committed together on several associations share one flush
  (:mod:`dicom_gateway.group_flush`); the ``flushes`` column counts the flushes made;
* ``medgate, association only``: the same acceptor with a handler that answers success and keeps
  nothing: the cost of the DICOM protocol path alone;
* ``medgate, association + durable write only``: a handler that only writes each instance into a
  slot and flushes it before answering, checking nothing and recording nothing.  Its ratio is the
  **durability ceiling**: what any receiver on this disk reaches with the protocol path and one
  flush per instance, which C-STORE requires one after the other (the response may only leave
  once the instance is on disk, and storescu sends the next instance only after the response).

Then, with no network at all, the same files written one after another: by a slot (write, one
``fdatasync``), by :func:`dicom_gateway.storage.write_durably` (temp file, fsync, rename,
directory fsync) and by it without fsync: what the disk charges per instance.

Prints instances/s of each, the ratios to storescp and to Orthanc, and the time from the last instance (storescu's
last response) to study-complete; saves ``results/dicom_ingest.json`` and ``.png``.

Run: ``.venv/bin/python benchmarks/dicom_ingest.py [--slices 500]``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.report import save_figures  # noqa: E402
from dicom_gateway.routing import Rule  # noqa: E402
from dicom_gateway.scp import StorageScp  # noqa: E402
from dicom_gateway.slots import SlotPool  # noqa: E402
from dicom_gateway.storage import part10_header, write_durably  # noqa: E402
from dicom_testdata import make_ct_series  # noqa: E402
from peers import DCMTK_ENV, find_peer, free_port, stop_process, wait_for_port  # noqa: E402
from serving.store import Store  # noqa: E402


def write_series(folder: Path, slices: int, size_px: int, count: bool) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 4000, (slices, size_px, size_px), dtype=np.uint16)
    paths = []
    for index, ds in enumerate(make_ct_series(volume)):
        if count:
            ds.NumberOfStudyRelatedInstances = slices
        path = folder / f"ct{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send(port: int, files: list[Path], associations: int = 1) -> float:
    """``storescu`` sends ``files``; with ``associations`` > 1, that many ``storescu`` processes at
    once, each with an equal share (as four modalities, or one that opens four associations)."""
    shares = [files[index::associations] for index in range(associations)]
    start = time.perf_counter()
    procs = [subprocess.Popen([find_peer("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1", str(port),
                               *map(str, share)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for share in shares]
    errors = [proc.communicate(timeout=900)[1] for proc in procs]
    elapsed = time.perf_counter() - start
    for proc, error in zip(procs, errors):
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {error.decode(errors='replace')[-2000:]}")
    return elapsed


def _row(name: str, files: list[Path], elapsed: float, associations: int) -> dict:
    return {"receiver": name, "associations": associations, "seconds": elapsed,
            "instances_per_s": len(files) / elapsed}


def run_storescp(files: list[Path], work: Path, associations: int = 1) -> dict:
    port, out = free_port(), work / f"storescp-{associations}"
    out.mkdir()
    fork = ["--fork"] if associations > 1 else []  # one process per association, as a busy site runs it
    proc = subprocess.Popen([find_peer("storescp"), *fork, "-aet", "MEDGATE", "-od", str(out), str(port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        elapsed = send(port, files, associations)
    finally:
        stop_process(proc)
    assert len(list(out.iterdir())) == len(files)
    return _row("DCMTK storescp", files, elapsed, associations)


def run_orthanc(files: list[Path], work: Path, associations: int = 1) -> dict:
    """Orthanc with its defaults for durability: ``SyncStorageArea: true`` (each file flushed before
    the C-STORE response), the index in SQLite, no compression."""
    dicom_port, http_port, root = free_port(), free_port(), work / f"orthanc-{associations}"
    root.mkdir()
    config = {"Name": "bench", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
              "DicomAet": "MEDGATE", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "SyncStorageArea": True, "StorageCompression": False,
              "DicomThreadsCount": 4, "Plugins": []}
    (root / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([find_peer("Orthanc"), str(root / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(dicom_port, timeout_s=60, proc=proc)
        elapsed = send(dicom_port, files, associations)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as response:
            stored = json.loads(response.read())["CountInstances"]
    finally:
        stop_process(proc)
    assert stored == len(files), f"Orthanc holds {stored} of {len(files)} instances"
    return _row("Orthanc (SyncStorageArea)", files, elapsed, associations)


class DiscardingScp(StorageScp):
    """Answers every C-STORE with success and keeps nothing (the protocol path alone)."""

    def on_store(self, association, context_id, command, data) -> int:
        return 0


class DurableOnlyScp(StorageScp):
    """Writes each instance into a slot and flushes it before answering success; checks nothing,
    records nothing (the protocol path and the durable write alone)."""

    def on_store(self, association, context_id, command, data) -> int:
        sop_instance = str(command.AffectedSOPInstanceUID)
        _, syntax = association.contexts[context_id]
        header = part10_header(str(command.AffectedSOPClassUID), sop_instance, syntax, association.calling_ae)
        self.intake.writer.begin([header, data], str(syntax)).commit(self.spool / "bench" / f"{sop_instance}.dcm")
        return 0


def run_medgate(files: list[Path], work: Path, name: str, scp_class=StorageScp, warm: bool = False,
                associations: int = 1, **options) -> dict:
    store = Store(work / f"{name}-{associations}.sqlite3")
    complete = threading.Event()
    latency: dict[str, float] = {}
    scp = scp_class(
        "MEDGATE", "127.0.0.1", free_port(), store.gateway, work / f"spool-{name}-{associations}", lambda study, model: complete.set(),
        rules=(Rule(models=("nodule",), modalities={"CT"}),), quiet_period_s=2.0, poll_interval_s=0.05,
        **options)
    scp.assembler.listeners.append(lambda group, seconds: latency.setdefault("from_last_s", seconds))
    scp.start()
    if warm and scp.slots is not None:
        scp.slots.wait_ready(files[0].stat().st_size)
    try:
        elapsed = send(scp.port, files, associations)
        last_response = time.time()
        row = _row(name, files, elapsed, associations)
        if scp.slots is not None:
            row["slot_misses"] = scp.slots.misses
            if scp.slots.group is not None:  # flushes made, and the instances they covered
                row["flushes"], row["instances_flushed"] = scp.slots.group.groups, scp.slots.group.grouped
        if scp_class is not StorageScp:
            return row
        if not complete.wait(30):
            raise RuntimeError("the study did not complete within 30 s")
        completed_at = store.gateway.latest_completion()
    finally:
        scp.stop()
        store.close()
    return {**row, "last_instance_to_complete_s": round(max(0.0, completed_at - last_response), 3),
            "last_stored_to_complete_s": round(latency.get("from_last_s", float("nan")), 3)}


def time_writes(files: list[Path], folder: Path, fsync: bool) -> dict:
    """Each file's bytes written by the gateway's durable writer, one after another: the disk's
    share of an instance, with no network and no checks."""
    blobs = [path.read_bytes() for path in files]
    folder.mkdir()
    start = time.perf_counter()
    for index, blob in enumerate(blobs):
        write_durably(folder / f"{index:04d}.dcm", blob, fsync=fsync)
    elapsed = time.perf_counter() - start
    return {"writer": f"write_durably(fsync={fsync})", "seconds": elapsed,
            "ms_per_instance": round(elapsed / len(files) * 1000, 3)}


def time_slot_writes(files: list[Path], folder: Path) -> dict:
    """Each file's bytes written into a ready slot and flushed (the pool filled beforehand)."""
    blobs = [path.read_bytes() for path in files]
    pool = SlotPool(folder / ".slots", pool_bytes=len(blobs) * (len(blobs[0]) + (64 << 10)), max_slots=len(blobs))
    pool.start()
    try:
        pool.wait_ready(len(blobs[0]), timeout_s=120)
        start = time.perf_counter()
        for index, blob in enumerate(blobs):
            pool.begin(blob, "1.2.840.10008.1.2.1").commit(folder / f"{index:04d}.dcm")
        elapsed = time.perf_counter() - start
    finally:
        pool.stop()
    return {"writer": "slot (write, fdatasync, rename)", "seconds": elapsed,
            "ms_per_instance": round(elapsed / len(files) * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size-px", type=int, default=512)
    parser.add_argument("--parallel", type=int, default=4, help="associations at once in the second part")
    args = parser.parse_args()
    for peer in ("storescu", "storescp", "Orthanc"):
        if find_peer(peer) is None:
            sys.exit(f"{peer} not installed (Debian packages dcmtk, orthanc)")
    n = args.parallel
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        plain = write_series(work / "series", args.slices, args.size_px, count=False)
        counted = write_series(work / "series-count", args.slices, args.size_px, count=True)
        rows = [run_storescp(plain, work),
                run_orthanc(plain, work),
                run_medgate(plain, work, "medgate", warm=True),
                run_medgate(counted, work, "medgate, known count", warm=True),
                run_medgate(plain, work, "medgate, new file per instance", slot_pool_bytes=0),
                run_medgate(plain, work, "medgate, no fsync", fsync=False),
                run_medgate(plain, work, "medgate, association only", scp_class=DiscardingScp),
                run_medgate(plain, work, "medgate, association + durable write only", scp_class=DurableOnlyScp,
                            warm=True),
                run_storescp(plain, work, n),
                run_orthanc(plain, work, n),
                run_medgate(plain, work, "medgate", warm=True, associations=n),
                run_medgate(plain, work, "medgate, group commit on", warm=True, associations=n, group_commit=True),
                run_medgate(plain, work, "medgate, no fsync", fsync=False, associations=n),
                run_medgate(plain, work, "medgate, association + durable write only", scp_class=DurableOnlyScp,
                            warm=True, associations=n)]
        writes = [time_slot_writes(plain, work / "write-slot"),
                  time_writes(plain, work / "write-fsync", fsync=True),
                  time_writes(plain, work / "write-plain", fsync=False)]
    peers = {(r["receiver"], r["associations"]): r["instances_per_s"] for r in rows}
    print(f"{args.slices} CT slices {args.size_px}x{args.size_px} 16-bit, storescu -> receiver, TCP_NODELAY=1")
    print(f"{'receiver':44s} {'assoc':>5s} {'time s':>8s} {'inst/s':>8s} {'/storescp':>9s} {'/Orthanc':>8s} "
          f"{'last->complete s':>17s} {'no slot ready':>14s} {'flushes':>8s}")
    for row in rows:
        row["ratio_to_storescp"] = round(row["instances_per_s"] / peers["DCMTK storescp", row["associations"]], 3)
        row["ratio_to_orthanc"] = round(row["instances_per_s"] / peers["Orthanc (SyncStorageArea)", row["associations"]],
                                        3)
        print(f"{row['receiver']:44s} {row['associations']:5d} {row['seconds']:8.2f} {row['instances_per_s']:8.1f} "
              f"{row['ratio_to_storescp']:9.2f} {row['ratio_to_orthanc']:8.2f} "
              f"{row.get('last_instance_to_complete_s', ''):>17} {row.get('slot_misses', ''):>14} "
              f"{row.get('flushes', ''):>8}")
    for write in writes:
        print(f"{write['writer']:44s} {write['seconds']:8.2f}  {write['ms_per_instance']:.3f} ms/instance, no network")
    ceiling = {assoc: round(peers["medgate, association + durable write only", assoc]
                            / peers["DCMTK storescp", assoc], 3) for assoc in (1, n)}
    print(f"durability ceiling (association + durable write only, over storescp): "
          + ", ".join(f"{value:.2f} with {assoc} association(s)" for assoc, value in ceiling.items()))
    figures = {"slices": args.slices, "size_px": args.size_px,
               "targets": {"one_association_over_orthanc": 2.0, f"{n}_associations_over_storescp": 0.8},
               "rows": rows, "writes": writes, "durability_ceiling_ratio": ceiling, "load_average": os.getloadavg()}

    def plot(ax):
        names = [f"{r['receiver']} ×{r['associations']}" for r in rows]
        peer_names = ("DCMTK storescp", "Orthanc (SyncStorageArea)")
        ax.barh(names, [r["instances_per_s"] for r in rows],
                color=["grey" if r["receiver"] in peer_names else "tab:blue" for r in rows])
        ax.invert_yaxis()
        ax.set_xlabel("instances/s (higher is better)")

    save_figures("dicom_ingest", figures, plot)


if __name__ == "__main__":
    main()
