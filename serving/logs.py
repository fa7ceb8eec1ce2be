"""Logging set-up shared by the CLI commands."""
from __future__ import annotations

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "amqtt", "transitions", "filelock", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
