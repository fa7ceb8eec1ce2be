"""``medgate status``: one summary of a server's health, for people (a table) or scripts (``--json``).

From the HTTP API: readiness and its checks (``/readyz``), the deployed models and versions and the
uptime (``/v1/system``, or ``/v1/models`` for a token without the engineer role).  From the state
directory, read-only: the server's own status file (:mod:`serving.components`: uptime, MQTT bridge,
heartbeat), studies and completion groups of the gateway ledger, dead letters of the IoMT bridge
and disk space against ``dicom.storage.min_free_bytes``; from the configured outbox backend
(SQLite or PostgreSQL) its items per destination and state.

Exit status 0 when healthy; 1 when degraded (not ready, dead outbox items, disk below the
watermark) or when the server does not answer.  ``problems`` say why; ``warnings`` (failed
studies, deliveries being retried, parked messages) do not change the exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, TextIO

from iomt.store import DeadLetterCounts
from kernel.database import open_database
from serving.components import STATUS_STALE_S, read_components
from serving.config import Settings
from serving.delivery.outbox_db import PostgresOutboxDb
from serving.http.auth import client_token
from serving.store import Store

COMMANDS = ("status",)
#: Outbox states, in the order they are shown; ``failed`` is pending after a failed attempt.
OUTBOX_STATES = ("pending", "failed", "dead", "sent", "relayed")
TOKEN_ENV = "MEDGATE_TOKEN"


def get_json(url: str, bearer: str | None = None, timeout_s: float = 10.0) -> tuple[int, Any]:
    """(status, JSON body) of ``GET url``; status 0 when nothing answers."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"} if bearer else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}
    try:
        return status, json.loads(body or b"{}")
    except ValueError:  # e.g. the Serve proxy's plain-text 503 while the app deploys
        return status, {"text": body.decode(errors="replace")}


def add_commands(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="summarise the health of a running server and its state")
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.add_argument("--url", help="HTTP address of the server (default: from http.host/http.port)")
    status.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV}, else the configured one)")
    status.add_argument("--timeout-s", type=float, default=5.0, help="per HTTP request")


# -- gathering ---------------------------------------------------------------------------------
def _server_url(settings: Settings) -> str:
    host = settings.http.host if settings.http.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{settings.http.port}"


def _http(url: str, token: str | None, timeout_s: float) -> dict[str, Any]:
    status, ready = get_json(f"{url}/readyz", timeout_s=timeout_s)
    out: dict[str, Any] = {"url": url, "reachable": status != 0, "ready": None, "checks": {},
                           "models": None, "uptime_s": None, "heartbeat_age_s": None}
    if status == 0:
        return out
    out["ready"] = status == 200 and bool(ready.get("ready"))
    out["checks"] = ready.get("checks", {})
    status, system = get_json(f"{url}/v1/system", token, timeout_s)
    if status == 200:
        out["models"] = [{k: m.get(k) for k in ("name", "version", "engine", "device", "status")}
                         for m in system.get("models", [])]
        out["uptime_s"], out["heartbeat_age_s"] = system.get("uptime_s"), system.get("heartbeat_age_s")
        return out
    status, models = get_json(f"{url}/v1/models", token, timeout_s)
    if status == 200:
        out["models"] = [{**{k: m.get(k) for k in ("name", "version", "engine", "device")}, "status": "ok"}
                         for m in models]
    else:
        out["models_error"] = f"GET /v1/models answered {status} (give a token: --token or ${TOKEN_ENV})"
    return out


def _process(state_dir: Path, now: float) -> dict[str, Any]:
    status = read_components(state_dir)
    if not status:
        return {"running": False}
    heartbeat_age = now - status.get("heartbeat", 0)
    started = status.get("started_at")
    return {"running": heartbeat_age < STATUS_STALE_S, "pid": status.get("pid"),
            "uptime_s": round(now - started) if started else None, "heartbeat_age_s": round(heartbeat_age, 1),
            "components": status.get("components", {})}


def _counted(count: Callable[[], Any], empty: Any) -> Any:
    try:
        return count()
    except sqlite3.OperationalError:  # table not created yet (that part never ran)
        return empty


