"""``medgate outbox list|retry``: look at the delivery outbox and put dead letters back.

Works on the configured store (the SQLite store under ``state_dir``, or PostgreSQL at
``store.url``) while the server runs or not; a running server's outbox worker picks retried
items up within its poll interval.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, TextIO

from kernel.database import open_database
from serving.config import Settings
from serving.delivery.outbox_db import open_outbox_db
from serving.store import Store

STATUSES = ("pending", "sent", "dead", "relayed")
#: Longest ``last_error`` shown in the table (the JSON output has all of it).
ERROR_WIDTH = 60


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``outbox list`` and ``outbox retry`` to the ``medgate`` parser."""
    outbox = sub.add_parser("outbox", help="list outbox items or retry dead letters").add_subparsers(
        dest="outbox_command", required=True)
    listing = outbox.add_parser("list", help="items with status, attempts and last error")
    listing.add_argument("--status", choices=STATUSES, help="only items with this status")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    retry = outbox.add_parser("retry", help="put dead items back to pending (attempts reset)")
    retry.add_argument("keys", nargs="*", help="idempotency keys to retry (default: every dead item)")


def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_items(settings: Settings, status: str | None = None, as_json: bool = False,
               out: TextIO = sys.stdout) -> int:
    """Print the outbox items (oldest first); returns 0."""
    with _open(settings) as db:
        items = db.items(status)
    if as_json:
        for item in items:
            print(json.dumps({k: v for k, v in asdict(item).items() if k != "payload"}), file=out)
        return 0
    print(f"{'status':8} {'att':>3} {'kind':5} {'destination':24} {'created':20} key / last error", file=out)
    for item in items:
        error = (item.last_error or "")[:ERROR_WIDTH]
        print(f"{item.status:8} {item.attempts:>3} {item.kind:5} {item.destination[:24]:24} "
              f"{_when(item.created_at):20} {item.key}" + (f"\n{'':63}{error}" if error else ""),
              file=out)
    counts: dict[str, int] = {}
    for item in items:
        counts[item.status] = counts.get(item.status, 0) + 1
    print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "outbox is empty", file=out)
    return 0


def retry_items(settings: Settings, keys: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    """Put dead items back to pending; returns 0 when at least one was, 1 otherwise."""
    with _open(settings) as db:
        count = db.retry(keys or None)
    print(f"{count} dead item(s) back to pending", file=out)
    return 0 if count else 1


class _open:
    """The configured outbox backend, closed on exit (with the SQLite store it uses)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store | None = None
        self.db: Any = None

    def __enter__(self):
        self.store = Store(open_database(self.settings.store_location))
        self.db = open_outbox_db(self.settings.store.url, self.store)
        return self.db

    def __exit__(self, *exc: object) -> None:
        self.db.close()
        self.store.close()


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Dispatch ``medgate outbox ...``."""
    if args.outbox_command == "list":
        return list_items(settings, args.status, args.json)
    return retry_items(settings, args.keys)
