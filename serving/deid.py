"""De-identification of one DICOM dataset: PS3.15 Basic Application Level Confidentiality Profile
with the Retain Longitudinal Temporal Information with Modified Dates Option.

Per attribute of :data:`serving.deid_profile.BASIC_PROFILE` (at every nesting level):

* ``X`` and every composite starting with X: removed (the attributes are type 3 in the image IODs
  medgate exports, so removal is the applicable choice);
* ``Z``: Patient's Name and Patient ID become a pseudonym (a dummy value, deterministic per export
  salt and patient); Patient's Birth Date and the other Z attributes become zero length;
* ``D``: replaced by a dummy of the VR (sequences emptied);
* dates and times whose action is not plain ``X`` (Study Date, Acquisition Date ``X/D``, Content
  Date ``Z/D``...): kept and shifted, as the option's column of Table E.1-1 allows (``C``); Patient's
  Birth Date stays ``Z``;
* ``U``: every instance UID replaced by ``2.25.<integer>`` derived from the salt and the original
  (so a study's references stay consistent across its files and across runs with the same salt);
* private attributes, curves and overlay data/comments removed.

Dates: every remaining DA/DT attribute (e.g. Study Date, Content Date) is shifted by a per-patient
offset of 1-3650 days back, derived from the salt and Patient ID, so intervals within a patient
are kept.  The output gets Patient Identity Removed ``YES``, Longitudinal Temporal Information
Modified ``MODIFIED``, De-identification Method and a De-identification Method Code Sequence
(CID 7050: 113100, 113107).
"""
from __future__ import annotations

import hashlib
import hmac
from datetime import date, datetime, timedelta

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.sequence import Sequence

from serving.deid_profile import BASIC_PROFILE_CODE, RETAIN_LONGITUDINAL_MODIFIED_DATES_CODE, action

MAX_SHIFT_DAYS = 3650
METHOD = "PS3.15 E Basic Profile; Rtn Long Modif Dates Option"  # LO: at most 64 characters
_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANON", "LT": "ANONYMOUS", "ST": "ANONYMOUS",
          "UT": "ANONYMOUS", "CS": "ANON", "AE": "ANON", "DS": "0", "IS": "0", "UI": None,
          "AS": "000Y", "UC": "ANONYMOUS", "UR": "urn:anonymous"}
_PATIENT_NAME, _PATIENT_ID, _BIRTH_DATE = 0x00100010, 0x00100020, 0x00100030
DATE_VRS = ("DA", "DT", "TM")


class DeidentificationError(ValueError):
    """The dataset cannot be exported (e.g. burned-in annotation)."""


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

    # -- the profile ----------------------------------------------------------------------------
    def apply(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place and return it; raises :class:`DeidentificationError` when
        Burned In Annotation is YES (the pixels themselves may identify the patient)."""
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidentificationError("Burned In Annotation is YES: not exported")
        patient_id = str(ds.get("PatientID", "") or "")
        shift = timedelta(days=self.shift_days(patient_id))
        self._walk(ds, shift, patient_id)
        if "PatientID" in ds:
            ds.PatientID = self.pseudonym(patient_id)
        ds.PatientName = self.pseudonym(patient_id)
        if getattr(ds, "file_meta", None) is not None and "MediaStorageSOPInstanceUID" in ds.file_meta:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientIdentityRemoved = "YES"
        ds.LongitudinalTemporalInformationModified = "MODIFIED"
        ds.DeidentificationMethod = METHOD
        ds.DeidentificationMethodCodeSequence = Sequence([_code(*c) for c in (
            BASIC_PROFILE_CODE, RETAIN_LONGITUDINAL_MODIFIED_DATES_CODE)])
        return ds

    def _walk(self, ds: Dataset, shift: timedelta, patient_id: str) -> None:
        for elem in list(ds):
            todo = action(elem.tag)
            if todo is None:
                if elem.VR == "SQ":
                    for item in elem.value:
                        self._walk(item, shift, patient_id)
                elif elem.VR in ("DA", "DT"):
                    _shift(elem, shift)
                continue
            if elem.VR in DATE_VRS and todo not in ("X", "U") and elem.tag != _BIRTH_DATE:
                _shift(elem, shift)  # the Modified Dates option: kept, moved back (TM kept)
            elif todo.startswith("X"):
                del ds[elem.tag]
            elif todo == "U":
                _replace_uids(elem, self.uid)
            elif todo == "K":
                continue
            elif todo == "Z" and elem.tag in (_PATIENT_NAME, _PATIENT_ID):
                continue  # pseudonym set by apply()
            elif todo == "Z" or elem.VR == "SQ":
                elem.value = Sequence() if elem.VR == "SQ" else ""
            else:
                elem.value = _DUMMY.get(elem.VR, "") or ""


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _replace_uids(elem: DataElement, mapping) -> None:
    if elem.VR == "UI" and elem.value:
        values = elem.value if elem.VM > 1 else [elem.value]
        mapped = [mapping(str(v)) for v in values]
        elem.value = mapped if elem.VM > 1 else mapped[0]
    elif elem.VR == "SQ":
        for item in elem.value:
            for inner in item:
                _replace_uids(inner, mapping)
    else:  # a U row on another VR: nothing identifying may stay
        elem.value = ""


def _shift(elem: DataElement, shift: timedelta) -> None:
    """Move a DA or DT value back by ``shift``; a TM (time of day) stays; unparsable values go empty."""
    if elem.VR == "TM" or not elem.value:
        return
    text = str(elem.value).strip()
    try:
        if elem.VR == "DA":
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8])) - shift
            elem.value = day.strftime("%Y%m%d")
        else:
            head = datetime.strptime(text[:8], "%Y%m%d") - shift
            elem.value = head.strftime("%Y%m%d") + text[8:]
    except (ValueError, IndexError):
        elem.value = ""
