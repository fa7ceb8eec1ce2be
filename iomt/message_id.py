"""The correlation id of one MQTT message: ``mqtt:<device>@<measurement time, UTC>``.

The id comes from the message itself, so a redelivery (QoS 1 after a crash) or a replay of a parked
message has the same id as the first delivery: ``mqtt:MON-0042@2026-11-22T03:00:00Z``.  A message
whose payload names no device uses its topic instead of the device; one that cannot be decoded
gets ``mqtt:<topic>#<first 12 hex digits of the payload's SHA-256>``.

The bridge's hot path sets one :class:`MessageCursor` per batch and moves it along the messages
(:func:`each_message`); a payload is decoded again for its id only when a log line or an outbox
item asks for it, which happens for dead letters and alerts, not for ordinary messages.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Iterable, Iterator

from kernel.correlation import CORRELATION_ID

PREFIX = "mqtt:"


def _utc(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class MessageCursor:
    """The message a batch is at; ``str()`` gives that message's id (computed once per message).

    One cursor is set as the correlation id for a whole batch and only its ``message`` attribute
    changes per message, so the hot path does one attribute store per message and one
    ``ContextVar.set`` per batch.  Readers must take ``str()`` at once (as
    :func:`kernel.correlation.current_id` does), never keep the cursor.
    """

    __slots__ = ("message", "_of", "_text")

    def __init__(self) -> None:
        self.message: tuple[str, bytes] | None = None
        self._of: tuple[str, bytes] | None = None
        self._text = ""

    def __str__(self) -> str:
        message = self.message
        if message is None:
            return ""
        if message is not self._of:
            self._text, self._of = message_id(*message), message
        return self._text


def message_id(topic: str, payload: bytes) -> str:
    """The id of a message on ``topic`` (see the module docstring)."""
    try:
        if topic.endswith("/adt"):
            from iomt.identity import parse_adt

            event = parse_adt(payload)
            return f"{PREFIX}{event.device}@{_utc(event.time)}"
        from iomt.compact import decode

        msg = decode(payload)
        return f"{PREFIX}{msg.device or topic}@{_utc(msg.time)}"
    except Exception:  # noqa: BLE001 - an unusable payload still needs an id
        digest = hashlib.sha256(bytes(payload or b"")).hexdigest()[:12]
        return f"{PREFIX}{topic}#{digest}"


def each_message(messages: Iterable[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    """Yield each ``(topic, payload)`` with its id as the correlation id (through one
    :class:`MessageCursor`); the previous id is restored when the iteration ends."""
    cursor = MessageCursor()
    token = CORRELATION_ID.set(cursor)
    try:
        for message in messages:
            cursor.message = message
            yield message
    finally:
        CORRELATION_ID.reset(token)
