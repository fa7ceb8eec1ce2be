"""One HL7 v2 message: the MSH checks, field access by position, and HL7 date/times.

Parsing is python-hl7's (``hl7.parse``); this module adds what an interface engine must check
before it trusts a message (HL7 v2.5.1 chapter 2, "Control"): the message starts with MSH, the
field separator and the encoding characters (MSH-1, MSH-2) are usable, MSH-9 names a message type
and trigger event this listener handles, MSH-10 names the message, MSH-11 and MSH-12 are values
of HL7 tables 0103 and 0104.  Every refusal is an :class:`Hl7Error` that names the field
(ERR-2, an ERL: ``PID^1^3``) and the HL7 table 0357 error code (ERR-3); :mod:`iomt.hl7.ack`
writes it into the acknowledgement.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from enum import Enum, IntEnum

import hl7
from hl7.exceptions import ParseException

from kernel.text import describe_unsafe


class AckCode(str, Enum):
    """MSA-1 Acknowledgment Code, original mode (HL7 table 0008)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(IntEnum):
    """ERR-3 HL7 Error Code (HL7 v2.5.1 table 0357, "Message error condition codes")."""

    ACCEPTED = 0
    SEGMENT_SEQUENCE_ERROR = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE_ERROR = 102
    TABLE_VALUE_NOT_FOUND = 103
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT_CODE = 201
    UNSUPPORTED_PROCESSING_ID = 202
    UNSUPPORTED_VERSION_ID = 203
    UNKNOWN_KEY_IDENTIFIER = 204
    DUPLICATE_KEY_IDENTIFIER = 205
    APPLICATION_RECORD_LOCKED = 206
    APPLICATION_INTERNAL_ERROR = 207


ERROR_TEXT = {  # HL7 table 0357 descriptions, written as ERR-3.2
    ErrorCode.ACCEPTED: "Message accepted", ErrorCode.SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing", ErrorCode.DATA_TYPE_ERROR: "Data type error",
    ErrorCode.TABLE_VALUE_NOT_FOUND: "Table value not found",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    ErrorCode.UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    ErrorCode.UNSUPPORTED_VERSION_ID: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    ErrorCode.DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    ErrorCode.APPLICATION_RECORD_LOCKED: "Application record locked",
    ErrorCode.APPLICATION_INTERNAL_ERROR: "Application internal error",
}

SEGMENT_SEPARATOR = "\r"  # HL7 v2.5.1 section 2.5.4: segments end with <CR> (0x0D)
FIELD_SEPARATOR = "|"  # MSH-1, recommended value
PROCESSING_IDS = ("P", "D", "T")  # MSH-11.1, HL7 table 0103: production, debugging, training
VERSION_PATTERN = re.compile(r"^2\.[3-9](\.\d{1,2})?$")  # MSH-12.1, HL7 table 0104: 2.3 .. 2.9
SUPPORTED = {"ADT": ("A01", "A02", "A03", "A04", "A08", "A11", "A12", "A13", "A40"), "ORU": ("R01",)}
MAX_CONTROL_ID_CHARS = 199  # MSH-10 ST, HL7 v2.7 length (20 in v2.5)
#: HL7 v2.5.1 section 2.A.22 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
DTM_PATTERN = re.compile(r"^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$", re.ASCII)


class Hl7Error(ValueError):
    """A message this listener will not apply, and how it says so.

    ``ack`` is AE or AR, ``location`` the ERR-2 error location (``PID^1^3``: segment, its
    sequence, field[, repetition, component]), ``code`` the ERR-3 table 0357 code, ``text`` ERR-8.
    """

    def __init__(self, ack: AckCode, code: ErrorCode, location: str, text: str) -> None:
        super().__init__(f"{location}: {text}" if location else text)
        self.ack, self.code, self.location, self.text = AckCode(ack), ErrorCode(code), location, text


def reject(code: ErrorCode, location: str, text: str) -> Hl7Error:
    return Hl7Error(AckCode.REJECT, code, location, text)


def error(code: ErrorCode, location: str, text: str) -> Hl7Error:
    return Hl7Error(AckCode.ERROR, code, location, text)


