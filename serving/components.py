"""``state_dir/components.json``: what ``medgate serve`` reports about itself every 2 s.

``heartbeat`` and ``started_at`` (Unix times), ``pid``, ``components`` (``dicom``, ``mqtt``,
``outbox``: ``ok`` or ``down``), ``dicom_port`` and ``ray_address``.  Readers in other processes
(``/readyz``, ``/v1/system``, ``medgate status``, ``medgate models deploy``) treat a heartbeat older
than :data:`STATUS_STALE_S` as a server that is gone.
"""
from __future__ import annotations

import json
from pathlib import Path

#: The status file is stale (its writer is gone) after this long without a heartbeat.
STATUS_STALE_S = 15.0
STATUS_FILE = "components.json"


def read_components(state_dir: Path) -> dict:
    """The last status written under ``state_dir``; empty when there is none."""
    try:
        return json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
