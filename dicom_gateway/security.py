"""Who may associate: calling-AE allow-list with source address, the client certificate, and the
DICOM TLS context.

An empty allow-list accepts every calling AE from every address (the called AE title is always
checked, see :class:`dicom_gateway.scp.StorageScp`).  A listed entry allows one calling AE title
from one IP address (``host: "*"`` for any).  The TLS context implements the Secure Transport
Connection Profile (PS3.15 B.1): our certificate and key, TLS 1.2 or later, and client certificates
required and verified when a CA file is given.  With ``match_certificate`` a TLS association's
calling AE title must also be named by its verified client certificate (subject CN or a DNS
subjectAltName, RFC 5280 4.1.2.6 and 4.2.1.6): a certificate issued to one modality cannot
present another's AE title.
"""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


@dataclass(frozen=True)
class AllowedPeer:
    """One calling AE title allowed from ``host`` (an IP address, or ``*`` for any)."""

    ae_title: str
    host: str

    def __post_init__(self) -> None:
        if not self.ae_title.strip():
            raise ValueError(f"`ae_title` must not be empty, {self.ae_title!r} is given.")
        if not self.host.strip():
            raise ValueError(f"`host` must be an IP address or '*', {self.host!r} is given.")


#: A peer certificate as :meth:`ssl.SSLSocket.getpeercert` gives it (empty when none was verified).
Certificate = dict[str, Any]


def certificate_names(certificate: Certificate) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The subject's Common Names and the subjectAltName's DNS names of ``certificate``."""
    common = tuple(value.strip() for rdn in certificate.get("subject", ()) for key, value in rdn
                   if key == "commonName")
    dns = tuple(value.strip() for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")
    return common, dns


class AllowList:
    """Calling AE titles with their source addresses (empty allows everyone) and, with
    ``match_certificate``, the calling AE title named by the client certificate of a TLS association."""

    def __init__(self, peers: Iterable[AllowedPeer] = (), match_certificate: bool = False) -> None:
        self.peers = tuple(peers)
        self.match_certificate = match_certificate

    def reason_to_reject(self, calling_ae: str, address: str, certificate: Certificate | None = None) -> str | None:
        """None when allowed, else a sentence for the log.

        ``certificate`` is the verified client certificate of a TLS association, None for a plain
        one (not checked against the AE title: with ``match_certificate``, configure TLS only).
        """
        calling = calling_ae.strip()
        if self.peers:
            titles = [p for p in self.peers if p.ae_title.strip() == calling]
            if not titles:
                return f"calling AE title {calling!r} is not in dicom.allow"
            if not any(p.host in ("*", address) for p in titles):
                return (f"calling AE title {calling!r} is allowed from {sorted(p.host for p in titles)}, "
                        f"not from {address}")
        if self.match_certificate and certificate is not None:
            common, dns = certificate_names(certificate)
            if calling not in common + dns:
                return (f"calling AE title {calling!r} is not named by the client certificate "
                        f"(CN {list(common)}, DNS subjectAltName {list(dns)}; dicom.tls.match_calling_ae)")
        return None


def tls_context(cert_file: str | Path, key_file: str | Path, ca_file: str | Path | None = None
                ) -> ssl.SSLContext:
    """Server-side TLS context for the DICOM TLS port.

    Raises
    ------
    ValueError
        A file is missing or the certificate and key do not load, naming the file.
    """
    for name, path in (("cert_file", cert_file), ("key_file", key_file), ("ca_file", ca_file)):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"dicom.tls.{name}: file {str(path)!r} does not exist")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except ssl.SSLError as exc:
        raise ValueError(f"dicom.tls: cannot load {cert_file} with {key_file}: {exc}") from None
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
