"""De-identification of one DICOM dataset: PS3.15 Basic Application Level Confidentiality Profile
with the Retain Longitudinal Temporal Information with Modified Dates Option.

Every element, at every nesting level, gets the action of its row of Table E.1-1
(:mod:`serving.governance.deid_profile`, edition :data:`~serving.governance.deid_profile.TABLE_EDITION`):

* attribute rows and group rows (private attributes, curves ``50xx``, overlay comments and data
  ``60xx,4000``/``60xx,3000``): ``X`` removed; ``Z`` zero length; ``U`` every UID replaced by
  ``2.25.<integer>`` derived from the salt and the original (a study's references stay consistent
  across its files and across runs with the same salt); ``D`` a dummy of the VR;
* composites (``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``): by the attribute's Type at its path in
  the IOD of the dataset's SOP Class (``X`` for Type 3, ``Z`` for 2, ``D``/``U`` for 1);
* ``D`` on a sequence keeps its items, cleaned: the table applies inside them, and their free text
  (LT, ST, UT, UC) becomes a dummy; a sequence without items gets one empty item.  ``Z`` on a
  sequence leaves it empty;
* a Type 1C attribute whose condition the table removed goes too (:data:`PRESENT_ONLY_WITH`);
* attributes the table does not list: kept when the data dictionary knows them (the table lists the
  standard attributes that may identify); Person Names handled as ``X/Z/D``; attributes unknown to
  the dictionary (newer than it, or not standard) are removed, as of unknown safety;
* dates and times whose action is not plain ``X`` (Study Date ``Z``, Acquisition Date ``X/Z``,
  Content Time ``Z/D``...) and unlisted ones are kept and moved back by the patient's offset, as
  the option's column of Table E.1-1 allows (``C``); Patient's Birth Date stays ``Z``.

Offset: 1-3650 days and 1-86399 seconds back, derived from the salt and Patient ID.  Date Times,
and a Date with its Time beside it (``StudyDate`` and ``StudyTime``...), move by exactly that; a
Date alone by the days, a Time alone by the seconds (around the clock), so intervals within a
patient are kept (to within a day for a date without its time).

The top-level Patient's Name and Patient ID become a pseudonym (deterministic per salt and
patient); the file meta information is rebuilt (media storage UIDs, transfer syntax and medgate's
implementation only) and the preamble zeroed; the output gets Patient Identity Removed ``YES``,
Longitudinal Temporal Information Modified ``MODIFIED``, De-identification Method and a
De-identification Method Code Sequence (CID 7050: 113100, 113107).
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.datadict import get_entry, keyword_for_tag
from pydicom.dataset import FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from dicom_gateway.implementation import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION
from serving.governance.deid_profile import (
    BASIC_PROFILE_CODE,
    RETAIN_LONGITUDINAL_MODIFIED_DATES_CODE,
    action,
    attribute_type,
    choose,
)

MAX_SHIFT_DAYS = 3650
SECONDS_PER_DAY = 86400
METHOD = "PS3.15 E Basic Profile; Rtn Long Modif Dates Option"  # LO: at most 64 characters
#: Dummy values by VR (PS3.5 6.2); UI is replaced like a U, dates and times are shifted.
_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANON", "LT": "ANONYMOUS", "ST": "ANONYMOUS",
          "UT": "ANONYMOUS", "CS": "ANON", "AE": "ANON", "DS": "0", "IS": "0", "AS": "000Y",
          "UC": "ANONYMOUS", "UR": "urn:anonymous", "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0,
          "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0}
#: Dummy of the binary VRs (OB, OW, OF, OD, OL, OV, UN): a length every one of them allows.
_DUMMY_BYTES = b"\x00" * 8
#: Free-text VRs, replaced by a dummy inside a sequence whose action is D.
FREE_TEXT_VRS = ("LT", "ST", "UT", "UC")
#: Unlisted Person Names: a name is never known to be safe.
UNLISTED_NAME_ACTION = "X/Z/D"
#: Type 1C attributes that may be present only with another one that the table removes: (the
#: attribute, its condition).  PS3.3 C.7.1.3 Clinical Trial Subject Module: Clinical Trial Protocol
#: Ethics Committee Name (D) "Required if ... Approval Number is present", and the Approval Number is X.
PRESENT_ONLY_WITH = ((0x00120081, 0x00120082),)
_BIRTH_DATE = 0x00100030
DATE_VRS = ("DA", "DT", "TM")
_DT = re.compile(r"^(\d{8})(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


class DeidentificationError(ValueError):
    """The dataset cannot be exported (e.g. burned-in annotation)."""


@dataclass(frozen=True)
class _Context:
    sop_class_uid: str
    offset: timedelta


class Deidentifier:
    """De-identify datasets consistently for one export, keyed by ``salt`` (bytes, >= 16)."""

    def __init__(self, salt: bytes) -> None:
        if len(salt) < 16:
            raise ValueError(f"salt must be at least 16 bytes, {len(salt)} are given")
        self.salt = salt

    def _digest(self, *parts: str) -> bytes:
        return hmac.new(self.salt, "\x1f".join(parts).encode("utf-8"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of an instance UID: ``2.25.`` + a 128-bit integer (PS3.5 B.2)."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original)[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        return "ANON-" + self._digest("patient", patient_id).hex()[:12].upper()

    def shift_days(self, patient_id: str) -> int:
        """Days every date of this patient moves back: 1..MAX_SHIFT_DAYS, never 0."""
        return 1 + int.from_bytes(self._digest("shift", patient_id)[:4], "big") % MAX_SHIFT_DAYS

    def shift_seconds(self, patient_id: str) -> int:
        """Seconds every time of this patient moves back, on top of the days: 1..86399, never 0."""
        return 1 + int.from_bytes(self._digest("shift-seconds", patient_id)[:4], "big") % (SECONDS_PER_DAY - 1)

    # -- the profile ----------------------------------------------------------------------------
    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place and return it; raises :class:`DeidentificationError` when
        Burned In Annotation is YES (the pixels themselves may identify the patient)."""
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidentificationError("Burned In Annotation is YES: not exported")
        patient_id = str(ds.get("PatientID", "") or "")
        offset = timedelta(days=self.shift_days(patient_id), seconds=self.shift_seconds(patient_id))
        self._clean(ds, (), False, _Context(str(ds.get("SOPClassUID", "")), offset))
        if "PatientID" in ds:
            ds.PatientID = self.pseudonym(patient_id)
        ds.PatientName = self.pseudonym(patient_id)
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        ds.DeidentificationMethod = METHOD
        ds.DeidentificationMethodCodeSequence = Sequence([_code(*c) for c in (
            BASIC_PROFILE_CODE, RETAIN_LONGITUDINAL_MODIFIED_DATES_CODE)])
        _rebuild_file_meta(ds)
        return ds

    def _clean(self, ds: Dataset, path: tuple[str, ...], in_dummy: bool, ctx: _Context) -> None:
        """Apply the table to every element of ``ds`` (at ``path``), recursing into sequences."""
        dated: list[DataElement] = []
        for elem in list(ds):
            todo = _rule(elem, in_dummy)
            if todo is None or (elem.VR in DATE_VRS and todo not in ("X", "U") and elem.tag != _BIRTH_DATE):
                if elem.VR == "SQ":
                    self._clean_items(elem, path, in_dummy, ctx)
                elif elem.VR in DATE_VRS:
                    dated.append(elem)  # unlisted, or the Modified Dates option: kept, moved back
                continue
            here = (*path, keyword_for_tag(elem.tag) or f"{elem.tag:08X}")
            chosen = choose(todo, attribute_type(ctx.sop_class_uid, here)) if "/" in todo else todo
            if chosen == "X":
                del ds[elem.tag]
            elif chosen == "Z":
                elem.value = Sequence() if elem.VR == "SQ" else None
            elif elem.VR == "SQ":  # D: a cleaned, non-empty sequence; U*: the UIDs inside replaced
                if chosen == "D" and len(elem.value) == 0:
                    elem.value = Sequence([Dataset()])
                self._clean_items(elem, path, in_dummy or chosen == "D", ctx)
            elif chosen == "U" or elem.VR == "UI":
                _replace_uids(elem, self.uid)
            else:
                elem.value = _DUMMY.get(elem.VR, _DUMMY_BYTES)
        for attribute, condition in PRESENT_ONLY_WITH:
            if attribute in ds and condition not in ds:
                del ds[attribute]
        _shift(ds, dated, ctx.offset)

    def _clean_items(self, elem: DataElement, path: tuple[str, ...], in_dummy: bool, ctx: _Context) -> None:
        here = (*path, keyword_for_tag(elem.tag) or f"{elem.tag:08X}")
        for item in elem.value:
            self._clean(item, here, in_dummy, ctx)


