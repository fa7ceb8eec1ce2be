"""Structural check of a received data set or DICOM file, before it is decoded and stored.

pydicom reads leniently: a value cut short by the end of the stream, a length that runs past it, a
header cut in two, an unknown explicit VR or a sequence never closed are read as far as they go,
without an error.  A receiver that stores such an instance acknowledges data it has lost.  This
module walks the element headers only (PS3.5 7.1 data elements, 7.5 nesting of sequences and
items, A.4 encapsulated Pixel Data; PS3.10 7.1 File Meta Information) and names the first problem.
"""
from __future__ import annotations

import struct
import zlib
from typing import Iterator, NamedTuple

from pynetdicom import ALL_TRANSFER_SYNTAXES

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
NATIVE = frozenset({IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_BIG_ENDIAN,
                    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN})
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA, GROUP_LENGTH, TRANSFER_SYNTAX = 0x7FE00010, 0x00020000, 0x00020010
UNDEFINED = 0xFFFFFFFF
#: PS3.5 Table 6.2-1.
VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC "
                b"UI UL UN UR US UT UV".split())
#: Explicit VRs with a reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
UNDEFINED_LENGTH_VRS = frozenset({b"SQ", b"UN", b"OB", b"OW"})
#: A Deflated data set that inflates beyond this is refused (a deflate bomb, not an image).
MAX_INFLATED_BYTES = 1 << 30
#: Deeper nesting of sequences is refused (real objects nest a handful of levels).
MAX_NESTING = 64


class MalformedError(ValueError):
    """The encoding is broken; the message says where."""


class Element(NamedTuple):
    """Where one data element lies in an encoded data set (offsets into the buffer).  A named
    tuple: a C-STORE walks ~100 of them before its status, and a frozen dataclass cost 3 times as
    much to build."""

    tag: int
    start: int
    vr_at: int | None  # offset of the explicit VR, None for implicit VR and items
    length_at: int
    length_size: int
    length: int  # as declared: UNDEFINED for an undefined length
    value_at: int
    end: int


def elements(data, implicit: bool, little: bool = True, start: int = 0, end: int | None = None,
             depth: int = 0) -> Iterator[Element]:
    """The elements of the data set in ``data[start:end]`` (``data``: bytes or a memoryview).

    Raises
    ------
    MalformedError
        At the first element that does not fit the buffer or the encoding.
    """
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        element = _element(data, pos, end, implicit, little, depth)
        yield element
        pos = element.end


_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_LENGTH = {(True, 4): struct.Struct("<L"), (True, 2): struct.Struct("<H"),
           (False, 4): struct.Struct(">L"), (False, 2): struct.Struct(">H")}


def _tag(data, pos: int, little: bool) -> int:
    group, number = _TAG[little].unpack_from(data, pos)
    return group << 16 | number


def _element(data, pos: int, end: int, implicit: bool, little: bool, depth: int) -> Element:
    if end - pos < 8:
        raise MalformedError(f"an element header is cut short at byte {pos} ({end - pos} bytes left)")
    tag = _tag(data, pos, little)
    if tag >> 16 == 0xFFFE:
        raise MalformedError(f"item or delimiter tag ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos} "
                             "where an element belongs")
    vr = None if implicit else bytes(data[pos + 4:pos + 6])
    if vr is not None and vr not in VRS:
        raise MalformedError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos} has the unknown "
                             f"VR {vr!r}")
    if vr is None or vr in LONG_VRS:
        length_at, size = pos + (8 if vr else 4), 4
        if length_at + 4 > end:
            raise MalformedError(f"an element header is cut short at byte {pos} ({end - pos} bytes left)")
    else:
        length_at, size = pos + 6, 2
    length = _LENGTH[little, size].unpack_from(data, length_at)[0]
    value_at = length_at + size
    if length == UNDEFINED:
        if vr is not None and vr not in UNDEFINED_LENGTH_VRS:
            raise MalformedError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) has an undefined length "
                                 f"with VR {vr.decode('latin-1')}")
        value_end = _items_end(data, value_at, end, implicit, little, depth + 1, tag)
    elif value_at + length > end:
        raise MalformedError(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {pos} declares "
                             f"{length} bytes, {end - value_at} are left")
    else:
        value_end = value_at + length
    return Element(tag, pos, None if vr is None else pos + 4, length_at, size, length, value_at, value_end)


