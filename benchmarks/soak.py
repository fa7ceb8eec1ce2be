"""Soak: `medgate serve` under a realistic mixed load for ``--minutes``; memory, file descriptor and
thread growth of every process of the server, and nothing lost.

Peers: DCMTK storescp is the PACS, Mosquitto the hospital broker (``mqtt.url``), storescu the
modalities. Load (defaults, each driver in its own thread, one request at a time):

* a chest X-ray study by C-STORE every 5 s and one by STOW-RS every 60 s (-> SR + SC);
* a chest CT series (32 slices of 256x256, one nodule) by C-STORE every 180 s (-> SEG + SR + SC);
* ``POST /v1/infer/tb`` with a PNG every 2 s, ``POST /v1/infer/derm`` with a skin photo every 30 s;
* vitals from 150 beds, one compact message per bed per second (QoS 1), after an ADT admit each.

Every ``--sample-s`` the resident memory, open fds and threads of the server and of every process
under it (Ray GCS, raylet, Serve controller and proxy, one replica per model, idle workers) are
summed by role, with the size of ``state_dir`` (SQLite store, spool, results). At the end the
growth per hour is a least-squares line over the second half of the run (after warm-up); a role
whose RSS grows faster than ``--rss-leak-mib-per-h``, or whose fds or threads grow faster than
``--fd-leak-per-h``, steadily (r^2 >= 0.5), is flagged as a leak. Nothing may be lost: every study
sent must have its SR at the PACS, every vitals message the broker acknowledged its heart-rate
Observation in the store. Saves ``benchmarks/results/soak.json`` and ``soak.png``.

    python benchmarks/soak.py [--minutes 30] [--beds 150]     # `make soak MINUTES=30`
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # tests/: the DICOM test data

from benchmarks.bench_ct_latency import write_study  # noqa: E402
from benchmarks.imaging_peers import (  # noqa: E402
    TOKEN, Rig, imaging_server, missing_peers, result_kind, send_files)
from benchmarks.process_tree import growth, open_files, sample_tree  # noqa: E402
from benchmarks.report import save_figures  # noqa: E402
from dicom_testdata import chest_ct  # noqa: E402
from peers import broker  # noqa: E402
from kernel.database import DATABASE_FILE, Database, database_path  # noqa: E402
from models import clinical_codes as codes  # noqa: E402
from serving.store import Store  # noqa: E402
from training.synthetic.dicom import make_dx_dataset  # noqa: E402

PREFIX = "medgate"
MDC_HR, MDC_SPO2, MDC_RR = 147842, 150456, 151562  # IEEE 11073-10101
MIB = 1024 * 1024


@dataclass
class Driver:
    """One kind of load: what it sent, what failed, and the study UIDs it must see results for."""

    name: str
    period_s: float
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    studies: dict[str, float] = field(default_factory=dict)  # study UID -> epoch time sent

    def run(self, action: Callable[["Driver"], None], stop: threading.Event, delay_s: float) -> None:
        next_at = time.monotonic() + delay_s
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                action(self)
                self.sent += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported, the soak goes on
                self.failed += 1
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            next_at = max(next_at + self.period_s, time.monotonic())


# -- load -------------------------------------------------------------------------------------
def cstore_cxr(rig: Rig, work: Path, pool: list[np.ndarray]) -> Callable[[Driver], None]:
    def action(driver: Driver) -> None:
        ds = make_dx_dataset(pool[driver.sent % len(pool)])
        path = work / f"cxr-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        driver.studies[ds.StudyInstanceUID] = time.time()
        try:
            send_files(rig.dicom_port, [path])
        finally:
            path.unlink()
    return action


def cstore_ct(rig: Rig, work: Path, volume: np.ndarray) -> Callable[[Driver], None]:
    def action(driver: Driver) -> None:
        folder = work / f"ct-{driver.sent}"
        study_uid, files = write_study(folder, volume)
        driver.studies[study_uid] = time.time()
        try:
            send_files(rig.dicom_port, files)
        finally:
            shutil.rmtree(folder)
    return action


def stow_cxr(rig: Rig, pool: list[np.ndarray]) -> Callable[[Driver], None]:
    import requests

    session, boundary = requests.Session(), "medgate-soak-boundary"
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def action(driver: Driver) -> None:
        ds = make_dx_dataset(pool[driver.sent % len(pool)])
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buffer.getvalue()
                + f"\r\n--{boundary}--\r\n".encode())
        driver.studies[ds.StudyInstanceUID] = time.time()
        start = time.perf_counter()
        reply = session.post(f"{rig.http_url}/dicomweb/studies", data=body, timeout=60, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        reply.raise_for_status()
        driver.latencies_ms.append((time.perf_counter() - start) * 1000)
    return action


def http_infer(rig: Rig, model: str, images: list[bytes], filename: str) -> Callable[[Driver], None]:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def action(driver: Driver) -> None:
        start = time.perf_counter()
        reply = session.post(f"{rig.http_url}/v1/infer/{model}", timeout=60,
                             files={"file": (filename, images[driver.sent % len(images)])})
        reply.raise_for_status()
        driver.latencies_ms.append((time.perf_counter() - start) * 1000)
    return action


class Monitors:
    """``beds`` bedside monitors on one MQTT connection: an ADT admit each, then one compact
    vitals message per bed per second at QoS 1, spread over the second."""

    def __init__(self, port: int, beds: int) -> None:
        import paho.mqtt.client as mqtt

        self.beds, self.sent, self.acked, self.admitted = beds, 0, 0, 0
        self._adt_mids: set[int] = set()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-monitors")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid in self._adt_mids:
            self._adt_mids.discard(mid)
            self.admitted += 1
        else:
            self.acked += 1

    def admit(self) -> None:
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        for bed in range(self.beds):
            message = {"event": "admit", "device": f"dev{bed}", "time": now, "patient": {"id": f"{bed:012d}"}}
            self._adt_mids.add(self.client.publish(f"{PREFIX}/adt", orjson.dumps(message), qos=1).mid)
        deadline = time.monotonic() + 60
        while self.admitted < self.beds and time.monotonic() < deadline:
            time.sleep(0.05)

    def run(self, stop: threading.Event) -> None:
        k = 0
        while not stop.is_set():
            second = time.monotonic()
            for bed in range(self.beds):
                t_ms = int(time.time() * 1000)
                body = orjson.dumps({"d": f"dev{bed}", "t": t_ms, "v": [
                    [MDC_HR, 60 + (bed + k) % 40], [MDC_SPO2, 94 + (bed + k) % 6], [MDC_RR, 12 + (bed + k) % 9]]})
                self.client.publish(f"{PREFIX}/h1/w{bed // 50}/b{bed}/dev{bed}/vitals", body, qos=1)
                self.sent += 1
                time.sleep(max(0.0, second + (bed + 1) / self.beds - time.monotonic()))
            k += 1
            time.sleep(max(0.0, second + 1.0 - time.monotonic()))

    def close(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.acked < self.sent and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.loop_stop()
        self.client.disconnect()


# -- measurement ------------------------------------------------------------------------------
def folder_bytes(folder: Path) -> dict[str, int]:
    """Bytes under ``folder`` by first-level entry (the SQLite store's files as one)."""
    out: dict[str, int] = {}
    for entry in folder.iterdir() if folder.exists() else []:
        key = "sqlite" if entry.name.startswith(DATABASE_FILE) else entry.name
        try:
            size = entry.stat().st_size if entry.is_file() else sum(
                p.stat().st_size for p in entry.rglob("*") if p.is_file())
        except OSError:  # removed while walking
            continue
        out[key] = out.get(key, 0) + size
    return out


class Sampler:
    """Samples the server's process tree and state_dir every ``period_s`` until stopped."""

    def __init__(self, pid: int, state_dir: Path, period_s: float) -> None:
        self.pid, self.state_dir, self.period_s = pid, state_dir, period_s
        self.t0 = time.monotonic()
        self.times_s: list[float] = []
        self.roles: dict[str, dict[str, list]] = {}
        self.var_bytes: list[dict[str, int]] = []
        self.fds_mid: dict[str, int] | None = None

    def sample(self) -> None:
        now = time.monotonic() - self.t0
        index = len(self.times_s)
        self.times_s.append(round(now, 1))
        for name, s in sample_tree(self.pid).items():
            series = self.roles.setdefault(name, {"rss_mib": [None] * index, "fds": [None] * index,
                                                  "threads": [None] * index, "processes": [None] * index})
            series["rss_mib"].append(round(s.rss_bytes / MIB, 1))
            series["fds"].append(s.fds)
            series["threads"].append(s.threads)
            series["processes"].append(s.processes)
        for series in self.roles.values():
            for values in series.values():
                values.extend([None] * (index + 1 - len(values)))
        self.var_bytes.append(folder_bytes(self.state_dir))

    def run(self, stop: threading.Event, minutes: float) -> None:
        while True:
            self.sample()
            if self.fds_mid is None and time.monotonic() - self.t0 >= minutes * 30:
                self.fds_mid = open_files(self.pid)
            if stop.wait(self.period_s):
                self.sample()
                return


def analyse(sampler: Sampler, rss_limit_mib_h: float, fd_limit_h: float) -> tuple[dict, list[str]]:
    """Growth per hour of every role and of the whole tree; the leaks among them."""
    t = sampler.times_s
    out, leaks = {}, []
    total = {k: [sum(s[k][i] or 0 for s in sampler.roles.values()) for i in range(len(t))]
             for k in ("rss_mib", "fds", "threads")}
    for name, series in {**sampler.roles, "total": total}.items():
        row = {}
        for key, unit, limit in (("rss_mib", "MiB", rss_limit_mib_h), ("fds", "fds", fd_limit_h),
                                 ("threads", "threads", fd_limit_h)):
            points = [(ti, v) for ti, v in zip(t, series[key]) if v is not None]
            if len(points) < 3:
                continue
            g = growth([p[0] for p in points], [p[1] for p in points])
            row[key] = {k: round(v, 2) if isinstance(v, float) else v for k, v in g.items()}
            limit = limit * (2 if name == "total" else 1)
            if g["per_hour"] > limit and g["r2"] >= 0.5 and (key == "rss_mib" or g["end"] - g["start"] >= 3):
                leaks.append(f"{name}: {key} +{g['per_hour']:.1f} {unit}/h (r2 {g['r2']:.2f}, limit {limit:g})")
        out[name] = row
    var_total = [sum(v.values()) / MIB for v in sampler.var_bytes]
    out["state_dir"] = {"mib": {k: round(v, 2) if isinstance(v, float) else v
                                for k, v in growth(t, var_total).items()},
                        "end_mib_by_part": {k: round(v / MIB, 1) for k, v in sampler.var_bytes[-1].items()}}
    return out, leaks


def results_at_pacs(folder: Path, seen: dict[str, tuple[str, str, float]]) -> dict[str, tuple[str, str, float]]:
    """File name -> (kind, Study Instance UID, arrival epoch) of each SR/SEG received (``seen`` is
    the cache of files already read; a file still being written is read next time)."""
    from pydicom import dcmread

    for entry in os.scandir(folder):
        kind = result_kind(entry.name)
        if kind not in ("SR", "SEG") or entry.name in seen:
            continue
        try:
            ds = dcmread(entry.path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            seen[entry.name] = (kind, str(ds.StudyInstanceUID), entry.stat().st_mtime)
        except Exception:  # noqa: BLE001 - partly written
            continue
    return seen


def _read_only(db: Path) -> Store:
    """The server's stores on a read-only connection (the soak never writes to the server's database)."""
    return Store(Database(db, read_only=True))


def heart_rates_stored(db: Path) -> int:
    store = _read_only(db)
    try:
        return store.vitals.count(codes.HEART_RATE)
    finally:
        store.close()


def study_states(db: Path, study_uids: list[str]) -> dict[str, dict[str, str | int | None]]:
    """Status, detail and instances stored that the server recorded for each study (status None
    when it never arrived; "done" with an empty detail: processed, nothing found, nothing written)."""
    store = _read_only(db)
    try:
        states = {}
        for uid in study_uids:
            study = store.gateway.study(uid)
            states[uid] = {"status": study.status if study else None, "detail": study.detail if study else None,
                           "instances": len(store.gateway.instances_of(uid))}
        return states
    finally:
        store.close()


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values)
    return {"p50_ms": round(float(np.percentile(a, 50)), 1), "p95_ms": round(float(np.percentile(a, 95)), 1),
            "max_ms": round(float(a.max()), 1)}


def make_inputs(ct_slices: int) -> tuple[list[np.ndarray], list[bytes], list[bytes], np.ndarray]:
    """Generated radiographs (pixels, and as PNG), skin photos (JPEG) and a chest CT volume."""
    from PIL import Image

    from training.synthetic.cxr import generate_cxr
    from training.synthetic.derm import generate_lesion

    def encoded(array: np.ndarray, fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, fmt)
        return buffer.getvalue()

    rng = np.random.default_rng(0)
    pool = [generate_cxr(rng, tb=bool(i % 2)).pixels for i in range(8)]
    pngs = [encoded((pixels >> 4).astype(np.uint8), "PNG") for pixels in pool]
    photos = [encoded(generate_lesion(rng, cls, size_px=256).pixels, "JPEG") for cls in range(7)]
    volume, _ = chest_ct(seed=0, shape_vox=(ct_slices, 256, 256))  # one nodule
    return pool, pngs, photos, volume


def drain(pacs_folder: Path, studies: set[str], db: Path, acked: int, timeout_s: float
          ) -> tuple[dict[str, tuple[str, str, float]], int]:
    """Wait until every study has its SR at the PACS and ``acked`` heart rates are stored; returns
    what arrived (:func:`results_at_pacs`) and the heart rates stored."""
    seen: dict[str, tuple[str, str, float]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        srs = {uid for kind, uid, _ in results_at_pacs(pacs_folder, seen).values() if kind == "SR"}
        if studies <= srs and heart_rates_stored(db) >= acked:
            break
        time.sleep(2.0)
    return results_at_pacs(pacs_folder, seen), heart_rates_stored(db)


def load_summary(drivers: list[Driver], seen: dict[str, tuple[str, str, float]]) -> dict[str, dict]:
    """Per driver: sent, failed, and for studies the results received, lost and the time to them
    (C-STORE/STOW start to the last of SEG and SR written at the PACS); for CT, how many had a SEG
    (the nodule found)."""
    arrivals: dict[str, dict[str, float]] = {}
    for kind, uid, at in seen.values():
        arrivals.setdefault(uid, {})[kind] = min(at, arrivals.get(uid, {}).get(kind, at))
    out = {}
    for driver in drivers:
        row = {"period_s": driver.period_s, "sent": driver.sent, "failed": driver.failed, "errors": driver.errors}
        if driver.studies:  # a study without its SR is lost; a CT whose SR says "absent" has no SEG
            done = {uid: max(arrivals[uid].values()) - t for uid, t in driver.studies.items()
                    if "SR" in arrivals.get(uid, {})}
            row.update({"studies": len(driver.studies), "results_received": len(done),
                        "lost": len(driver.studies) - len(done),
                        "to_results": percentiles([v * 1000 for v in done.values()])})
            if driver.name.startswith("ct"):
                row["with_seg"] = sum("SEG" in arrivals.get(uid, {}) for uid in done)
        else:
            row["latency"] = percentiles(driver.latencies_ms)
        out[driver.name] = row
    return out


# -- run --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--beds", type=int, default=150, help="vitals at 1 msg/s per bed")
    parser.add_argument("--cxr-every-s", type=float, default=5.0)
    parser.add_argument("--stow-every-s", type=float, default=60.0)
    parser.add_argument("--ct-every-s", type=float, default=180.0)
    parser.add_argument("--ct-slices", type=int, default=32)
    parser.add_argument("--infer-every-s", type=float, default=2.0)
    parser.add_argument("--photo-every-s", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--drain-s", type=float, default=300.0, help="wait for the last results")
    parser.add_argument("--rss-leak-mib-per-h", type=float, default=50.0)
    parser.add_argument("--fd-leak-per-h", type=float, default=30.0, help="also for threads")
    args = parser.parse_args(argv)
    for name in ("minutes", "beds", "cxr_every_s", "stow_every_s", "ct_every_s", "ct_slices", "infer_every_s",
                 "photo_every_s", "sample_s"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, {getattr(args, name)} is given")
    missing = missing_peers("storescu", "storescp", "mosquitto")
    if missing:
        print(f"{', '.join(missing)} not installed (Debian packages dcmtk, mosquitto): nothing measured")
        return 1
    pool, pngs, photos, ct_volume = make_inputs(args.ct_slices)
    load_before = os.getloadavg()[0]
    stop, stop_sampling = threading.Event(), threading.Event()
    with tempfile.TemporaryDirectory(prefix="medgate-soak-") as tmp:
        root = Path(tmp)
        work = root / "outgoing"
        work.mkdir()
        mosquitto = broker(root, "allow_anonymous true", "persistence false")
        try:
            with imaging_server(root, config={"mqtt": {"url": f"mqtt://127.0.0.1:{mosquitto.port}"},
                                              "log_level": "INFO"}) as rig:
                monitors = Monitors(mosquitto.port, args.beds)
                monitors.admit()
                drivers = {
                    "cxr_cstore": (Driver("cxr_cstore", args.cxr_every_s), cstore_cxr(rig, work, pool)),
                    "ct_cstore": (Driver("ct_cstore", args.ct_every_s), cstore_ct(rig, work, ct_volume)),
                    "cxr_stow": (Driver("cxr_stow", args.stow_every_s), stow_cxr(rig, pool)),
                    "infer_tb": (Driver("infer_tb", args.infer_every_s), http_infer(rig, "tb", pngs, "cxr.png")),
                    "infer_derm": (Driver("infer_derm", args.photo_every_s),
                                   http_infer(rig, "derm", photos, "lesion.jpg")),
                }
                sampler = Sampler(rig.server.proc.pid, root / "var", args.sample_s)
                threads = [threading.Thread(target=sampler.run, args=(stop_sampling, args.minutes), daemon=True),
                           threading.Thread(target=monitors.run, args=(stop,), daemon=True)]
                threads += [threading.Thread(target=d.run, args=(action, stop, i * 1.5), daemon=True)
                            for i, (d, action) in enumerate(drivers.values())]
                started = time.monotonic()
                for thread in threads:
                    thread.start()
                print(f"soak: {args.minutes} min, {args.beds} beds; server pid {rig.server.proc.pid}", flush=True)
                while not stop.wait(min(60.0, max(0.0, started + args.minutes * 60 - time.monotonic()))):
                    if time.monotonic() >= started + args.minutes * 60:
                        stop.set()
                    else:
                        sent = {n: d.sent for n, (d, _) in drivers.items()}
                        print(f"  {(time.monotonic() - started) / 60:5.1f} min: {sent}, vitals {monitors.sent}",
                              flush=True)
                stop_sampling.set()
                for thread in threads:
                    thread.join(timeout=600)
                elapsed_s = time.monotonic() - started
                fds_end = open_files(rig.server.proc.pid)
                monitors.close()
                db = database_path(root / "var")
                seen, stored = drain(rig.pacs.folder, {uid for d, _ in drivers.values() for uid in d.studies},
                                     db, monitors.acked, args.drain_s)
                with_sr = {uid for kind, uid, _ in seen.values() if kind == "SR"}
                lost = {uid: d.name for d, _ in drivers.values() for uid in d.studies if uid not in with_sr}
                lost_states = study_states(db, sorted(lost)[:50]) if lost else {}
                log_bytes = rig.server.log_path.stat().st_size
        finally:
            mosquitto.stop()
    growth_by_role, leaks = analyse(sampler, args.rss_leak_mib_per_h, args.fd_leak_per_h)
    load = load_summary([d for d, _ in drivers.values()], seen)
    lost_studies = sum(row.get("lost", 0) for row in load.values())
    vitals = {"beds": args.beds, "rate_msgs_per_s": args.beds, "sent": monitors.sent, "acked": monitors.acked,
              "heart_rate_observations": stored, "lost": monitors.acked - stored}
    failed_requests = sum(r["failed"] for r in load.values())
    figures = {
        "minutes": round(elapsed_s / 60, 2), "sample_s": args.sample_s,
        "indicative_only": args.minutes < 10,
        "load": load, "vitals": vitals,
        "lost": {"studies": lost_studies, "vitals": vitals["lost"]}, "failed_requests": failed_requests,
        "lost_studies": [{"study_uid": uid, "load": lost[uid], **state} for uid, state in lost_states.items()],
        "growth_per_hour": growth_by_role, "leak_limits": {"rss_mib_per_h": args.rss_leak_mib_per_h,
                                                           "fds_or_threads_per_h": args.fd_leak_per_h},
        "leaks": leaks,
        "server_fds_by_kind": {"mid_run": sampler.fds_mid, "end": fds_end},
        "server_log_mib": round(log_bytes / MIB, 1),
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "samples": {"t_s": sampler.times_s, "roles": sampler.roles,
                    "state_dir_mib": [round(sum(v.values()) / MIB, 1) for v in sampler.var_bytes]},
    }
    print(f"soak {figures['minutes']} min: lost studies {lost_studies}, lost vitals {vitals['lost']} "
          f"(acked {monitors.acked}, stored {stored}), failed requests {failed_requests}")
    for name, row in growth_by_role.items():
        if "rss_mib" in row:
            print(f"  {name:40s} RSS {row['rss_mib']['end']:8.1f} MiB {row['rss_mib']['per_hour']:+8.1f} MiB/h"
                  f"  fds {row['fds']['end']:5.0f} {row['fds']['per_hour']:+7.1f}/h"
                  f"  threads {row['threads']['end']:5.0f} {row['threads']['per_hour']:+7.1f}/h")
    print("leaks: " + ("; ".join(leaks) if leaks else "none above the limits"))

    def plot(axes):
        minutes = np.asarray(sampler.times_s) / 60
        for name, series in sorted(sampler.roles.items(), key=lambda kv: -max(v or 0 for v in kv[1]["rss_mib"])):
            axes[0].plot(minutes, [np.nan if v is None else v for v in series["rss_mib"]], label=name)
            axes[1].plot(minutes, [np.nan if v is None else v for v in series["fds"]], label=name)
        axes[0].set_ylabel("RSS (MiB)")
        axes[1].set_ylabel("open fds")
        axes[1].set_xlabel("minutes")
        axes[0].legend(fontsize=6, ncol=2)

    save_figures("soak", figures, plot, panels=2)
    return 0 if not leaks and not lost_studies and not vitals["lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
