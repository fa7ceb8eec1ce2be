"""Which CDS Clients may call the CDS Hooks service: the JWT each request carries, checked with PyJWT.

CDS Hooks 2.0, "Trusting CDS Clients" (https://cds-hooks.hl7.org/2.0/#trusting-cds-clients): the
client sends ``Authorization: Bearer <JWT>``, signed with its private key (JWS algorithm ES384 or
RS384); the service knows each client's ``iss`` and its public keys (a JWK Set URL, a JWK Set file
or a PEM public key, ``cds.issuers``).  The claims the specification requires are checked:

- ``iss``: one of the configured issuers;
- ``aud``: the CDS Service endpoint URL that was called (``http.public_base_url`` + path);
- ``exp`` (not passed), ``iat`` and ``jti`` present, and ``exp - iat`` at most
  ``cds.max_token_lifetime_s`` (the specification recommends five minutes);
- ``jti``: not seen before from the same issuer while the token lives (replay).

The ``jku`` header is never followed: keys come only from the configuration.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jwt

#: CDS Hooks 2.0 "Trusting CDS Clients": the JWT "MUST be signed using ... ES384 or RS384".
ALGORITHMS = ("ES384", "RS384")
#: Claims every client JWT carries (CDS Hooks 2.0, table "JSON Web Token claims").
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
#: Clock skew allowed between client and service.
LEEWAY_S = 30
#: Seconds the keys read from a JWK Set URL are reused.
JWKS_CACHE_S = 600


class UntrustedClient(Exception):
    """The request's JWT is missing, malformed, badly signed, expired or from an unknown issuer;
    the message says which (it becomes the 401's reason)."""


@dataclass(frozen=True)
class Issuer:
    """One trusted CDS Client: its ``iss`` and one source of its public keys."""

    iss: str
    jwks_url: str | None = None
    jwks_file: Path | None = None
    public_key_file: Path | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("jwks_url", "jwks_file", "public_key_file") if getattr(self, k) is not None]
        if not self.iss or len(given) != 1:
            raise ValueError(f"an issuer needs an iss and exactly one key source, iss {self.iss!r} "
                             f"with {given or 'none'} is given")

    @classmethod
    def of(cls, section: Any) -> "Issuer":
        """From a ``cds.issuers`` entry (:class:`serving.config.CdsIssuer`)."""
        return cls(section.iss, section.jwks_url, section.jwks_file, section.public_key_file)


@dataclass(frozen=True)
class CdsClient:
    """Who called: the issuer and, when the JWT names them, its ``sub`` (client id) and ``tenant``."""

    iss: str
    subject: str | None
    tenant: str | None
    jti: str