def _items_end(data, pos: int, end: int, implicit: bool, little: bool, depth: int, owner: int) -> int:
    """The end of an undefined-length value (sequence items or encapsulated fragments)."""
    if depth > MAX_NESTING:
        raise MalformedError(f"sequences are nested more than {MAX_NESTING} levels deep")
    name = f"({owner >> 16:04X},{owner & 0xFFFF:04X})"
    while True:
        if end - pos < 8:
            raise MalformedError(f"the undefined-length value of {name} is never closed")
        tag = _tag(data, pos, little)
        length = _LENGTH[little, 4].unpack_from(data, pos + 4)[0]
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise MalformedError(f"an item of {name} was expected at byte {pos - 8}")
        if length != UNDEFINED:
            if pos + length > end:
                raise MalformedError(f"an item of {name} declares {length} bytes, {end - pos} are left")
            pos += length
            continue
        while True:  # an undefined-length item: its elements, then the item delimiter
            if end - pos >= 8 and _tag(data, pos, little) == ITEM_END:
                pos += 8
                break
            pos = _element(data, pos, end, implicit, little, depth).end


def dataset_problem(data, transfer_syntax: str, top: list[Element] | None = None) -> str | None:
    """Why the data set ``data``, encoded in ``transfer_syntax``, is malformed, or None.  Its
    top-level elements are appended to ``top`` when one is given (not for a deflated data set,
    whose offsets are into the inflated bytes)."""
    syntax = str(transfer_syntax)
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        try:
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            data = inflater.decompress(bytes(data), MAX_INFLATED_BYTES)
            if inflater.unconsumed_tail:
                return f"the Deflated data set inflates to more than {MAX_INFLATED_BYTES} bytes"
        except zlib.error as exc:
            return f"the Deflated data set cannot be inflated: {exc}"
    try:
        for element in elements(data, syntax == IMPLICIT_VR_LITTLE_ENDIAN, syntax != EXPLICIT_VR_BIG_ENDIAN):
            if element.tag == PIXEL_DATA and syntax not in NATIVE and element.length != UNDEFINED:
                return f"Pixel Data must be encapsulated (undefined length) in transfer syntax {syntax}"
            if top is not None and syntax != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                top.append(element)
    except MalformedError as exc:
        return str(exc)
    return None


def part10_problem(data) -> str | None:
    """Why the DICOM file ``data`` (preamble, prefix, File Meta Information, data set) is malformed,
    or None."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        return "not a DICOM file: no 'DICM' prefix after the 128-byte preamble"
    pos, syntax, group_length = 132, None, None
    try:
        while len(data) - pos >= 4 and _tag(data, pos, True) >> 16 == 0x0002:
            element = _element(data, pos, len(data), False, True, 0)
            value = bytes(data[element.value_at:element.end])
            if element.tag == GROUP_LENGTH and len(value) == 4:
                group_length = (element.end, struct.unpack("<L", value)[0])
            elif element.tag == TRANSFER_SYNTAX:
                syntax = value.rstrip(b"\0 ").decode("latin-1")
            pos = element.end
    except MalformedError as exc:
        return f"File Meta Information: {exc}"
    if group_length is not None and group_length[0] + group_length[1] != pos:
        return (f"File Meta Information Group Length is {group_length[1]}, the group holds "
                f"{pos - group_length[0]} bytes")
    if not syntax:
        return "the File Meta Information has no Transfer Syntax UID"
    if syntax not in ALL_TRANSFER_SYNTAXES:
        return f"transfer syntax {syntax!r} is not one this gateway accepts"
    return dataset_problem(memoryview(data)[pos:], syntax)
