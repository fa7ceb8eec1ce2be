"""What the HTTP routes outside the ingress class share: state directory, authenticator, store,
audit log and model handles of this replica.

The ingress installs one :class:`WebContext` per replica process (:func:`install`); route modules
read it with :func:`current`.  The store and audit connections open on first use.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel.cluster import ClusterStore
from kernel.database import database_path, open_database, store_location
from serving.components import FORGET_NODE_S, STATUS_STALE_S, cluster_checks, cluster_components, read_components
from serving.config import AuthConfig
from serving.delivery.outbox_db import open_outbox_db
from serving.governance.audit import AuditLog
from serving.http import forwarded
from serving.http.auth import Authenticator, Principal, StaticTokens
from serving.http.sessions import SessionStore
from serving.store import Store

log = logging.getLogger("medgate.web")

#: ``auth.cookie_max_age_s``' default (written in :class:`serving.config.AuthConfig` only).
DEFAULT_COOKIE_MAX_AGE_S = AuthConfig().cookie_max_age_s


class _NoTokens:
    """No token is configured: every protected request is refused (fail closed)."""

    def authenticate(self, token: str) -> Principal | None:
        return None


@dataclass
class WebContext:
    """Per-replica state for the HTTP routes."""

    state_dir: Path
    authenticator: Authenticator
    models: dict[str, Any] = field(default_factory=dict)
    cookie_max_age_s: int = DEFAULT_COOKIE_MAX_AGE_S
    #: ``http.trusted_proxies`` as networks: only these peers' forwarding headers are read.
    trusted_proxies: tuple = ()
    #: ``http.public_base_url``: the base of every absolute link the server writes (never the Host header).
    public_base_url: str | None = None
    #: ``store.url``: where the stores and the outbox live (None: the SQLite file; ``postgresql://...``).
    store_url: str | None = None
    #: ``node.lease_s`` when the application was deployed by a node of some roles (the others on
    #: other machines): the server's state is then the cluster table's, not ``components.json``.
    cluster_lease_s: float | None = None
    _store: Any = None
    _cluster: Any = None
    _outbox_db: Any = None
    _audit: Any = None
    _sessions: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def db_path(self) -> Path:
        return database_path(self.state_dir)

    @property
    def location(self) -> str | Path:
        """Where the stores live: ``store.url`` when it is PostgreSQL, else the SQLite file."""
        return store_location(self.store_url, self.state_dir)

    def store(self):
        with self._lock:
            if self._store is None:
                self._store = Store(open_database(self.location))
            return self._store

    def outbox_db(self):
        """The configured outbox backend (:func:`serving.delivery.outbox_db.open_outbox_db`): what
        ``/metrics`` and ``/v1/system`` count and where uploads' deliveries are queued."""
        store = self.store()
        with self._lock:
            if self._outbox_db is None:
                self._outbox_db = open_outbox_db(self.store_url, store)
            return self._outbox_db

    def forget_outbox_db(self) -> None:
        """Drop the backend after a failure; the next use connects again."""
        with self._lock:
            self._outbox_db = None

    def server_status(self) -> dict[str, Any]:
        """The server's components for ``/readyz`` and ``/v1/system``: ``checks`` (name -> ``ok`` or
        what is wrong), ``components`` (for display) and, from ``components.json`` only,
        ``heartbeat`` and ``started_at``.  Blocking (run it off the event loop)."""
        if self.cluster_lease_s is None:  # the single-machine server, beside this replica
            status = read_components(self.state_dir)
            fresh = time.time() - status.get("heartbeat", 0) < STATUS_STALE_S
            checks = {name: state if fresh else "stale" for name, state in status.get("components", {}).items()}
            if not status:
                checks["server"] = "not started"
            return {"checks": checks, "components": status.get("components", {}),
                    "heartbeat": status.get("heartbeat"), "started_at": status.get("started_at")}
        try:
            with self._lock:
                if self._cluster is None:
                    self._cluster = ClusterStore(open_database(self.location))
                cluster = self._cluster
            nodes, now = cluster.nodes(live_within_s=FORGET_NODE_S), cluster.now()
        except Exception as exc:  # noqa: BLE001 - reported as a failed check; reconnect next time
            with self._lock:
                self._cluster = None
            log.warning("the cluster table cannot be read: %s", exc)
            return {"checks": {"cluster": f"error: {type(exc).__name__}"}, "components": {}}
        return {"checks": cluster_checks(nodes, now, self.cluster_lease_s),
                "components": cluster_components(nodes, now, self.cluster_lease_s)}

    def audit(self):
        with self._lock:
            if self._audit is None:
                self._audit = AuditLog(self.location)
            return self._audit

    def sessions(self):
        with self._lock:
            if self._sessions is None:
                self._sessions = SessionStore(self.location)
            return self._sessions

    def still_signed_in(self, request) -> bool:
        """False once the session cookie a request came in with is revoked or expired (a long
        response such as the ward board's stream checks it as it goes); True for bearer tokens."""
        session_id = getattr(request.state, "session_id", None)
        return not session_id or self.sessions().principal(session_id) is not None

    def client_address(self, request) -> str | None:
        """The client's address: the socket peer unless that is a trusted proxy (:mod:`serving.http.forwarded`)."""
        peer = request.client.host if request.client else None
        return forwarded.client_address(peer, request.headers, self.trusted_proxies)

    def scheme(self, request) -> str:
        """``https`` when the client reached us (or a trusted proxy in front) over TLS."""
        peer = request.client.host if request.client else None
        return forwarded.scheme(peer, request.url.scheme, request.headers, self.trusted_proxies)

    def link_base(self) -> str:
        """Where absolute links start: ``public_base_url``, else "" (links relative to this server)."""
        return (self.public_base_url or "").rstrip("/")

    def record(self, request, action: str, outcome: str = "success", **what: str | None) -> None:
        """Audit one access by the request's principal (``anonymous`` when there is none)."""
        principal = getattr(request.state, "principal", None)
        client = self.client_address(request)
        self.audit().record(who=principal.name if principal else "anonymous",
                            role=principal.role if principal else None, action=action,
                            outcome=outcome, client=client, **what)


_current: WebContext | None = None


def build_authenticator(token_digests: list[tuple[str, str, str]]) -> Authenticator:
    if not token_digests:
        log.warning("no API token is configured: every request except health checks gets 401")
        return _NoTokens()
    return StaticTokens(token_digests)


def install(state_dir: str | Path, token_digests: list[tuple[str, str, str]],
            models: dict[str, Any] | None = None, cookie_max_age_s: int = DEFAULT_COOKIE_MAX_AGE_S, *,
            trusted_proxies: list[str] | tuple[str, ...] = (), public_base_url: str | None = None,
            store_url: str | None = None, cluster_lease_s: float | None = None) -> WebContext:
    """Create this process's context (the ingress replica calls it once at start).

    ``trusted_proxies`` and ``public_base_url`` are ``http.trusted_proxies`` and
    ``http.public_base_url`` (:func:`serving.app.build_app` passes them as the ``web`` limits);
    ``store_url`` is ``store.url``, the outbox backend; ``cluster_lease_s`` is ``node.lease_s`` when
    the server's state is the cluster table's (:meth:`WebContext.server_status`).
    """
    global _current
    _current = WebContext(Path(state_dir), build_authenticator(token_digests), dict(models or {}),
                          cookie_max_age_s, forwarded.parse_networks(trusted_proxies), public_base_url, store_url,
                          cluster_lease_s)
    return _current


def current() -> WebContext:
    if _current is None:
        raise RuntimeError("the web context is not installed; the ingress calls install() at start")
    return _current
