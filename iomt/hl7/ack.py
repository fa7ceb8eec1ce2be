"""Original-mode acknowledgements (HL7 v2.5.1 section 2.9.2): MSH, MSA and, for AE/AR, ERR.

The ERR segment (section 2.15.5) names what was wrong: ERR-2 Error Location (``PID^1^3``),
ERR-3 HL7 Error Code (CWE of table 0357, ``101^Required field missing^HL70357``), ERR-4
Severity (E, table 0516) and ERR-8 User Message (the reason, escaped).
"""
from __future__ import annotations

import itertools
import os
from datetime import datetime, timezone

from iomt.hl7.message import ERROR_TEXT, AckCode, ErrorCode, Header, Hl7Error

ERROR_TABLE = "HL70357"  # ERR-3.3 name of coding system: HL7 table 0357
SEVERITY_ERROR = "E"  # ERR-4, HL7 table 0516
MAX_TEXT_CHARS = 512  # of ERR-8: the reason, as in a dead letter (iomt.dead_letters)
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))  # section 2.7.1
_counter = itertools.count(1)


def escape(text: str) -> str:
    """``text`` as an HL7 ST value with the default encoding characters (section 2.7.1)."""
    for char, sequence in _ESCAPES:
        text = text.replace(char, sequence)
    return text.replace("\r", " ").replace("\n", " ")


def _control_id() -> str:
    """A control id of our own: at most 20 characters (MSH-10 ST in v2.5)."""
    return f"MG{os.getpid() % 100000:05d}{next(_counter) % 10**13:013d}"


def acknowledgement(header: Header, ack: AckCode, failure: Hl7Error | None = None, *,
                    application: str, facility: str, now: datetime | None = None) -> bytes:
    """The ACK of a message with ``header``: ``ack`` with the ERR of ``failure`` when given."""
    now = now or datetime.now(timezone.utc)
    trigger = escape(header.trigger_event)
    segments = [
        "|".join(["MSH", "^~\\&", escape(application), escape(facility), escape(header.sending_application),
                  escape(header.sending_facility), now.strftime("%Y%m%d%H%M%S%z"), "",
                  f"ACK^{trigger}^ACK" if trigger else "ACK", _control_id(), escape(header.processing_id),
                  escape(header.version)]),
        "|".join(["MSA", AckCode(ack).value, escape(header.control_id)]),
    ]
    if failure is not None:
        text = failure.text if len(failure.text) <= MAX_TEXT_CHARS else failure.text[:MAX_TEXT_CHARS] + "..."
        code = ErrorCode(failure.code)
        segments.append("|".join(["ERR", "", failure.location, f"{code.value}^{ERROR_TEXT[code]}^{ERROR_TABLE}",
                                  SEVERITY_ERROR, "", "", "", escape(text)]))
    return ("\r".join(segments) + "\r").encode("utf-8")
