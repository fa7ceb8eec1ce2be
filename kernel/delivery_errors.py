"""Why a delivery failed: permanently (dead-letter at once) or transiently (retry with backoff).

Every outbox sender (:mod:`serving.delivery.outbox`) raises one of these with the peer's reason:

- :class:`PermanentDeliveryError`: the peer refused this payload and would refuse it again (a FHIR
  server answering 4xx other than 408/429, a PACS rejecting the association permanently or answering
  C-STORE with an error status).  The outbox marks the item ``dead`` at once, keeping the reason,
  until ``medgate outbox retry`` puts it back after someone fixed the cause.
- :class:`TransientDeliveryError`: the peer or the network may accept it later (5xx, 408, 429, a
  transient association rejection, an abort, a refused connection, a timeout).  The outbox retries
  with backoff, no sooner than ``retry_after_s`` when the peer said when (HTTP Retry-After).

Any other exception a sender raises counts as transient.  Standard library only, so that the senders
of every layer (``dicom_gateway.scu``, ``serving.delivery.fhir_sender``) can raise them without importing the
outbox.
"""
from __future__ import annotations

import re
from typing import ClassVar

#: A peer's reason is kept to this many characters (it is stored, listed and logged).
MAX_REASON_CHARS = 300
#: A peer's Retry-After is honoured up to this delay; a longer one is cut to it.
MAX_RETRY_AFTER_S = 3600.0
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def bounded_reason(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` on one line, control characters replaced by a space, at most ``limit`` characters
    (an ellipsis marks a cut)."""
    if limit < 2:
        raise ValueError(f"`limit` must be at least 2, {limit} is given.")
    line = " ".join(_CONTROL.sub(" ", str(text)).split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


class DeliveryError(Exception):
    """A delivery failed with ``reason`` (bounded by :func:`bounded_reason`)."""

    #: True when retrying the same payload cannot succeed.
    permanent: ClassVar[bool] = False

    def __init__(self, reason: str) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"`reason` must be a non-empty string, {reason!r} is given.")
        self.reason = bounded_reason(reason)
        super().__init__(self.reason)


class PermanentDeliveryError(DeliveryError):
    """The peer refused the payload; the item goes to dead-letter at once."""

    permanent = True


class TransientDeliveryError(DeliveryError):
    """The peer or the network failed for now; the item is retried with backoff, not before
    ``retry_after_s`` seconds (at most :data:`MAX_RETRY_AFTER_S`) when given."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        if retry_after_s is not None and not retry_after_s >= 0:
            raise ValueError(f"`retry_after_s` must be null or >= 0, {retry_after_s!r} is given.")
        self.retry_after_s = None if retry_after_s is None else min(float(retry_after_s), MAX_RETRY_AFTER_S)
