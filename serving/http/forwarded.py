"""The client's address and scheme behind reverse proxies, trusting only configured proxies.

A request's socket peer is its client unless that peer is one of ``http.trusted_proxies``
(addresses or CIDR networks).  Only then are ``Forwarded`` (RFC 7239) or, when that is absent,
``X-Forwarded-For`` / ``X-Forwarded-Proto`` read, right to left: each trusted proxy appends the
address it received from, so the client is the right-most address that is not itself a trusted
proxy.  Anyone can write these headers, so from any other peer (loopback included) they are
ignored.

Ray Serve's HTTP proxy is uvicorn, which by default rewrites the ASGI ``client`` from
``X-Forwarded-For`` when the peer is loopback (``FORWARDED_ALLOW_IPS``, default
``127.0.0.1,::1``).  :data:`UVICORN_TRUST_NONE` is set in that variable before Ray starts
(``serving.server``), so the ingress sees the socket peer and this module alone decides.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable, Mapping

#: ``FORWARDED_ALLOW_IPS`` value under which uvicorn trusts no peer (no address equals it).
UVICORN_TRUST_NONE = "none"
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: RFC 7239 4: ``for=`` of one forwarded-element, a token or a quoted string.
_FOR = re.compile(r'(?i)(?:^|;)\s*for\s*=\s*("[^"]*"|[^;,\s]*)')
_PROTO = re.compile(r'(?i)(?:^|;)\s*proto\s*=\s*("[^"]*"|[^;,\s]*)')


def parse_networks(entries: Iterable[str]) -> tuple[_Network, ...]:
    """``trusted_proxies`` entries (``10.0.0.5``, ``10.0.0.0/8``, ``::1``) as networks.

    Raises ValueError naming the entry that is neither an address nor a network.
    """
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy must be an IP address or CIDR network, {entry!r} is given") \
                from None
    return tuple(networks)


def _address(node: str) -> str | None:
    """The IP address of an RFC 7239 node or an X-Forwarded-For entry, without port; None if none."""
    node = node.strip().strip('"')
    if node.startswith("["):  # [v6]:port
        node = node[1:node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:  # v4:port
        node = node.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        return None  # "unknown", an obfuscated identifier (RFC 7239 6.3) or garbage


def _trusted(address: str | None, networks: tuple[_Network, ...]) -> bool:
    if address is None or not networks:
        return False
    ip = ipaddress.ip_address(address)
    return any(ip.version == n.version and ip in n for n in networks)


def _hops(headers: Mapping[str, str]) -> tuple[list[str], str | None]:
    """The addresses the proxies appended (oldest first) and the first hop's scheme."""
    forwarded = headers.get("forwarded")
    if forwarded:
        elements = forwarded.split(",")
        hops = [m.group(1) for m in (_FOR.search(e) for e in elements) if m]
        proto = _PROTO.search(elements[0])
        return hops, proto.group(1).strip('"').lower() if proto else None
    hops = [h for h in (headers.get("x-forwarded-for") or "").split(",") if h.strip()]
    proto = (headers.get("x-forwarded-proto") or "").split(",")[0].strip().lower() or None
    return hops, proto


def client_address(peer: str | None, headers: Mapping[str, str], trusted: tuple[_Network, ...]) -> str | None:
    """The address to audit: ``peer`` unless it is a trusted proxy, else the right-most untrusted hop."""
    if not _trusted(_address(peer) if peer else None, trusted):
        return peer
    hops, _ = _hops(headers)
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return peer  # an unknown hop: the chain cannot be followed past it
        if not _trusted(address, trusted):
            return address
    return _address(hops[0]) if hops else peer


def scheme(peer: str | None, socket_scheme: str, headers: Mapping[str, str],
           trusted: tuple[_Network, ...]) -> str:
    """``https`` when the socket is TLS or a trusted proxy says the client used TLS."""
    if socket_scheme == "https" or not _trusted(_address(peer) if peer else None, trusted):
        return socket_scheme
    _, proto = _hops(headers)
    return proto if proto in ("http", "https") else socket_scheme
