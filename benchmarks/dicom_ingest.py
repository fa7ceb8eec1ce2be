"""DICOM ingest: 500 CT slices (512x512, 16-bit) from DCMTK storescu to medgate and to DCMTK storescp.

Measured side by side in one run on loopback, with ``TCP_NODELAY=1`` for both DCMTK programs:

* ``storescp``: DCMTK's receiver writing each instance to a file (no fsync);
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

Prints instances/s of each, the ratio to storescp, and the time from the last instance (storescu's
last response) to study-complete; saves ``results/dicom_ingest.json`` and ``.png``.

Run: ``.venv/bin/python benchmarks/dicom_ingest.py [--slices 500]``
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
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


def send(port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    result = subprocess.run([find_peer("storescu"), "-aet", "MODALITY", "-aec", "MEDGATE", "127.0.0.1", str(port),
                             *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stderr[-2000:]}")
    return elapsed


def run_storescp(files: list[Path], work: Path) -> dict:
    port, out = free_port(), work / "storescp"
    out.mkdir()
    proc = subprocess.Popen([find_peer("storescp"), "-aet", "MEDGATE", "-od", str(out), str(port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc=proc)
        elapsed = send(port, files)
    finally:
        stop_process(proc)
    assert len(list(out.iterdir())) == len(files)
    return {"receiver": "DCMTK storescp", "seconds": elapsed, "instances_per_s": len(files) / elapsed}


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
                **options) -> dict:
    store = Store(work / f"{name}.sqlite3")
    complete = threading.Event()
    latency: dict[str, float] = {}
    scp = scp_class(
        "MEDGATE", "127.0.0.1", free_port(), store.gateway, work / f"spool-{name}", lambda study, model: complete.set(),
        rules=(Rule(models=("nodule",), modalities={"CT"}),), quiet_period_s=2.0, poll_interval_s=0.05,
        **options)
    scp.assembler.listeners.append(lambda group, seconds: latency.setdefault("from_last_s", seconds))
    scp.start()
    if warm and scp.slots is not None:
        scp.slots.wait_ready(files[0].stat().st_size)
    try:
        elapsed = send(scp.port, files)
        last_response = time.time()
        row = {"receiver": name, "seconds": elapsed, "instances_per_s": len(files) / elapsed}
        if scp.slots is not None:
            row["slot_misses"] = scp.slots.misses
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
    args = parser.parse_args()
    for peer in ("storescu", "storescp"):
        if find_peer(peer) is None:
            sys.exit(f"{peer} not installed (Debian package dcmtk)")
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        plain = write_series(work / "series", args.slices, args.size_px, count=False)
        counted = write_series(work / "series-count", args.slices, args.size_px, count=True)
        rows = [run_storescp(plain, work),
                run_medgate(plain, work, "medgate", warm=True),
                run_medgate(counted, work, "medgate, known count", warm=True),
                run_medgate(plain, work, "medgate, new file per instance", slot_pool_bytes=0),
                run_medgate(plain, work, "medgate, no fsync", fsync=False),
                run_medgate(plain, work, "medgate, association only", scp_class=DiscardingScp),
                run_medgate(plain, work, "medgate, association + durable write only", scp_class=DurableOnlyScp,
                            warm=True)]
        writes = [time_slot_writes(plain, work / "write-slot"),
                  time_writes(plain, work / "write-fsync", fsync=True),
                  time_writes(plain, work / "write-plain", fsync=False)]
    reference = rows[0]["instances_per_s"]
    ceiling = round(rows[-1]["instances_per_s"] / reference, 3)
    print(f"{args.slices} CT slices {args.size_px}x{args.size_px} 16-bit, storescu -> receiver, TCP_NODELAY=1")
    print(f"{'receiver':44s} {'time s':>8s} {'inst/s':>8s} {'ratio':>6s} {'last->complete s':>17s} "
          f"{'no slot ready':>14s}")
    for row in rows:
        row["ratio_to_storescp"] = round(row["instances_per_s"] / reference, 3)
        print(f"{row['receiver']:44s} {row['seconds']:8.2f} {row['instances_per_s']:8.1f} "
              f"{row['ratio_to_storescp']:6.2f} {row.get('last_instance_to_complete_s', ''):>17} "
              f"{row.get('slot_misses', ''):>14}")
    for write in writes:
        print(f"{write['writer']:44s} {write['seconds']:8.2f}  {write['ms_per_instance']:.3f} ms/instance, no network")
    print(f"durability ceiling (association + durable write only, over storescp): {ceiling:.2f}")
    figures = {"slices": args.slices, "size_px": args.size_px, "target_ratio": 0.8, "rows": rows,
               "writes": writes, "durability_ceiling_ratio": ceiling, "load_average": os.getloadavg()}

    def plot(ax):
        names = [r["receiver"] for r in rows]
        ax.barh(names, [r["instances_per_s"] for r in rows], color=["grey"] + ["tab:blue"] * (len(rows) - 1))
        ax.axvline(0.8 * reference, color="red", linestyle="--", label="0.8 x storescp")
        ax.axvline(ceiling * reference, color="black", linestyle=":", label="durability ceiling")
        ax.set_xlabel("instances/s (higher is better)")
        ax.legend()

    save_figures("dicom_ingest", figures, plot)


if __name__ == "__main__":
    main()
