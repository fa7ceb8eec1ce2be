"""What the bridge keeps of a message it could not use: a dead letter, bounded.

A dead letter is one row of the store's ``dead_letters`` table and one message on
``P/deadletter`` (:mod:`iomt.topics`). MQTT lets a message carry 256 MiB and a topic 65,535 bytes;
a dead letter keeps at most :data:`PAYLOAD_PREFIX_BYTES` of the payload together with the
SHA-256 (FIPS 180-4) and the length of the whole payload, so that the original can still be
recognised (e.g. in the sender's own log) without the store or the broker holding all of it.
The reason and the source topic are cut at :data:`MAX_REASON_CHARS` and
:data:`MAX_SOURCE_CHARS`.

A message parked because its device is not yet associated with a patient is kept whole: it is
replayed from the stored payload once an ADT message names the device. It was decoded before
it was parked, so it is at most :data:`iomt.payload.MAX_PAYLOAD_BYTES` long; the message
published for it on ``P/deadletter`` still carries the prefix only.
"""
from __future__ import annotations

import base64
import hashlib
from typing import NamedTuple

PAYLOAD_PREFIX_BYTES = 4096  # of an unusable payload, stored and published
MAX_REASON_CHARS = 512  # a reason quotes at most this much of what it refuses
MAX_SOURCE_CHARS = 1024  # "mqtt:" and the topic; a valid vitals topic is shorter (iomt.topics)


class DeadLetter(NamedTuple):
    """One dead letter, in the column order of the store's ``dead_letters`` table."""

    source: str  # "mqtt:<topic>"
    reason: str
    payload: bytes | None  # whole when parked, else the first PAYLOAD_PREFIX_BYTES
    device: str | None  # the device a parked message waits for
    payload_sha256: str | None  # hex digest of the whole payload
    payload_bytes: int | None  # length of the whole payload


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def dead_letter(source: str, reason: str, payload: bytes | None, device: str | None = None, *,
                whole: bool = False) -> DeadLetter:
    """The bounded dead letter of ``payload`` received on ``source``; ``whole``: keep all of the
    payload (a parked message, to be replayed)."""
    if payload is None:
        return DeadLetter(_cut(source, MAX_SOURCE_CHARS), _cut(reason, MAX_REASON_CHARS), None,
                          device, None, None)
    payload = bytes(payload)
    return DeadLetter(source if whole else _cut(source, MAX_SOURCE_CHARS),
                      _cut(reason, MAX_REASON_CHARS),
                      payload if whole else payload[:PAYLOAD_PREFIX_BYTES], device,
                      hashlib.sha256(payload).hexdigest(), len(payload))


def message(letter: DeadLetter) -> dict:
    """The JSON object published on ``P/deadletter`` for ``letter``: at most
    :data:`PAYLOAD_PREFIX_BYTES` of the payload, base64 (RFC 4648 section 4)."""
    prefix = (letter.payload or b"")[:PAYLOAD_PREFIX_BYTES]
    return {"topic": letter.source.removeprefix("mqtt:"), "reason": letter.reason,
            "payload_base64": base64.b64encode(prefix).decode("ascii"),
            "payload_bytes": letter.payload_bytes if letter.payload_bytes is not None else 0,
            "payload_sha256": letter.payload_sha256 or hashlib.sha256(b"").hexdigest(),
            "payload_truncated": len(prefix) < (letter.payload_bytes or 0)}
