"""IoMT ingest throughput: N simulated beds → Mosquitto → VitalsBridge → stored FHIR Observations.

Three phases on one freshly started Mosquitto (``max_queued_messages`` and ``max_inflight_messages``
raised), each publisher in its own process so that it does not share the bridge's GIL:

1. saturation: ``--messages`` compact vitals messages (HR, SpO2, RR) from ``--beds`` beds
   published as fast as the publisher can; the bridge's sustained rate is messages stored divided
   by the time from the first publish to the last commit;
2. paced: ``--rate`` msg/s for ``--seconds``; publish → commit latency p50/p99 per message (the
   payload carries its publish time);
3. raw: the same saturation publisher with only ``mosquitto_sub -q 1`` subscribed: what the broker
   and a C client consume on this machine, the ceiling for any subscriber.

Messages lost = messages the broker acknowledged (PUBACK) minus distinct heart-rate Observations
stored; it must be 0. Results: ``benchmarks/results/iomt_throughput.json`` and ``.png``.

Usage: ``python -m benchmarks.iomt_throughput [--beds 1000] [--messages 30000] [--rate 2000]``
"""
from __future__ import annotations

import argparse
import getpass
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson

from benchmarks.report import free_port, save_figures

PREFIX = "medgate"
MDC_HR, MDC_SPO2, MDC_RR = 147842, 150456, 151562  # IEEE 11073-10101
MQTT_MAX_INFLIGHT = 1000


def _topic(bed: int) -> str:
    return f"{PREFIX}/h1/w{bed // 50}/b{bed}/dev{bed}/vitals"


