"""The embedded broker is demo only: loopback or nothing, and a warning at every start."""
from __future__ import annotations

import logging

import pytest

from iomt.broker import EmbeddedBroker
from peers import free_port
from serving.config import ConfigError, load_config


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "broker.hospital"])
def test_a_non_loopback_bind_is_refused(host):
    with pytest.raises(ValueError, match="mqtt.embedded_host must be a loopback address"):
        EmbeddedBroker(1883, host)
    with pytest.raises(ConfigError, match=r"mqtt\.embedded_host: .*loopback.*demo only"):
        load_config(mqtt={"embedded_host": host})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_is_accepted(host):
    assert load_config(mqtt={"embedded_host": host}).mqtt.embedded_host == host


def test_start_says_demo_only(caplog):
    broker = EmbeddedBroker(free_port())
    with caplog.at_level(logging.WARNING, logger="medgate.mqtt.broker"):
        broker.start()
    try:
        warning, = [r for r in caplog.records if r.name == "medgate.mqtt.broker"]
        assert warning.levelno == logging.WARNING
        assert "DEMO ONLY: no authentication, no ACL, no TLS" in warning.getMessage()
    finally:
        broker.stop()
