"""Build the Storage SCP from the validated ``dicom:`` configuration section.

Start-up validation that needs more than the schema happens here: routing rules must name
deployed models, and the TLS files must load.  Errors name the key (``dicom.routes[1]``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from dicom_gateway.completion import StudyCallback
from dicom_gateway.ledger import LOCAL_NODE
from dicom_gateway.routing import rules_from_config
from dicom_gateway.scp import StorageScp
from dicom_gateway.security import AllowedPeer, AllowList, tls_context

log = logging.getLogger("medgate.dicom")


def build_scp(dicom, store, spool: Path, on_study_complete: StudyCallback,
              known_models: Iterable[str] | None = None, *, node_id: str = LOCAL_NODE) -> StorageScp:
    """A :class:`StorageScp` for ``dicom`` (a :class:`dicom_gateway.config.DicomConfig`); ``node_id``:
    this node's id when several share the database and the spool (its pipeline gets the same).

    Raises
    ------
    ValueError
        A route names an unknown model or is invalid, or the TLS certificate/key do not load.
    """
    rules = rules_from_config([r.model_dump(exclude_none=True) for r in dicom.routes], known_models)
    tls = dicom.tls
    allow = AllowList((AllowedPeer(p.ae_title, p.host) for p in dicom.allow),
                      match_certificate=tls is not None and tls.match_calling_ae)
    context = tls_context(tls.cert_file, tls.key_file, tls.ca_file) if tls is not None else None
    if tls is not None and tls.match_calling_ae and not tls.only:
        log.warning("dicom.tls.match_calling_ae is on but dicom.tls.only is off: associations on the "
                    "plain port %d carry no certificate to match", dicom.port)
    return StorageScp(
        dicom.ae_title, dicom.host, dicom.port, store, spool, on_study_complete,
        max_associations=dicom.max_associations, rules=rules, allow=allow,
        tls_port=tls.port if tls is not None else None, ssl_context=context,
        tls_only=tls is not None and tls.only,
        group_by=dicom.completion.group_by, quiet_period_s=dicom.completion.quiet_period_s,
        poll_interval_s=dicom.completion.poll_interval_s, min_free_bytes=dicom.storage.min_free_bytes,
        retention_days=dicom.storage.retention_days, max_pdu_bytes=dicom.max_pdu_bytes,
        fsync=dicom.storage.fsync, slot_pool_bytes=dicom.storage.slot_pool_bytes,
        group_commit=dicom.storage.group_commit, node_id=node_id, lease_s=dicom.completion.lease_s)
