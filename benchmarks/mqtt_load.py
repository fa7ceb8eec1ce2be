"""A load publisher for the MQTT benchmarks: compact vitals from N beds at QoS 1, on one socket.

``mosquitto_pub -l`` publishes every line on one topic, and a paho publisher spends ~50 µs of the
same two cores per message; this one writes pre-encoded MQTT 3.1.1 PUBLISH packets (OASIS 2014,
section 3.3) in 1 ms ticks, one ``sendall`` per tick, and counts the broker's PUBACKs (3.4) on a
second thread, so that it costs a few µs per message. Each payload's ``t`` (epoch ms, unique per
device) is its publish time, the start of the publish → Observation latency.
"""
from __future__ import annotations

import socket
import struct
import threading
import time

import orjson

PREFIX = "medgate"
MDC_HR, MDC_SPO2, MDC_RR = 147842, 150456, 151562  # IEEE 11073-10101
MAX_IN_FLIGHT = 30_000  # unacknowledged PUBLISH packets; packet ids are 1..65535
TICK_S = 0.001


def topic(bed: int) -> str:
    """The full-form vitals topic of ``bed`` (50 beds per ward)."""
    return f"{PREFIX}/h1/w{bed // 50}/b{bed}/dev{bed}/vitals"


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str) -> bytes:
    body = _utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 0) + _utf8(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def publish_packet(topic_bytes: bytes, mid: int, payload: bytes) -> bytes:
    body_len = len(topic_bytes) + 2 + len(payload)
    return b"\x32" + _remaining_length(body_len) + topic_bytes + struct.pack("!H", mid) + payload


def vitals(bed: int, k: int, t_ms: int) -> bytes:
    return orjson.dumps({"d": f"dev{bed}", "t": t_ms,
                         "v": [[MDC_HR, 60 + k % 40], [MDC_SPO2, 95 + k % 5], [MDC_RR, 14 + k % 6]]})


class LoadPublisher:
    """Publishes ``n`` messages round-robin over ``beds`` at ``rate`` msg/s (0: as fast as it can)."""

    def __init__(self, port: int, client_id: str, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(connect_packet(client_id))
        connack = self.sock.recv(4)
        if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"broker refused the connection: {connack!r}")
        self.acked = 0
        self._reader = threading.Thread(target=self._count_pubacks, daemon=True)
        self._reader.start()

    def _count_pubacks(self) -> None:
        pending = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            whole = len(pending) // 4  # PUBACK: 0x40 0x02 and the packet id
            self.acked += whole
            pending = pending[whole * 4:]

    def run(self, beds: int, n: int, rate: float) -> float:
        """Publish; returns the wall-clock time of the first publish."""
        topics = [_utf8(topic(bed)) for bed in range(beds)]
        last = [0] * beds
        started = time.time()
        start = time.perf_counter()
        k = 0
        while k < n:
            due = n if rate <= 0 else min(n, int((time.perf_counter() - start) * rate) + 1)
            due = min(due, k + 2000, self.acked + MAX_IN_FLIGHT)
            if due <= k:
                time.sleep(TICK_S if rate > 0 else 0.0002)
                continue
            now_ms = int(time.time() * 1000)
            packets = []
            for j in range(k, due):
                bed = j % beds
                t_ms = last[bed] = max(now_ms, last[bed] + 1)  # unique per device: distinct ids
                packets.append(publish_packet(topics[bed], j % 65535 + 1, vitals(bed, j, t_ms)))
            self.sock.sendall(b"".join(packets))
            k = due
        return started

    def wait_acked(self, n: int, timeout_s: float = 120.0) -> int:
        deadline = time.monotonic() + timeout_s
        while self.acked < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.acked

    def close(self) -> None:
        try:
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT
        finally:
            self.sock.close()


def publish(port: int, beds: int, n: int, rate: float, client_id: str, acked, started) -> None:
    """Publisher process body: ``acked`` and ``started`` are shared ``multiprocessing.Value``s."""
    publisher = LoadPublisher(port, client_id)
    started.value = publisher.run(beds, n, rate)
    acked.value = publisher.wait_acked(n)
    publisher.close()