class ClientTrust:
    """Check CDS Clients' JWTs against ``issuers`` (see the module docstring)."""

    def __init__(self, issuers: Iterable[Issuer], max_token_lifetime_s: int = 300,
                 fetch_timeout_s: float = 5.0) -> None:
        if max_token_lifetime_s <= 0:
            raise ValueError(f"max_token_lifetime_s must be positive, {max_token_lifetime_s} is given")
        self.issuers = {i.iss: i for i in issuers}
        self.max_token_lifetime_s = max_token_lifetime_s
        self.fetch_timeout_s = fetch_timeout_s
        self._jwks_clients: dict[str, jwt.PyJWKClient] = {}
        self._seen: dict[tuple[str, str], float] = {}  # (iss, jti) -> exp
        self._lock = threading.Lock()

    @classmethod
    def of(cls, cds_config: Any) -> "ClientTrust":
        """From the ``cds`` section (:class:`serving.config.CdsConfig`)."""
        return cls([Issuer.of(i) for i in cds_config.issuers], cds_config.max_token_lifetime_s,
                   cds_config.fhir_timeout_s)

    def verify(self, authorization: str | None, audience: str | list[str]) -> CdsClient:
        """The client of a request's ``Authorization`` header, called at ``audience`` (the endpoint
        URL, or a list of the URLs it may name).

        Raises
        ------
        UntrustedClient
            No bearer JWT; not a JWS; an algorithm other than ES384/RS384; an unknown ``iss``; no
            key for its ``kid``; a bad signature; ``aud`` not ``audience``; expired; a required
            claim missing; a lifetime over ``max_token_lifetime_s``; a ``jti`` already used.
        """
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise UntrustedClient("a CDS Client JWT is required as Authorization: Bearer <JWT>")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise UntrustedClient(f"the bearer token is not a JWS: {exc}") from None
        if header.get("alg") not in ALGORITHMS:
            raise UntrustedClient(f"the JWT must be signed with one of {ALGORITHMS}, {header.get('alg')!r} is given")
        iss = claims.get("iss")
        issuer = self.issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise UntrustedClient(f"issuer {str(iss)[:120]!r} is not a trusted CDS Client")
        key = self._key(issuer, header.get("kid"))
        try:
            verified = jwt.decode(token, key, algorithms=list(ALGORITHMS), audience=audience, issuer=issuer.iss,
                                  leeway=LEEWAY_S, options={"require": list(REQUIRED_CLAIMS)})
        except jwt.ExpiredSignatureError:
            raise UntrustedClient("the JWT has expired (exp)") from None
        except jwt.InvalidAudienceError:
            raise UntrustedClient(f"the JWT's aud must be this service's URL ({audience!r}), "
                                  f"{str(claims.get('aud'))[:200]!r} is given") from None
        except jwt.PyJWTError as exc:
            raise UntrustedClient(f"the JWT is not valid: {exc}") from None
        lifetime = float(verified["exp"]) - float(verified["iat"])
        if lifetime > self.max_token_lifetime_s:
            raise UntrustedClient(f"the JWT may live at most {self.max_token_lifetime_s} s (exp - iat), "
                                  f"{lifetime:.0f} s is given")
        self._check_replay(issuer.iss, str(verified["jti"]), float(verified["exp"]))
        return CdsClient(issuer.iss, verified.get("sub"), verified.get("tenant"), str(verified["jti"]))

    def _key(self, issuer: Issuer, kid: str | None) -> Any:
        try:
            if issuer.public_key_file is not None:
                return Path(issuer.public_key_file).read_bytes()
            if issuer.jwks_file is not None:
                keys = jwt.PyJWKSet.from_json(Path(issuer.jwks_file).read_text(encoding="utf-8"))
                return _pick(keys.keys, kid, issuer.iss).key
            client = self._jwks_client(issuer.jwks_url)
            return _pick(client.get_jwk_set().keys, kid, issuer.iss).key
        except UntrustedClient:
            raise
        except (OSError, json.JSONDecodeError, jwt.PyJWTError) as exc:
            raise UntrustedClient(f"the keys of issuer {issuer.iss!r} could not be read: {exc}") from None

    def _jwks_client(self, url: str) -> jwt.PyJWKClient:
        with self._lock:
            if url not in self._jwks_clients:
                self._jwks_clients[url] = jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=JWKS_CACHE_S,
                                                          timeout=self.fetch_timeout_s)
            return self._jwks_clients[url]

    def _check_replay(self, iss: str, jti: str, exp: float) -> None:
        now = time.time()
        with self._lock:
            for key in [k for k, until in self._seen.items() if until + LEEWAY_S < now]:
                del self._seen[key]
            if (iss, jti) in self._seen:
                raise UntrustedClient(f"the JWT's jti {jti[:80]!r} was already used (replay)")
            self._seen[(iss, jti)] = exp


def _pick(keys: list, kid: str | None, iss: str) -> Any:
    """The key of ``kid`` in a JWK Set (the only one when the set has one and no kid is given)."""
    if kid is None and len(keys) == 1:
        return keys[0]
    for key in keys:
        if key.key_id == kid:
            return key
    raise UntrustedClient(f"issuer {iss!r} has no key with kid {str(kid)[:80]!r}")
