"""The HL7 listener on a real socket, over the server's store and a vitals bridge that is not connected."""
from __future__ import annotations

import pytest

from hl7_fixtures import Settings
from iomt.bridge import VitalsBridge
from iomt.hl7.wiring import build_listener
from serving.store import Store


@pytest.fixture
def hl7_server(tmp_path):
    """(listener, bridge, store): the listener shares the bridge's device registry, as the server wires it."""
    store = Store(tmp_path / "db.sqlite3")
    bridge = VitalsBridge("127.0.0.1", 1, topic_prefix="medgate", store=store.vitals)
    listener = build_listener(Settings(), store.vitals, registry=bridge.registry)
    listener.start()
    try:
        yield listener, bridge, store
    finally:
        listener.stop()
        store.close()