def publish(port: int, beds: int, n: int, rate: float, client_id: str, acked) -> None:
    """Publisher process: ``n`` messages round-robin over beds, paced at ``rate`` (0 = flat out)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(MQTT_MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    count = [0]
    client.on_publish = lambda c, u, mid, rc, props: count.__setitem__(0, count[0] + 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    last = [0] * beds
    start = time.perf_counter()
    for k in range(n):
        if rate > 0:
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        bed = k % beds
        t_ms = max(int(time.time() * 1000), last[bed] + 1)  # unique per device: ids stay distinct
        last[bed] = t_ms
        body = orjson.dumps({"d": f"dev{bed}", "t": t_ms,
                             "v": [[MDC_HR, 60 + k % 40], [MDC_SPO2, 95 + k % 5], [MDC_RR, 14 + k % 6]]})
        client.publish(_topic(bed), body, qos=1)
    deadline = time.monotonic() + 120
    while count[0] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    acked.value = count[0]
    client.loop_stop()
    client.disconnect()


def start_broker(folder: Path, port: int) -> subprocess.Popen:
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
                      f"max_queued_messages 1000000\nmax_inflight_messages {MQTT_MAX_INFLIGHT}\n"
                      "persistence false\n")
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return proc


def run_publisher(port, beds, n, rate, name):
    acked = mp.Value("i", 0)
    proc = mp.Process(target=publish, args=(port, beds, n, rate, name, acked))
    started = time.time()
    proc.start()
    return proc, acked, started


def bridge_phase(port: int, folder: Path, beds: int, n: int, rate: float, name: str) -> dict:
    from iomt.bridge import VitalsBridge
    from iomt.identity import AdtEvent
    from iomt.mqtt_client import MqttOptions
    from serving.store import Store

    store = Store(folder / f"{name}.sqlite3")
    latencies: list[float] = []
    commits: list[float] = []

    def on_commit(batch, committed_at):
        commits.append(committed_at)
        latencies.extend(committed_at - orjson.loads(m.payload)["t"] / 1000.0 for m in batch)

    bridge = VitalsBridge("127.0.0.1", port, topic_prefix=PREFIX, store=store, client_id=f"bench-{name}",
                          options=MqttOptions(protocol="5", receive_maximum=20_000),
                          on_commit=on_commit, batch_max_messages=2000)
    since = datetime(2020, 1, 1, tzinfo=timezone.utc)
    for bed in range(beds):
        bridge.registry.apply(AdtEvent("admit", f"dev{bed}", since, patient_id=f"P{bed:05d}"))
    bridge.start()
    assert bridge.connected.wait(10), "bridge could not connect"
    proc, acked, started = run_publisher(port, beds, n, rate, f"pub-{name}")
    deadline = time.time() + 600
    while len(latencies) < n and time.time() < deadline:
        time.sleep(0.05)
    proc.join(timeout=120)
    bridge.stop()
    stored = store.query("SELECT count(*) AS n FROM fhir_resources WHERE resource_type='Observation'"
                         " AND body LIKE '%\"8867-4\"%' AND body NOT LIKE '%1104051000000101%'")[0]["n"]
    store.close()
    lat_ms = np.array(latencies) * 1000.0
    elapsed = (max(commits) - started) if commits else float("nan")
    return {"messages": n, "acked": acked.value, "stored": stored, "lost": acked.value - stored,
            "msgs_per_s": round(stored / elapsed, 1), "batches": len(commits),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 1)}


def raw_phase(port: int, beds: int, n: int) -> dict:
    binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    sub = subprocess.Popen([binary, "-p", str(port), "-q", "1", "-i", "bench-raw", "-C", str(n),
                            "-t", f"{PREFIX}/+/+/+/+/vitals"], stdout=subprocess.PIPE)
    time.sleep(0.5)
    counted = [0, None]

    def reader():
        for _ in sub.stdout:
            counted[0] += 1
        counted[1] = time.time()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    proc, acked, started = run_publisher(port, beds, n, 0, "pub-raw")
    thread.join(timeout=300)
    proc.join(timeout=120)
    if sub.poll() is None:
        sub.terminate()
    end = counted[1] or time.time()
    return {"messages": n, "received": counted[0], "msgs_per_s": round(counted[0] / (end - started), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--rate", type=float, default=2000.0, help="paced phase, msg/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="paced phase duration")
    args = parser.parse_args(argv)
    for name, value in (("beds", args.beds), ("messages", args.messages), ("rate", args.rate)):
        if value <= 0:
            parser.error(f"--{name} must be positive, {value} is given")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        broker = start_broker(folder, port)
        try:
            saturation = bridge_phase(port, folder, args.beds, args.messages, 0, "saturation")
            paced_n = int(args.rate * args.seconds)
            paced = bridge_phase(port, folder, args.beds, paced_n, args.rate, "paced")
            raw = raw_phase(port, args.beds, args.messages)
        finally:
            broker.terminate()
            broker.wait(10)
    figures = {"beds": args.beds, "payload": "compact: HR, SpO2, RR per message",
               "saturation": saturation, "paced": {"rate_msgs_per_s": args.rate, **paced},
               "mosquitto_sub": raw, "target": {"msgs_per_s": 10_000, "p99_ms": 100},
               # A shared machine: the 1-minute load average says how much CPU the run really had.
               "load_average_1m": {"before": round(load_before[0], 2),
                                   "after": round(os.getloadavg()[0], 2)}}
    print(f"{'phase':<12}{'msg/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'lost':>6}")
    for name, row in (("saturation", saturation), ("paced", paced)):
        print(f"{name:<12}{row['msgs_per_s']:>10}{row['p50_ms']:>10}{row['p99_ms']:>10}{row['lost']:>6}")
    print(f"{'mosq_sub':<12}{raw['msgs_per_s']:>10}")

    def plot(ax):
        names = ["bridge (saturation)", "bridge (paced)", "mosquitto_sub"]
        values = [saturation["msgs_per_s"], paced["msgs_per_s"], raw["msgs_per_s"]]
        ax.bar(names, values, color=["tab:blue", "tab:cyan", "tab:gray"])
        ax.axhline(10_000, color="tab:red", linestyle="--", label="target 10,000 msg/s")
        ax.set_ylabel("messages / s")
        ax.legend()
        ax.text(1, paced["msgs_per_s"], f"p50 {paced['p50_ms']} ms\np99 {paced['p99_ms']} ms",
                ha="center", va="bottom")

    save_figures("iomt_throughput", figures, plot)
    return 0 if saturation["lost"] == 0 and paced["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