def _known(tag: int) -> bool:
    try:
        get_entry(tag)
    except KeyError:
        return False
    return True


def _rule(elem: DataElement, in_dummy: bool) -> str | None:
    """The action for ``elem``: its table row, else the rules for unlisted attributes (None: keep)."""
    todo = action(elem.tag)
    if todo is not None:
        return todo
    if not _known(elem.tag):
        return "X"
    if elem.VR == "PN":
        return UNLISTED_NAME_ACTION
    if in_dummy and elem.VR in FREE_TEXT_VRS:
        return "D"
    return None


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _rebuild_file_meta(ds: Dataset) -> None:
    """New File Meta Information (PS3.10 7.1): only what identifies the object and its encoding."""
    old = getattr(ds, "file_meta", None)
    if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
        ds.file_meta = FileMetaDataset()
        return
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = (old.get("TransferSyntaxUID") if old is not None else None) or ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128


def _replace_uids(elem: DataElement, mapping) -> None:
    if elem.VR == "UI" and elem.value:
        values = elem.value if elem.VM > 1 else [elem.value]
        mapped = [mapping(str(v)) for v in values]
        elem.value = mapped if elem.VM > 1 else mapped[0]
    elif elem.VR != "UI":  # a U row on another VR: nothing identifying may stay
        elem.value = None


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    return [str(v) for v in value] if isinstance(value, (list, MultiValue)) else [str(value)]