def _ledger(store: Store) -> dict[str, Any]:
    studies = _counted(store.gateway.status_counts, {})
    groups = _counted(store.gateway.group_counts, {})
    dead = _counted(store.vitals.dead_letter_counts, DeadLetterCounts(0, 0))
    in_progress = studies.get("receiving", 0) + studies.get("complete", 0)
    return {"studies": {"in_progress": in_progress, "by_status": studies}, "groups": groups,
            "dead_letters": {"total": dead.total, "parked": dead.parked}}


def _outbox(settings: Settings, store: Store | None, now: float) -> dict[str, Any]:
    url = settings.store.url
    backend = "postgresql" if url and not url.startswith("sqlite:") else "sqlite"
    try:
        if backend == "postgresql":
            db = PostgresOutboxDb(url, connect_timeout_s=5)
            try:
                rows = db.depth()
            finally:
                db.close()
        elif store is not None:
            rows = _counted(store.outbox.depth, [])
        else:
            rows = []
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return {"backend": backend, "error": f"{type(exc).__name__}: {exc}", "destinations": []}
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        fresh = {"destination": r.destination, "kind": r.kind, **dict.fromkeys(OUTBOX_STATES, 0),
                 "oldest_undelivered_s": None}
        entry = table.setdefault((r.destination, r.kind), fresh)
        entry[r.state] = entry.get(r.state, 0) + r.n
        if r.state in ("pending", "failed", "dead"):
            age = round(now - r.oldest)
            entry["oldest_undelivered_s"] = max(age, entry["oldest_undelivered_s"] or 0)
    totals = {s: sum(e[s] for e in table.values()) for s in OUTBOX_STATES}
    return {"backend": backend, "destinations": list(table.values()), "totals": totals}


def _disk(settings: Settings, state_dir: Path) -> dict[str, Any]:
    spool = state_dir / "spool"
    path = spool if spool.is_dir() else state_dir
    usage = shutil.disk_usage(path)
    watermark = settings.dicom.storage.min_free_bytes
    return {"path": str(path), "total_bytes": usage.total, "free_bytes": usage.free,
            "min_free_bytes": watermark, "ok": usage.free >= watermark}


def gather(settings: Settings, url: str | None = None, token: str | None = None,
           timeout_s: float = 5.0) -> dict[str, Any]:
    """The status report as a dict (what ``--json`` prints)."""
    now = time.time()
    state_dir = settings.state_dir.resolve()
    token = token or os.environ.get(TOKEN_ENV) or client_token(settings)
    server = _http(url or _server_url(settings), token, timeout_s)
    report: dict[str, Any] = {"time": now, "state_dir": str(state_dir), "server": server,
                              "process": _process(state_dir, now)}
    location = settings.store_location  # status never writes
    store = (Store(open_database(location if isinstance(location, str) else location.resolve(), read_only=True))
             if isinstance(location, str) or settings.db_path.is_file() else None)
    try:
        report.update(_ledger(store) if store else {"studies": {"in_progress": 0, "by_status": {}},
                                                    "groups": {}, "dead_letters": {"total": 0, "parked": 0}})
        report["outbox"] = _outbox(settings, store, now)
    finally:
        if store is not None:
            store.close()
    report["disk"] = _disk(settings, state_dir) if state_dir.is_dir() else None
    mqtt = server["checks"].get("mqtt") or report["process"].get("components", {}).get("mqtt")
    report["mqtt_connected"] = None if mqtt is None else mqtt == "ok"
    uptime = server["uptime_s"]
    report["uptime_s"] = uptime if uptime is not None else report["process"].get("uptime_s")
    report["problems"], report["warnings"] = _judge(report)
    report["healthy"] = not report["problems"]
    return report


