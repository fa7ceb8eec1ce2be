"""The HL7 listener on a real socket, over the server's store and a vitals bridge that is not connected."""
from __future__ import annotations

from pathlib import Path

import pytest

from iomt.bridge import VitalsBridge
from iomt.config import Hl7Config, IomtConfig, MqttConfig
from iomt.hl7.wiring import build_listener
from serving.store import Store

MESSAGES = Path(__file__).parent / "messages"


def message(name: str) -> bytes:
    """A fixture message as sent: segments ended by 0x0D."""
    return (MESSAGES / name).read_bytes()


class _Settings:
    """The sections build_listener reads."""

    def __init__(self, **hl7) -> None:
        self.hl7 = Hl7Config(port=0, **hl7)
        self.iomt, self.mqtt = IomtConfig(), MqttConfig()
        self.fhir = type("Fhir", (), {"base_url": None})()


@pytest.fixture
def hl7_server(tmp_path):
    """(listener, bridge, store): the listener shares the bridge's device registry, as the server wires it."""
    store = Store(tmp_path / "db.sqlite3")
    bridge = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals)
    listener = build_listener(_Settings(), store.vitals, registry=bridge.registry)
    listener.start()
    try:
        yield listener, bridge, store
    finally:
        listener.stop()
        store.close()
