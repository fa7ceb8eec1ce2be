"""The intake: one place turns every failure into an ACK; ids from outside are shown only when plain."""
from __future__ import annotations

import hl7

from hl7_fixtures import message
from iomt.hl7.intake import label


def test_ids_from_outside_are_shown_plain_or_hashed():
    assert label("BVDK_HN") == "BVDK_HN"
    for unsafe in ("ICU GW", "ICU\u202eGW", "x" * 65, ""):
        shown = label(unsafe)
        assert shown.startswith("#") and len(shown) == 13


def test_an_unexpected_failure_is_an_ae_207_and_nothing_is_stored(hl7_server, monkeypatch):
    listener, _, store = hl7_server
    intake = listener.intake

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(intake.adt, "apply", broken)
    reply = hl7.parse(intake.handle(message("adt_a01_admit.hl7"), "127.0.0.1:1"))
    assert str(reply.segment("MSA")[1]) == "AE" and str(reply.segment("ERR")[3][0][0]) == "207"
    assert store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0001") is None and not store.resources("Patient")
    assert store.vitals.dead_letters()[0]["source"] == "hl7:BVDK_HN/HIS"
    monkeypatch.undo()  # a resend once it is fixed is applied
    assert b"MSA|AA|ADT0001" in intake.handle(message("adt_a01_admit.hl7"), "127.0.0.1:1")


def test_receipts_older_than_the_dedup_window_are_deleted(hl7_server):
    listener, _, store = hl7_server
    intake = listener.intake
    assert b"MSA|AA" in intake.handle(message("adt_a01_admit.hl7"))
    assert store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0001") is not None
    intake.dedup_window_s, intake._pruned_at = 1e-9, 0.0  # the next message prunes everything before it
    assert b"MSA|AA" in intake.handle(message("adt_a02_transfer.hl7"))
    assert store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0001") is None
    assert store.vitals.hl7_receipt("BVDK_HN", "HIS", "ADT0002") is not None
