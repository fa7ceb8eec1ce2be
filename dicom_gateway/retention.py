"""Spool housekeeping: retention of processed studies and the free-space watermark.

Retention deletes studies whose processing has ended (store status ``done`` or ``unrouted``), or
whose instances were all refused at intake (``refused``: a row and no files), and
that were last updated more than ``retention_days`` ago: their spool folder, instance rows and
gateway bookkeeping.  Studies still ``receiving``, ``complete`` (waiting for or in the pipeline) or
``failed`` (an operator should look) are never deleted.  Results stay.

The watermark refuses work instead of filling the disk: below ``min_free_bytes`` free in the
spool's file system, new associations are rejected (A-ASSOCIATE-RJ transient, local limit exceeded)
and C-STORE answers Out of Resources (0xA700).
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from dicom_gateway.ledger import gateway_of
from dicom_gateway.uids import check_uid, inside

log = logging.getLogger("medgate.dicom")

#: Store statuses whose studies may be deleted by retention.
PROCESSED_STATUSES = ("done", "unrouted", "refused")
SECONDS_PER_DAY = 86400.0


def free_bytes(path: Path) -> int:
    """Free bytes available to us in the file system holding ``path`` (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(path).free


def below_watermark(path: Path, min_free_bytes: int) -> str | None:
    """None when there is room, else the reason (for the log and the refusal)."""
    free = free_bytes(path)
    if free < min_free_bytes:
        return f"only {free} bytes free in {path}, below dicom.storage.min_free_bytes={min_free_bytes}"
    return None


def purge_processed(store, spool: Path, retention_days: float, now: float | None = None) -> list[str]:
    """Delete processed studies older than ``retention_days``; returns their UIDs."""
    if retention_days <= 0:
        raise ValueError(f"`retention_days` must be positive, {retention_days!r} is given.")
    cutoff = (time.time() if now is None else now) - retention_days * SECONDS_PER_DAY
    gateway = gateway_of(store)
    purged = []
    for study in gateway.studies_before(PROCESSED_STATUSES, cutoff):
        if not gateway.delete_study(study, PROCESSED_STATUSES):
            continue  # changed meanwhile (a new instance arrived)
        try:  # a study UID names a folder only when it is a UID and the folder lies inside the spool
            shutil.rmtree(inside(spool, check_uid("StudyInstanceUID", study)), ignore_errors=True)
        except ValueError as exc:
            log.warning("retention: rows of study %s deleted, no folder removed: %s", study, exc)
        purged.append(study)
    if purged:
        log.info("retention: deleted %d processed stud%s older than %g days", len(purged),
                 "y" if len(purged) == 1 else "ies", retention_days)
    return purged
