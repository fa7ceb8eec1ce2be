"""Outbox: persisted before the attempt, idempotent keys, backoff, dead-letter, survives restart;
a permanent failure dead-letters at once, a transient one waits for the peer's Retry-After."""
from __future__ import annotations

import time

import pytest

from kernel.delivery_errors import (MAX_RETRY_AFTER_S, PermanentDeliveryError, TransientDeliveryError,
                                    bounded_reason)
from serving.config import OutboxConfig
from serving.delivery.outbox import Outbox
from serving.store import Store


class FlakySender:
    def __init__(self, failures: int) -> None:
        self.failures, self.sent = failures, []

    def __call__(self, destination: str, payload: dict) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionRefusedError("destination down")
        self.sent.append((destination, payload))


def make(tmp_path, sender, **kw) -> Outbox:
    return Outbox(Store(tmp_path / "db.sqlite3"), {"dicom": sender}, backoff_base_s=0.0, **kw)


def test_delivers_once_and_keys_are_idempotent(tmp_path):
    sender = FlakySender(0)
    box = make(tmp_path, sender)
    assert box.enqueue("k1", "dicom", "pacs", {"paths": ["a"]})
    assert not box.enqueue("k1", "dicom", "pacs", {"paths": ["a"]})
    assert box.deliver_due() == 1 and box.deliver_due() == 0
    assert sender.sent == [("pacs", {"paths": ["a"]})]
    assert box.items()[0]["status"] == "sent"


def test_retries_then_delivers(tmp_path):
    sender = FlakySender(2)
    box = make(tmp_path, sender)
    box.enqueue("k", "dicom", "pacs", {})
    for _ in range(3):
        box.deliver_due()
    item = box.items()[0]
    assert item["status"] == "sent" and item["attempts"] == 3


def test_dead_letter_after_max_attempts_with_reason(tmp_path):
    box = make(tmp_path, FlakySender(99), max_attempts=3)
    box.enqueue("k", "dicom", "pacs", {})
    for _ in range(5):
        box.deliver_due()
    item = box.items()[0]
    assert item["status"] == "dead" and item["attempts"] == 3
    assert "ConnectionRefusedError: destination down" in item["last_error"]


def test_backoff_delays_the_next_attempt(tmp_path):
    box = Outbox(Store(tmp_path / "db.sqlite3"), {"dicom": FlakySender(1)}, backoff_base_s=60.0)
    box.enqueue("k", "dicom", "pacs", {})
    box.deliver_due()
    assert box.deliver_due() == 0  # not due for a minute
    assert box.items()[0]["status"] == "pending"


def test_pending_items_survive_a_restart(tmp_path):
    make(tmp_path, FlakySender(99)).enqueue("k", "dicom", "pacs", {"x": 1})
    sender = FlakySender(0)
    assert make(tmp_path, sender).deliver_due() == 1
    assert sender.sent == [("pacs", {"x": 1})]


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="`kind` must be one of"):
        make(tmp_path, FlakySender(0)).enqueue("k", "fax", "x", {})


def test_a_permanent_failure_is_dead_at_once_with_the_peers_reason(tmp_path):
    attempts = []

    def refusing(destination: str, payload: dict) -> None:
        attempts.append(destination)
        raise PermanentDeliveryError("PACS answered C-STORE with status 0xA900: wrong SOP class")

    box = make(tmp_path, refusing, max_attempts=100)
    box.enqueue("k", "dicom", "pacs", {})
    for _ in range(3):
        box.deliver_due()
    item = box.items()[0]
    assert (item["status"], item["attempts"], len(attempts)) == ("dead", 1, 1)
    assert item["last_error"] == "PermanentDeliveryError: PACS answered C-STORE with status 0xA900: wrong SOP class"
    assert box.retry(["k"]) == 1 and box.items()[0]["status"] == "pending"  # back after a fix


def test_a_transient_failure_waits_for_retry_after(tmp_path):
    def busy(destination: str, payload: dict) -> None:
        raise TransientDeliveryError("FHIR server answered 429 Too Many Requests", retry_after_s=90)

    box = make(tmp_path, busy, max_attempts=100)
    box.enqueue("k", "dicom", "pacs", {})
    before = time.time()
    box.deliver_due()
    item = box.items()[0]
    assert (item["status"], item["attempts"]) == ("pending", 1)
    assert item["next_attempt_at"] >= before + 90 and box.deliver_due() == 0


def test_defaults_come_from_the_config_model(tmp_path):
    box = Outbox(Store(tmp_path / "db.sqlite3"), {"dicom": FlakySender(0)})
    defaults = OutboxConfig()
    assert (box.max_attempts, box.backoff_base_s, box.backoff_max_s) == (
        defaults.max_attempts, defaults.backoff_base_s, defaults.backoff_max_s)


def test_delivery_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="`reason` must be a non-empty string, '' is given"):
        PermanentDeliveryError("")
    with pytest.raises(ValueError, match="`retry_after_s` must be null or >= 0, -1 is given"):
        TransientDeliveryError("busy", retry_after_s=-1)
    assert TransientDeliveryError("busy", retry_after_s=1e9).retry_after_s == MAX_RETRY_AFTER_S
    assert bounded_reason("a\nb\x00c  d", limit=6) == "a b c…"