def _set_values(elem: DataElement, values: list[str]) -> None:
    elem.value = values if len(values) > 1 else values[0]


def _shift(ds: Dataset, dated: list[DataElement], offset: timedelta) -> None:
    """Move the dates and times of one dataset level back by ``offset`` (see the module docstring)."""
    by_keyword = {keyword_for_tag(e.tag): e for e in dated}
    paired: set[int] = set()
    for elem in dated:
        if not elem.value or elem.tag in paired:
            continue
        keyword = keyword_for_tag(elem.tag)
        partner = by_keyword.get(keyword.replace("Date", "Time")) if elem.VR == "DA" else None
        if partner is not None and partner.VR == "TM" and partner.value and elem.VM == partner.VM == 1:
            paired.add(partner.tag)
            moments = _moment(str(elem.value), str(partner.value))
            if moments is None:
                elem.value = partner.value = None
            else:
                moved, fraction = moments[0] - offset, moments[1]
                elem.value, partner.value = moved.strftime("%Y%m%d"), moved.strftime("%H%M%S") + fraction
            continue
        shift = {"DA": _shift_date, "DT": _shift_datetime, "TM": _shift_time}[elem.VR]
        moved_values = [shift(v.strip(), offset) for v in _values(elem)]
        if "" in moved_values:
            elem.value = None  # unparsable: nothing of the original stays
        else:
            _set_values(elem, moved_values)


def _moment(day: str, time: str) -> tuple[datetime, str] | None:
    parsed_time = _TM.match(time.strip().replace(":", ""))
    try:
        start = datetime.strptime(day.strip(), "%Y%m%d")
    except ValueError:
        return None
    if parsed_time is None:
        return None
    hours, minutes, seconds, fraction = parsed_time.groups()
    try:
        return start.replace(hour=int(hours), minute=int(minutes or 0), second=int(seconds or 0)), fraction or ""
    except ValueError:
        return None


def _shift_date(text: str, offset: timedelta) -> str:
    try:
        return (date(int(text[:4]), int(text[4:6]), int(text[6:8])) - timedelta(days=offset.days)).strftime("%Y%m%d")
    except (ValueError, IndexError):
        return ""


def _shift_time(text: str, offset: timedelta) -> str:
    parsed = _TM.match(text.replace(":", ""))
    if parsed is None:
        return ""
    hours, minutes, seconds, fraction = parsed.groups()
    if int(hours) > 23 or int(minutes or 0) > 59 or int(seconds or 0) > 60:
        return ""
    total = (int(hours) * 3600 + int(minutes or 0) * 60 + int(seconds or 0) - offset.seconds) % SECONDS_PER_DAY
    return f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}{fraction or ''}"


def _shift_datetime(text: str, offset: timedelta) -> str:
    parsed = _DT.match(text)
    if parsed is None:
        return ""
    day, hours, minutes, seconds, fraction, zone = parsed.groups()
    try:
        start = datetime.strptime(day, "%Y%m%d")
    except ValueError:
        return ""
    if hours is None:
        return (start - timedelta(days=offset.days)).strftime("%Y%m%d") + (zone or "")
    try:
        moved = start.replace(hour=int(hours), minute=int(minutes or 0), second=int(seconds or 0)) - offset
    except ValueError:
        return ""
    return moved.strftime("%Y%m%d%H%M%S") + (fraction or "") + (zone or "")
