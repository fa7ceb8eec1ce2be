"""Fixture messages and settings of the HL7 listener tests."""
from __future__ import annotations

from pathlib import Path

from iomt.config import Hl7Config, IomtConfig, MqttConfig

MESSAGES = Path(__file__).parent / "messages"


def message(name: str) -> bytes:
    """A fixture message as sent: segments ended by 0x0D."""
    return (MESSAGES / name).read_bytes()


class Settings:
    """The sections :func:`iomt.hl7.wiring.build_listener` reads, without the server's."""

    def __init__(self, **hl7) -> None:
        self.hl7 = Hl7Config(**{"port": 0, **hl7})
        self.iomt, self.mqtt = IomtConfig(), MqttConfig()
        self.fhir = type("Fhir", (), {"base_url": None})()