@dataclass(frozen=True)
class Header:
    """What MSH says about a message; enough to acknowledge it even when the rest is refused."""

    sending_application: str = ""  # MSH-3 HD.1
    sending_facility: str = ""  # MSH-4 HD.1
    control_id: str = ""  # MSH-10
    message_type: str = ""  # MSH-9.1
    trigger_event: str = ""  # MSH-9.2
    processing_id: str = "P"  # MSH-11.1
    version: str = "2.5"  # MSH-12.1

    @property
    def kind(self) -> str:
        return f"{self.message_type}^{self.trigger_event}"


class Message:
    """A parsed message whose MSH passed the checks; field access by position (1-based, as ERR-2).

    ``value("PID", 3, component=4, repetition=2)`` is PID-3, second repetition, CX.4, unescaped;
    "" when absent.
    """

    def __init__(self, parsed: hl7.Message, header: Header, raw: bytes) -> None:
        self.parsed, self.header, self.raw = parsed, header, raw

    def count(self, segment: str) -> int:
        try:
            return len(self.parsed.segments(segment))
        except KeyError:
            return 0

    def value(self, segment: str, field: int, component: int = 1, repetition: int = 1,
              occurrence: int = 1, subcomponent: int = 1) -> str:
        if self.count(segment) < occurrence:
            return ""
        try:
            text = self.parsed.extract_field(segment, occurrence, field, repetition, component, subcomponent)
        except (IndexError, KeyError):
            return ""
        return str(text).strip()

    def repetitions(self, segment: str, field: int, occurrence: int = 1) -> int:
        """How many repetitions the field has (0 when empty)."""
        if self.count(segment) < occurrence:
            return 0
        seg = self.parsed.segments(segment)[occurrence - 1]
        if len(seg) <= field or not str(seg[field]):
            return 0
        content = seg[field]
        return len(content) if content and isinstance(content[0], hl7.containers.Repetition) else 1


