"""Bearer-token authentication and the role matrix of the HTTP API.

Every request except the health checks and the dashboard's static files carries a bearer token
(``Authorization: Bearer <token>``; the dashboard's GET requests may carry it in the HttpOnly
session cookie instead, see docs/security.md).  An :class:`Authenticator` turns a token into a
:class:`Principal` (name and role) or None; :func:`required_roles` says which roles may call a
path.  :class:`StaticTokens` checks the tokens of ``auth.tokens``; an OIDC verifier (JWT signature,
issuer, audience, a role claim) implements the same one-method interface.

Tokens are kept only as SHA-256 digests once loaded, compared in constant time, and never logged.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

ROLES = ("clinician", "radiologist", "nurse", "engineer", "admin")
#: Where the generated first-start admin token lives, relative to ``state_dir``.
ADMIN_TOKEN_FILE = Path("auth") / "admin.token"
SESSION_COOKIE = "medgate_session"

PUBLIC = frozenset()
ANY_ROLE = frozenset(ROLES)
CLINICAL = frozenset({"clinician", "radiologist", "nurse", "admin"})
TECHNICAL = frozenset({"engineer", "admin"})
ADMIN = frozenset({"admin"})

#: (path prefix, roles allowed); the first matching prefix wins; exact match for "/".
ROLE_MATRIX: tuple[tuple[str, frozenset[str]], ...] = (
    ("/healthz", PUBLIC),
    ("/readyz", PUBLIC),
    ("/cds-services", PUBLIC),          # the calling EHR's JWT is checked by the service (serving/cds)
    ("/dashboard/", PUBLIC),            # static HTML/JS/CSS, no patient data
    ("/v1/session", ANY_ROLE),
    ("/v1/whoami", ANY_ROLE),
    ("/v1/models", ANY_ROLE),
    ("/v1/infer/", ANY_ROLE),
    ("/v1/system", TECHNICAL),
    ("/metrics", TECHNICAL),
    ("/v1/ward", CLINICAL),
    ("/v1/stream/ward", CLINICAL),
    ("/v1/worklist", CLINICAL),
    ("/v1/results/", CLINICAL),
    ("/v1/overlay/", CLINICAL),
    ("/fhir/metadata", ANY_ROLE),
    ("/fhir/SearchParameter", ANY_ROLE),  # definitions the CapabilityStatement points to, no patient data
    ("/fhir/AuditEvent", ADMIN),
    ("/fhir/", CLINICAL),
    ("/dicomweb/", CLINICAL | {"engineer"}),  # STOW-RS in (engineers too); QIDO/WADO reads: clinical roles (dicomweb.py)
    ("/studies", CLINICAL | {"engineer"}),
    ("/openapi.json", TECHNICAL),
)
#: Paths that read patient data: denials there are audited too.
PATIENT_DATA_PREFIXES = ("/v1/ward", "/v1/stream/ward", "/v1/worklist", "/v1/results/", "/v1/overlay/",
                         "/fhir/Observation", "/fhir/DiagnosticReport", "/fhir/RiskAssessment",
                         "/fhir/Flag", "/fhir/Patient", "/fhir/Device", "/fhir/AuditEvent", "/dicomweb/")


def required_roles(path: str) -> frozenset[str]:
    """Roles allowed on ``path``; empty = public. Unlisted paths are admin-only."""
    if path == "/":
        return PUBLIC
    for prefix, roles in ROLE_MATRIX:
        if path == prefix.rstrip("/") or path.startswith(prefix):
            return roles
    return ADMIN


def is_patient_data(path: str) -> bool:
    return path.startswith(PATIENT_DATA_PREFIXES)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a display name and one role."""

    name: str
    role: str


class Authenticator(Protocol):
    """Turns a presented credential into a :class:`Principal`, or None when it is not valid."""

    def authenticate(self, token: str) -> Principal | None: ...


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class StaticTokens:
    """Static tokens from ``auth.tokens``: ``[(sha256 hex digest, role, name), ...]``."""

    def __init__(self, entries: Iterable[tuple[str, str, str]]) -> None:
        self._entries = []
        for token_digest, role, name in entries:
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}, {role!r} is given for {name!r}")
            self._entries.append((bytes.fromhex(token_digest), Principal(name, role)))
        if not self._entries:
            raise ValueError("entries must name at least one token; none is given")

    def authenticate(self, token: str) -> Principal | None:
        if not token:
            return None
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for known, principal in self._entries:  # no early exit: constant time over the list
            if hmac.compare_digest(known, presented):
                found = principal
        return found


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def ensure_admin_token(state_dir: Path) -> tuple[str, bool]:
    """The first-start admin token under ``state_dir`` (created 0600 when missing).

    Returns ``(token, created)``.
    """
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip(), False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, True


def read_admin_token(state_dir: Path) -> str | None:
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def token_digests(settings) -> list[tuple[str, str, str]]:
    """``(digest, role, name)`` of the configured tokens, else of the generated admin token."""
    entries = [(digest(t.token), t.role, t.name) for t in settings.auth.tokens]
    if not entries:
        token = read_admin_token(settings.state_dir)
        if token:
            entries = [(digest(token), "admin", "admin (generated)")]
    return entries


def client_token(settings) -> str | None:
    """A token local tools (``medgate demo``, tests) can use: the first admin, else any configured."""
    for entry in sorted(settings.auth.tokens, key=lambda t: t.role != "admin"):
        return entry.token
    return read_admin_token(settings.state_dir)
