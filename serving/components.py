"""What ``medgate serve`` reports about itself: ``state_dir/components.json`` on each node, and the
cluster table (:mod:`kernel.cluster`) across nodes.

``components.json``, written every 2 s: ``heartbeat`` and ``started_at`` (Unix times), ``pid``,
``node_id``, ``roles``, ``components`` (those of the node's roles among ``dicom``, ``mqtt``,
``outbox``: ``ok`` or ``down``), ``dicom_port`` and ``ray_address``.  Readers in other processes on
the same machine (``/readyz`` and ``/v1/system`` of the single-machine server, ``medgate status``,
``medgate models deploy``) treat a heartbeat older than :data:`STATUS_STALE_S` as a server that is gone.

Where the nodes run some roles each, the ingress runs on another machine than most of them: its
``/readyz`` and ``/v1/system`` read the cluster table instead (:func:`cluster_checks`,
:func:`cluster_components`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from kernel.cluster import Node

#: The status file is stale (its writer is gone) after this long without a heartbeat.
STATUS_STALE_S = 15.0
STATUS_FILE = "components.json"
#: A node of the cluster table silent for this long is no longer counted (it was taken out of
#: service without stopping cleanly); until then its roles count as expected.
FORGET_NODE_S = 24 * 3600.0


def read_components(state_dir: Path) -> dict:
    """The last status written under ``state_dir``; empty when there is none."""
    try:
        return json.loads((Path(state_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def cluster_checks(nodes: Iterable[Node], now: float, lease_s: float) -> dict[str, str]:
    """``/readyz`` checks from the cluster table: ``role:<name>`` is ``ok`` while a node with that role
    heartbeated within ``lease_s`` (database clock ``now``), else ``down``, for each role some node
    recorded (within :data:`FORGET_NODE_S`); ``cluster`` is ``no node`` when none did."""
    live: dict[str, bool] = {}
    for node in nodes:
        if now - node.heartbeat_at > FORGET_NODE_S:
            continue
        for role in node.roles:
            live[role] = live.get(role, False) or now - node.heartbeat_at <= lease_s
    if not live:
        return {"cluster": "no node"}
    return {f"role:{role}": "ok" if up else "down" for role, up in sorted(live.items())}


def cluster_components(nodes: Iterable[Node], now: float, lease_s: float) -> dict[str, str]:
    """``/v1/system``'s components from the cluster table: ``node:<id> (<roles>)`` -> ``ok``, or
    ``stale (<age> s)`` once its heartbeat is older than ``lease_s``."""
    out = {}
    for node in nodes:
        age_s = now - node.heartbeat_at
        if age_s <= FORGET_NODE_S:
            state = "ok" if age_s <= lease_s else f"stale ({age_s:.0f} s)"
            out[f"node:{node.node_id} ({', '.join(node.roles)})"] = state
    return out
