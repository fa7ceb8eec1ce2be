"""The attributes a C-STORE's checks read, taken straight from the received encoding.

Routing, the pixel check, the palette check (:func:`palette_problem`), the series geometry check and
the bookkeeping read about thirty attributes of the top-level data set (:data:`ATTRIBUTES`).  Decoding the whole data set with
pydicom and reading them through its Dataset costs more than the rest of a C-STORE's handling;
the structural walk (:func:`dicom_gateway.wellformed.dataset_problem`) has already found where
every top-level element lies, so :func:`read_header` decodes just these values from their bytes
(PS3.5 6.2 value representations) into a :class:`Header` that answers like a pydicom Dataset for
them.

It returns None, and the caller decodes with pydicom as before, for anything out of the plain
case: deflated or compressed transfer syntaxes (the pixel check then needs a decoder), a character
set other than the default repertoire, Latin-1 or UTF-8, an attribute with an unexpected VR, or a
value that does not parse.
"""
from __future__ import annotations

import struct
from typing import Any

from pydicom.uid import UID

from dicom_gateway.wellformed import (EXPLICIT_VR_BIG_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN,
                                      IMPLICIT_VR_LITTLE_ENDIAN, PIXEL_DATA, Element)

#: Tag -> (keyword, VR) of the attributes the checks read (PS3.6).
ATTRIBUTES: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080060: ("Modality", "CS"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00180015: ("BodyPartExamined", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00201002: ("ImagesInAcquisition", "IS"),
    0x00201208: ("NumberOfStudyRelatedInstances", "IS"),
    0x00201209: ("NumberOfSeriesRelatedInstances", "IS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280100: ("BitsAllocated", "US"),
    0x00281101: ("RedPaletteColorLookupTableDescriptor", "US"),
    0x00281102: ("GreenPaletteColorLookupTableDescriptor", "US"),
    0x00281103: ("BluePaletteColorLookupTableDescriptor", "US"),
    0x00281201: ("RedPaletteColorLookupTableData", "OW"),
    0x00281202: ("GreenPaletteColorLookupTableData", "OW"),
    0x00281203: ("BluePaletteColorLookupTableData", "OW"),
    0x00281221: ("SegmentedRedPaletteColorLookupTableData", "OW"),
    0x00281222: ("SegmentedGreenPaletteColorLookupTableData", "OW"),
    0x00281223: ("SegmentedBluePaletteColorLookupTableData", "OW"),
}
#: Attributes of more than one value (PS3.3 C.7.6.3.1.5: a Palette Color Lookup Table Descriptor is
#: three US values, PS3.6 VM 3): keyword -> the number of values.
_MULTI_VALUED = {"RedPaletteColorLookupTableDescriptor": 3, "GreenPaletteColorLookupTableDescriptor": 3,
                 "BluePaletteColorLookupTableDescriptor": 3}
_COLOURS = ("Red", "Green", "Blue")
#: PS3.3 C.7.6.3.1.5: a descriptor's number of entries 0 means 2^16; its bits per entry are 8 or 16.
_ENTRIES_OF_ZERO, _ENTRY_BITS = 1 << 16, (8, 16)
#: Specific Character Set values whose text this module decodes (PS3.3 C.12.1.1.2).
_ENCODINGS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_NATIVE = {IMPLICIT_VR_LITTLE_ENDIAN: "<", EXPLICIT_VR_LITTLE_ENDIAN: "<", EXPLICIT_VR_BIG_ENDIAN: ">"}
_US = {"<": struct.Struct("<H"), ">": struct.Struct(">H")}


class _FileMeta:
    def __init__(self, transfer_syntax: str) -> None:
        self.TransferSyntaxUID = UID(transfer_syntax)


class Header:
    """The attributes of :data:`ATTRIBUTES` (and Pixel Data) present in a data set, read like a
    pydicom Dataset: ``header.Rows``, ``header.get("BodyPartExamined", "")``, ``"PixelData" in
    header``, ``header.file_meta.TransferSyntaxUID``."""

    def __init__(self, values: dict[str, Any], transfer_syntax: str | None = None) -> None:
        self._values = values
        if transfer_syntax is not None:
            self.file_meta = _FileMeta(transfer_syntax)

    def get(self, keyword: str, default: Any = None) -> Any:
        return self._values.get(keyword, default)

    def __contains__(self, keyword: str) -> bool:
        return keyword in self._values

    def __getattr__(self, keyword: str) -> Any:
        try:
            return self.__dict__["_values"][keyword]
        except KeyError:
            raise AttributeError(f"the data set has no {keyword}") from None


def read_header(data, transfer_syntax: str, top: list[Element]) -> Header | None:
    """A :class:`Header` of the data set ``data``, whose top-level elements are ``top``; None when
    it must be decoded with pydicom instead (see the module's docstring)."""
    order = _NATIVE.get(str(transfer_syntax))
    if order is None:
        return None
    implicit = str(transfer_syntax) == IMPLICIT_VR_LITTLE_ENDIAN
    raw: dict[str, tuple[str, bytes]] = {}
    values: dict[str, Any] = {}
    for element in top:
        if element.tag == PIXEL_DATA:
            values["PixelData"] = memoryview(data)[element.value_at:element.end]
            continue
        known = ATTRIBUTES.get(element.tag)
        if known is None:
            continue
        keyword, vr = known
        if not implicit and bytes(data[element.vr_at:element.vr_at + 2]).decode("latin-1") != vr:
            return None  # e.g. a descriptor written SS (PS3.6 "US or SS"): pydicom reads it
        if vr == "OW":  # lookup table data: only its length is checked, the bytes are not copied
            values[keyword] = memoryview(data)[element.value_at:element.end]
            continue
        raw[keyword] = (vr, bytes(data[element.value_at:element.end]))
    try:
        charset = raw.pop("SpecificCharacterSet", ("CS", b""))[1].decode("ascii").strip(" \0")
        encoding = _ENCODINGS.get(charset)
        if encoding is None:
            return None
        if charset:
            values["SpecificCharacterSet"] = charset
        for keyword, (vr, value) in raw.items():
            if keyword in _MULTI_VALUED:
                parsed = _values(value, order, _MULTI_VALUED[keyword])
            else:
                parsed = _value(vr, value, order, encoding)
            if parsed is not None:
                values[keyword] = parsed
    except (ValueError, UnicodeDecodeError, struct.error):
        return None
    return Header(values, str(transfer_syntax))


def _values(value: bytes, order: str, count: int) -> list[int] | None:
    """``count`` US values (None for an empty value); :class:`ValueError` for another number."""
    if not value:
        return None
    if len(value) != 2 * count:
        raise ValueError(f"{count} US values expected, {len(value)} bytes are given")
    return list(struct.unpack(f"{order}{count}H", value))


def palette_problem(ds) -> str | None:
    """Why the Red, Green and Blue Palette Color Lookup Tables of a PALETTE COLOR image cannot be
    applied (PS3.3 C.7.6.3.1.5-6), or None; for a :class:`Header` or a pydicom Dataset alike.

    Each descriptor is three values (entries, 0 meaning 2^16; first mapped value; bits per entry, 8
    or 16), the three alike; each table holds its entries at the bits per entry (8-bit entries also
    accepted in 16 bits allocated, as older files have them, and read by pydicom), the three alike,
    unless Segmented tables (PS3.3 C.7.9.2) are given instead."""
    if str(ds.get("PhotometricInterpretation", "")).upper() != "PALETTE COLOR":
        return None
    descriptors = [_triple(ds.get(f"{colour}PaletteColorLookupTableDescriptor")) for colour in _COLOURS]
    if any(d is None for d in descriptors):
        return ("PALETTE COLOR needs Red, Green and Blue Palette Color Lookup Table Descriptors of three values "
                f"(PS3.3 C.7.6.3.1.5), {descriptors} are given")
    entries, _, bits = descriptors[0]
    if any(d != descriptors[0] for d in descriptors[1:]) or bits not in _ENTRY_BITS:
        return ("the Palette Color Lookup Table Descriptors must be alike with 8 or 16 bits per entry "
                f"(PS3.3 C.7.6.3.1.5), {descriptors} are given")
    entries = entries or _ENTRIES_OF_ZERO
    tables = [ds.get(f"{colour}PaletteColorLookupTableData") for colour in _COLOURS]
    if all(table is None for table in tables) and all(
            f"Segmented{colour}PaletteColorLookupTableData" in ds for colour in _COLOURS):
        return None
    lengths = [None if table is None else len(table) for table in tables]
    allowed = {2 * entries} if bits == 16 else {entries, entries + entries % 2, 2 * entries}
    if len(set(lengths)) != 1 or lengths[0] not in allowed:
        return (f"the Palette Color Lookup Table Data must hold {entries} entries of {bits} bits each "
                f"(PS3.3 C.7.6.3.1.6), Red, Green and Blue hold {lengths} bytes")
    return None


def _triple(value: Any) -> list[int] | None:
    """A descriptor's three values as integers, or None when it is absent or not three numbers."""
    try:
        numbers = [int(v) for v in value]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == 3 else None


def _value(vr: str, value: bytes, order: str, encoding: str) -> Any:
    """One value as pydicom gives it for these VRs (None for an empty value, as absent)."""
    if vr == "US":
        return _US[order].unpack(value)[0] if value else None
    text = value.decode(encoding if vr == "LO" else "ascii").strip(" \0")
    if not text:
        return None
    if vr in ("UI", "CS", "LO"):
        if "\\" in text and vr != "LO":
            raise ValueError(f"more than one value in a single-valued {vr}: {text!r}")
        return text
    if vr == "IS":
        return int(text)
    return [float(part) for part in text.split("\\")]  # DS