def _judge(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    problems, warnings = [], []
    server = report["server"]
    if not server["reachable"]:
        problems.append(f"server does not answer at {server['url']}")
    elif not server["ready"]:
        failing = [f"{k} {v}" for k, v in server["checks"].items() if v != "ok"]
        problems.append("not ready: " + (", ".join(failing) or "readyz answered not ready"))
    outbox = report["outbox"]
    if outbox.get("error"):
        problems.append(f"outbox ({outbox['backend']}) cannot be read: {outbox['error']}")
    dead = outbox.get("totals", {}).get("dead", 0)
    if dead:
        problems.append(f"{dead} dead outbox item(s): see `medgate outbox list --status dead`")
    disk = report["disk"]
    if disk and not disk["ok"]:
        problems.append(f"{_bytes(disk['free_bytes'])} free in {disk['path']}, below the "
                        f"{_bytes(disk['min_free_bytes'])} watermark: new studies are refused")
    failed = outbox.get("totals", {}).get("failed", 0)
    if failed:
        warnings.append(f"{failed} outbox item(s) being retried after a failed delivery")
    failed_studies = report["studies"]["by_status"].get("failed", 0)
    if failed_studies:
        warnings.append(f"{failed_studies} stud{'y' if failed_studies == 1 else 'ies'} failed in the pipeline")
    parked = report["dead_letters"]["parked"]
    if parked:
        warnings.append(f"{parked} MQTT message(s) parked for devices without an admission")
    if server.get("models_error"):
        warnings.append(server["models_error"])
    return problems, warnings


# -- rendering ---------------------------------------------------------------------------------
def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"


def render(report: dict[str, Any]) -> str:
    """The human-readable table."""
    server, process, outbox = report["server"], report["process"], report["outbox"]
    lines = [f"medgate status: {'HEALTHY' if report['healthy'] else 'DEGRADED'}"]

    def row(name: str, text: str) -> None:
        lines.append(f"  {name:<13} {text}")

    if server["reachable"]:
        pid = f", pid {process['pid']}" if process.get("pid") else ""
        row("server", f"{server['url']} {'ready' if server['ready'] else 'NOT READY'}, "
                      f"up {_duration(report['uptime_s'])}{pid}")
        row("checks", ", ".join(f"{k} {v}" for k, v in server["checks"].items()) or "-")
    else:
        heartbeat = process.get("heartbeat_age_s")
        row("server", f"{server['url']} does not answer"
                      + (f" (status file: last heartbeat {heartbeat} s ago)" if heartbeat is not None else ""))
    for n, m in enumerate(server.get("models") or []):
        row("models" if n == 0 else "", f"{m['name']} {m.get('version') or '?'}"
            + (f" ({m['engine']}, {m['device']})" if m.get("engine") else "")
            + ("" if m.get("status") in (None, "ok") else f" {m['status']}"))
    mqtt = report["mqtt_connected"]
    row("mqtt bridge", "-" if mqtt is None else "connected" if mqtt else "NOT CONNECTED")
    studies = report["studies"]
    row("studies", f"{studies['in_progress']} in progress; {_counts(studies['by_status'])}")
    row("dead letters", f"{report['dead_letters']['total']} ({report['dead_letters']['parked']} parked)")
    disk = report["disk"]
    if disk:
        row("disk", f"{_bytes(disk['free_bytes'])} free of {_bytes(disk['total_bytes'])} in {disk['path']}; "
                    f"watermark {_bytes(disk['min_free_bytes'])}: {'ok' if disk['ok'] else 'BELOW'}")
    if outbox.get("error"):
        row("outbox", f"{outbox['backend']}: {outbox['error']}")
    else:
        row("outbox", f"{outbox['backend']}; " + (
            "empty" if not outbox["destinations"] else _counts({k: v for k, v in outbox["totals"].items() if v})))
        if outbox["destinations"]:
            header = f"{'destination':<32} {'kind':<5}" + "".join(f" {s:>7}" for s in OUTBOX_STATES[:4])
            lines.append(f"    {header}  oldest undelivered")
            for e in outbox["destinations"]:
                counts = "".join(f" {e[s]:>7}" for s in OUTBOX_STATES[:4])
                lines.append(f"    {e['destination'][:32]:<32} {e['kind']:<5}{counts}  "
                             f"{_duration(e['oldest_undelivered_s'])}")
    for label, items in (("problem", report["problems"]), ("warning", report["warnings"])):
        for item in items:
            row(label, item)
    return "\n".join(lines)


def run(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """``medgate status``: print the report; 0 when healthy, 1 otherwise."""
    report = gather(settings, args.url, args.token, args.timeout_s)
    print(json.dumps(report, indent=2) if args.json else render(report), file=out)
    return 0 if report["healthy"] else 1