def header_of(raw: bytes) -> Header:
    """The header fields of ``raw`` read as plainly as possible (for the ACK of a refused message)."""
    text = raw.decode("utf-8", "replace")
    first = text.split(SEGMENT_SEPARATOR, 1)[0].split("\n", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return Header()
    fields = first.split(first[3])
    part = (lambda i: fields[i - 1].split("^", 1)[0][:MAX_CONTROL_ID_CHARS] if len(fields) >= i else "")
    kind = fields[8].split("^") if len(fields) > 8 else []
    return Header(part(3), part(4), part(10), kind[0] if kind else "", kind[1] if len(kind) > 1 else "",
                  part(11) or "P", part(12) or "2.5")


def _check_separators(text: str) -> None:
    if not text.startswith("MSH"):
        raise reject(ErrorCode.SEGMENT_SEQUENCE_ERROR, "MSH^1",
                     f"a message must start with the MSH segment, {text[:3]!r} is given")
    if len(text) < 8 or text[3] != FIELD_SEPARATOR:
        raise reject(ErrorCode.DATA_TYPE_ERROR, "MSH^1^1",
                     f"the field separator must be {FIELD_SEPARATOR!r}, {text[3:4]!r} is given")
    encoding = text[4:].split(FIELD_SEPARATOR, 1)[0]
    # MSH-2: component, repetition, escape, subcomponent separators (+ truncation, v2.7), distinct,
    # none of them alphanumeric, a space or the field separator
    if len(encoding) not in (4, 5) or len(set(encoding)) != len(encoding) \
            or any(c.isalnum() or c.isspace() or c == FIELD_SEPARATOR for c in encoding):
        raise reject(ErrorCode.DATA_TYPE_ERROR, "MSH^1^2",
                     f"the encoding characters must be 4 distinct separators such as ^~\\&, {encoding!r} is given")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")  # ASCII (the default of MSH-18) and UNICODE UTF-8
    except UnicodeDecodeError as exc:
        raise reject(ErrorCode.DATA_TYPE_ERROR, "MSH^1^18",
                     f"the message is not UTF-8 or ASCII ({exc.reason} at byte {exc.start})") from None


def parse(raw: bytes) -> Message:
    """Parse and check the header of one message (the content of one MLLP block).

    Raises
    ------
    Hl7Error
        AR when MSH is unusable or names a message, processing id or version this listener does
        not take.
    """
    text = _decode(raw).replace("\r\n", SEGMENT_SEPARATOR).replace("\n", SEGMENT_SEPARATOR).strip()
    _check_separators(text)
    unsafe = describe_unsafe(text.replace(SEGMENT_SEPARATOR, ""))
    if unsafe is not None:
        raise reject(ErrorCode.DATA_TYPE_ERROR, "MSH^1",
                     f"the message holds a control or format character, {unsafe} is given")
    try:
        parsed = hl7.parse(text)
    except (ParseException, IndexError, ValueError) as exc:
        raise reject(ErrorCode.SEGMENT_SEQUENCE_ERROR, "MSH^1", f"the message cannot be parsed ({exc})") from None
    message = Message(parsed, Header(), raw)
    get = message.value
    control_id = get("MSH", 10)
    if not control_id:
        raise reject(ErrorCode.REQUIRED_FIELD_MISSING, "MSH^1^10", "MSH-10 Message Control ID is empty")
    if len(control_id) > MAX_CONTROL_ID_CHARS:
        raise reject(ErrorCode.DATA_TYPE_ERROR, "MSH^1^10",
                     f"MSH-10 must be at most {MAX_CONTROL_ID_CHARS} characters, {len(control_id)} are given")
    header = Header(get("MSH", 3), get("MSH", 4), control_id, get("MSH", 9, 1), get("MSH", 9, 2),
                    get("MSH", 11) or "P", get("MSH", 12))
    message.header = header
    if not header.message_type or not header.trigger_event:
        raise reject(ErrorCode.REQUIRED_FIELD_MISSING, "MSH^1^9",
                     f"MSH-9 must name a message type and a trigger event, {get('MSH', 9)!r} is given")
    if header.message_type not in SUPPORTED:
        raise reject(ErrorCode.UNSUPPORTED_MESSAGE_TYPE, "MSH^1^9^1^1",
                     f"message type {header.message_type!r} is not taken (only {', '.join(SUPPORTED)})")
    if header.trigger_event not in SUPPORTED[header.message_type]:
        raise reject(ErrorCode.UNSUPPORTED_EVENT_CODE, "MSH^1^9^1^2",
                     f"trigger event {header.kind!r} is not taken (only "
                     f"{', '.join(header.message_type + '^' + e for e in SUPPORTED[header.message_type])})")
    if header.processing_id not in PROCESSING_IDS:
        raise reject(ErrorCode.UNSUPPORTED_PROCESSING_ID, "MSH^1^11",
                     f"MSH-11 must be one of {', '.join(PROCESSING_IDS)} (HL7 table 0103), "
                     f"{header.processing_id!r} is given")
    if not VERSION_PATTERN.fullmatch(header.version):
        raise reject(ErrorCode.UNSUPPORTED_VERSION_ID, "MSH^1^12",
                     f"MSH-12 must be an HL7 version 2.3 to 2.9, {header.version!r} is given")
    return message


def parse_time(value: str, location: str, zone: tzinfo) -> datetime:
    """An HL7 DTM with at least minutes as an aware datetime (``zone`` when it has no offset).

    Raises
    ------
    Hl7Error
        AE 102 at ``location`` when ``value`` is not such a date/time.
    """
    match = DTM_PATTERN.fullmatch(value)
    if match is None:
        raise error(ErrorCode.DATA_TYPE_ERROR, location,
                    f"must be an HL7 date/time YYYYMMDDHHMM[SS[.SSSS]][+/-ZZZZ], {value!r} is given")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    if offset is None:
        tz = zone
    else:
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                        int((fraction or "0").ljust(6, "0")), tzinfo=tz)
    except ValueError as exc:
        raise error(ErrorCode.DATA_TYPE_ERROR, location, f"is not a valid date/time, {value!r} is given ({exc})") \
            from None
