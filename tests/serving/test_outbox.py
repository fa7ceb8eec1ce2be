"""Outbox: persisted before the attempt, idempotent keys, backoff, dead-letter, survives restart."""
from __future__ import annotations

import pytest

from serving.outbox import Outbox
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
