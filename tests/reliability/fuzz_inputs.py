"""Seeded generators of bad DICOM datasets and bad MQTT vitals payloads for the fuzz tests.

Every input is bad by construction, so a correct receiver must refuse each one:

- DICOM data sets (:func:`bad_datasets`, :func:`deflated_garbage`; as files: :func:`part10`,
  :func:`bad_file_meta`): a few good instances (routed DX and CT,
  unrouted MR and SC; Explicit and Implicit VR Little Endian) mutated by one family each —
  truncated inside an element, element lengths past the end of the stream, invalid or
  contradicting VRs, invalid identifying UIDs, missing identifying attributes, a SOP class that
  differs from the presentation context, the wrong byte order, bit flips in identifying UIDs and
  length fields, random garbage, a Part 10 file sent as a bare data set, nothing or a few bytes,
  unterminated nested sequences, pixel data that cannot be decoded (routed images), and, for Part
  10 files, broken preambles and file meta information (transfer syntax UIDs among them).
- DICOM upper layer (:func:`bad_pdus`): garbage, truncated or inconsistent A-ASSOCIATE-RQs, PDUs
  out of order or of unknown types, bad PDV lengths, unknown presentation contexts, broken
  command sets, PDU lengths far past what is sent.
- MQTT (:func:`bad_vitals_payloads`): invalid JSON, non-finite numbers, wrong types, values out of
  the schema's ranges, unknown codes and units, missing or unknown fields, bad times, deep
  nesting, oversize and non-UTF-8 payloads, in the full, compact and ECG forms.

The same seed always gives the same inputs (the good instances have fixed UIDs, dates and times).
"""
from __future__ import annotations

import io
import json
import os
import random
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import sop_class as sc
from pynetdicom.dsutils import encode

from dicom_gateway.wellformed import LONG_VRS, UNDEFINED, Element, elements
from dicom_testdata import make_ct_series
import dicom_wire as wire
from training.synthetic.dicom import make_dx_dataset

DEFLATED = "1.2.840.10008.1.2.1.99"
#: The attributes every receiver needs to store an instance.
IDENTIFYING = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)  # SOP Class/Instance, Study, Series
#: Attributes a routed image needs to decode its pixels.
PIXEL_MODULE = (0x00280010, 0x00280011, 0x00280100, 0x7FE00010)  # Rows, Columns, Bits Allocated, Pixel Data


# -- good instances ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Encoded:
    """A good instance encoded as a bare data set in one transfer syntax."""

    name: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    routed: bool
    data: bytes

    @property
    def implicit(self) -> bool:
        return self.transfer_syntax == ImplicitVRLittleEndian

    def elements(self) -> list[Element]:
        return list(elements(self.data, self.implicit))


def good_instances(seed: int = 0) -> list[Dataset]:
    """Routed DX and CT images (models tb, nodule) and unrouted MR and SC images, with file meta."""
    rng = np.random.default_rng(seed)
    dx = make_dx_dataset(rng.integers(0, 4000, (64, 64)).astype(np.uint16))
    ct = make_ct_series(rng.integers(0, 3000, (1, 32, 32)).astype(np.uint16))[0]
    mr = make_ct_series(rng.integers(0, 3000, (1, 32, 32)).astype(np.uint16))[0]
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = sc.MRImageStorage
    mr.Modality = "MR"
    sc_image = make_dx_dataset(rng.integers(0, 4000, (32, 32)).astype(np.uint16), sop_class="CR")
    sc_image.SOPClassUID = sc_image.file_meta.MediaStorageSOPClassUID = sc.SecondaryCaptureImageStorage
    sc_image.Modality = "OT"
    return [_fixed(ds, seed, name) for ds, name in zip((dx, ct, mr, sc_image), ("DX", "CT", "MR", "SC"))]


def _fixed(ds: Dataset, seed: int, name: str) -> Dataset:
    """``ds`` with UIDs, dates and times that depend on ``seed`` and ``name`` only."""
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        if keyword in ds:
            setattr(ds, keyword, generate_uid(entropy_srcs=[str(seed), name, keyword]))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for element in ds.iterall():
        if element.VR in ("DA", "TM") and element.value:
            element.value = "20261122" if element.VR == "DA" else "100000"
    return ds


def encoded_instances(seed: int = 0) -> list[Encoded]:
    out = []
    for ds, name, routed in zip(good_instances(seed), ("DX", "CT", "MR", "SC"), (True, True, False, False)):
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            data = encode(ds, syntax == ImplicitVRLittleEndian, True, False)
            out.append(Encoded(name, str(ds.SOPClassUID), str(ds.SOPInstanceUID), syntax, routed, data))
    return out


# -- bad data sets -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BadDataset:
    """A bad data set: ``data`` sent on a ``(sop_class, transfer_syntax)`` presentation context."""

    family: str
    detail: str
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    data: bytes


def _set(data: bytes, at: int, raw: bytes) -> bytes:
    return data[:at] + raw + data[at + len(raw):]


def _length(element: Element, value: int) -> bytes:
    return value.to_bytes(element.length_size, "little")


def _replace_value(base: Encoded, element: Element, value: bytes) -> bytes:
    """``base.data`` with ``element``'s value replaced (length field updated: still well-formed)."""
    header = base.data[element.start:element.length_at] + _length(element, len(value))
    return base.data[:element.start] + header + value + base.data[element.end:]


def _pick(rng: random.Random, items: list[Element], tags=None) -> Element:
    chosen = [e for e in items if tags is None or e.tag in tags]
    return rng.choice(chosen)


def truncated(rng, base):
    element = rng.choice(base.elements())
    cut = rng.randrange(element.start + 1, element.end)
    return f"({element.tag:08X}) cut at {cut} of {element.start}..{element.end}", base.data[:cut]


def giant_length(rng, base):
    items = base.elements()
    while True:
        element = rng.choice(items)
        remaining = len(base.data) - element.value_at
        limit = (1 << 8 * element.length_size) - 1
        choices = [remaining + 1, remaining + 2, remaining + rng.randrange(3, 1 << 16), limit, limit - 1,
                   0x7FFFFFFF, UNDEFINED if element.length_size == 4 and element.vr_at is None else 0]
        choices = [c for c in choices if remaining < c <= limit]
        if choices:
            length = rng.choice(choices)
            return (f"({element.tag:08X}) length {length:#x}, {remaining} bytes left",
                    _set(base.data, element.length_at, _length(element, length)))


INVALID_VRS = (b"\x00\x00", b"??", b"ui", b"  ", b"\xff\xff", b"Q1", b"ZZ", b"XX", b"-1", b"\x7f\x80")
CONTRADICTING_VRS = {0x00080016: (b"US", b"FD", b"OB", b"SQ", b"AT"), 0x00080018: (b"US", b"FD", b"OB", b"SQ", b"SL"),
                     0x0020000D: (b"US", b"FL", b"OW", b"SQ", b"AT"), 0x0020000E: (b"SS", b"FD", b"OB", b"SQ", b"UL")}


def wrong_vr(rng, base):
    items = base.elements()
    if base.implicit:  # no VR on the wire: a value that contradicts the dictionary VR instead
        element = _pick(rng, items, IDENTIFYING)
        value = rng.choice([struct.pack("<3H", 1, 2, 3), struct.pack("<d", 1.5), b"\x00\x01\x02\xff",
                            b"\xfe\xff\x00\xe0\x00\x00\x00\x00"])
        return f"({element.tag:08X}) binary value {value.hex()}", _replace_value(base, element, value)
    if rng.random() < 0.6:
        element = rng.choice([e for e in items if e.length_size == 2])
        vr = rng.choice(INVALID_VRS)
        return f"({element.tag:08X}) VR {vr!r}", _set(base.data, element.vr_at, vr)
    element = _pick(rng, items, IDENTIFYING)
    vr = rng.choice(CONTRADICTING_VRS[element.tag])
    value = base.data[element.value_at:element.end]
    if vr in LONG_VRS:
        header = base.data[element.start:element.start + 4] + vr + b"\0\0" + struct.pack("<L", len(value))
    else:
        header = base.data[element.start:element.start + 4] + vr + struct.pack("<H", len(value))
    return f"({element.tag:08X}) VR {vr.decode()}", base.data[:element.start] + header + value + base.data[element.end:]


BAD_UIDS = (b"", b"\0\0", b"..", b".", b"../..", b"1..2", b".1.2", b"1.2.", b"1.2.3a", b"1.2 .3", b"1.2/../3",
            b"/etc/passwd", b"1.2\\1.3", b"1." + b"2" * 70, b"\xc3\xa9.1", b"1.2\x003", b"-1.2", b"1,2,3",
            b"1.2.840.10008.\n", b"%s%n", b"1e5", b"0x12")


def bad_uid(rng, base):
    element = _pick(rng, base.elements(), IDENTIFYING)
    uid = rng.choice(BAD_UIDS)
    value = uid + b"\0" * (len(uid) % 2)
    return f"({element.tag:08X}) = {uid!r}", _replace_value(base, element, value)


def missing_attribute(rng, base):
    tags = IDENTIFYING + (PIXEL_MODULE if base.routed else ())
    element = _pick(rng, base.elements(), tags)
    return f"({element.tag:08X}) left out", base.data[:element.start] + base.data[element.end:]


OTHER_SOP_CLASSES = (sc.CTImageStorage, sc.MRImageStorage, sc.DigitalXRayImageStorageForPresentation,
                     sc.SecondaryCaptureImageStorage, sc.RTPlanStorage, sc.BasicTextSRStorage,
                     "1.2.3.4.5.6", "1.2.840.10008.5.1.4.1.1.999")


def sop_class_mismatch(rng, base):
    element = _pick(rng, base.elements(), (0x00080016,))
    other = rng.choice([uid for uid in OTHER_SOP_CLASSES if uid != base.sop_class]).encode()
    return f"data set says {other.decode()}", _replace_value(base, element, other + b"\0" * (len(other) % 2))


def wrong_byte_order(rng, base):
    ds = Dataset()
    ds.update(_decode(base))
    data = encode(ds, False, False, False)  # Explicit VR Big Endian bytes on a Little Endian context
    return "Explicit VR Big Endian bytes", data[:rng.randrange(len(data) // 2, len(data) + 1)]


def _decode(base: Encoded) -> Dataset:
    from pynetdicom.dsutils import decode

    return decode(io.BytesIO(base.data), base.implicit, True, False)


def bit_flip(rng, base):
    items = base.elements()
    data = bytearray(base.data)
    flips = []
    for _ in range(rng.randrange(1, 4)):
        if rng.random() < 0.5:  # a high bit of one character of an identifying UID: never a UID character
            element = _pick(rng, items, IDENTIFYING)
            at = rng.randrange(element.value_at, element.end - 1)  # not the trailing padding
            bit = rng.randrange(4, 8)
        else:  # a high bit of a length field: the value runs past the end of the stream
            element = rng.choice([e for e in items if e.tag != 0x7FE00010 or e.length_size == 4])
            top = element.length_at + element.length_size - 1
            at, bit = top, rng.randrange(4, 8)
            if (data[at] >> bit) & 1:
                continue
            remaining = len(data) - element.value_at
            if int.from_bytes(data[element.length_at:top + 1], "little") + (1 << (8 * (element.length_size - 1) + bit)) <= remaining:
                continue
        data[at] ^= 1 << bit
        flips.append(f"bit {bit} of byte {at}")
    if not flips:
        return bit_flip(rng, base)
    return ", ".join(flips), bytes(data)


def garbage(rng, base):
    n = rng.choice([rng.randrange(8, 64), rng.randrange(64, 4096), rng.randrange(4096, 200_000)])
    kind = rng.choice(["random", "zeros", "ff", "text"])
    if kind == "random":
        data = rng.randbytes(n)
    elif kind == "zeros":
        data = b"\0" * (n - 8) + b"\x08\x00\x16\x00UI\xff\xff"  # (0008,0016) of 65535 bytes at the end
    elif kind == "ff":
        data = b"\xff" * n
    else:
        data = (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * (n // 27 + 1))[:n]
    return f"{n} bytes of {kind}", data


def part10_as_dataset(rng, base):
    preamble = rng.choice([b"\0" * 128, rng.randbytes(128), b"II*\0" + rng.randbytes(124)])
    return "preamble, DICM and file meta sent as the data set", preamble + b"DICM" + _meta(base) + base.data


def empty_or_tiny(rng, base):
    n = rng.randrange(0, 8)
    return f"{n} bytes", base.data[:n]


def unterminated_sequence(rng, base):
    depth = rng.choice([1, 2, 10, 100, 500, 2000])
    tag = rng.choice([b"\x08\x00\x15\x11", b"\x40\x00\x75\x02", b"\x09\x00\x10\x10"])  # an SQ and a private one
    if base.implicit:
        opener = tag + b"\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    else:
        opener = tag + b"SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    first = base.elements()[0]
    return f"{depth} nested undefined-length sequences, never closed", base.data[:first.end] + opener * depth


IMAGE_PIXEL = {0x00280010: ("Rows", (0, 1, 3, 7, 0x7FFF, 0xFFFF)), 0x00280011: ("Columns", (0, 1, 3, 7, 0x7FFF, 0xFFFF)),
               0x00280100: ("BitsAllocated", (0, 3, 7, 12, 0x7FFF, 0xFFFF)), 0x00280002: ("SamplesPerPixel", (0, 3, 4))}


def bad_pixels(rng, base):
    items = base.elements()
    pixels = _pick(rng, items, (0x7FE00010,))
    choice = rng.randrange(4)
    if choice == 0:
        keep = rng.randrange(0, pixels.end - pixels.value_at - 1) & ~1
        return f"Pixel Data of {keep} bytes", _replace_value(base, pixels, base.data[pixels.value_at:pixels.value_at + keep])
    if choice in (1, 2):
        element = _pick(rng, items, tuple(IMAGE_PIXEL))
        name, values = IMAGE_PIXEL[element.tag]
        value = rng.choice(values)
        return f"{name} = {value}", _replace_value(base, element, struct.pack("<H", value))
    return "Pixel Data left out", base.data[:pixels.start]


DATASET_FAMILIES = {
    "truncated": truncated, "giant_length": giant_length, "wrong_vr": wrong_vr, "bad_uid": bad_uid,
    "missing_attribute": missing_attribute, "sop_class_mismatch": sop_class_mismatch,
    "wrong_byte_order": wrong_byte_order, "bit_flip": bit_flip, "garbage": garbage,
    "part10_as_dataset": part10_as_dataset, "empty_or_tiny": empty_or_tiny,
    "unterminated_sequence": unterminated_sequence, "bad_pixels": bad_pixels,
}


def bad_datasets(n: int, seed: int = 1, *, bases: list[Encoded] | None = None) -> list[BadDataset]:
    """``n`` bad data sets, cycling through the families over the good instances."""
    rng = random.Random(seed)
    bases = bases or encoded_instances(seed)
    names = list(DATASET_FAMILIES)
    out = []
    while len(out) < n:
        family = names[len(out) % len(names)]
        base = rng.choice([b for b in bases if b.routed] if family == "bad_pixels" else bases)
        detail, data = DATASET_FAMILIES[family](rng, base)
        out.append(BadDataset(family, f"{base.name} {'implicit' if base.implicit else 'explicit'}: {detail}",
                              base.sop_class, base.sop_instance, base.transfer_syntax, data))
    return out


def deflated_garbage(rng: random.Random, base: Encoded) -> BadDataset:
    """A data set on a Deflated Explicit VR Little Endian context that is not a deflate stream, or that
    inflates to a data set cut inside an element."""
    if rng.random() < 0.5:
        data = rng.randbytes(rng.randrange(1, 2048))
    else:
        explicit = encode(_decode(base), False, True, False)
        element = rng.choice(list(elements(explicit, False)))
        cut = rng.randrange(element.start + 1, element.end)
        packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = packer.compress(explicit[:cut]) + packer.flush()
    return BadDataset("deflated_garbage", base.name, base.sop_class, base.sop_instance, DEFLATED, data)


# -- Part 10 files (STOW-RS) -------------------------------------------------------------------
def _meta(base: Encoded, syntax: str | None = None) -> bytes:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = base.sop_class
    meta.MediaStorageSOPInstanceUID = base.sop_instance
    meta.TransferSyntaxUID = syntax or base.transfer_syntax
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buffer = io.BytesIO()
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


def part10(bad: BadDataset | Encoded, syntax: str | None = None) -> bytes:
    """``bad`` as a DICOM file: preamble, prefix, file meta information and the data set."""
    base = bad if isinstance(bad, Encoded) else Encoded("", bad.sop_class, bad.sop_instance,
                                                        bad.transfer_syntax, False, bad.data)
    return b"\0" * 128 + b"DICM" + _meta(base, syntax) + base.data


BAD_SYNTAXES = ("", "1.2.3.4", "1.2.840.10008.1.2.9", "garbage", "1.2.840.10008.5.1.4.1.1.2",
                "1.2.840.10008.1.2.1.", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.90")


def bad_file_meta(rng: random.Random, base: Encoded) -> tuple[str, str, bytes]:
    """A Part 10 file with a broken preamble, prefix or file meta information: family, detail, bytes."""
    meta = _meta(base)
    choice = rng.randrange(6)
    if choice == 0:
        cut = rng.randrange(0, 132)
        return "preamble", f"cut to {cut} bytes", rng.randbytes(cut) + b"DICM" + meta + base.data
    if choice == 1:
        prefix = rng.choice([b"DICN", b"dicm", b"\0\0\0\0", b"MCID"])
        return "prefix", f"{prefix!r}", b"\0" * 128 + prefix + meta + base.data
    if choice == 2:
        group_length = rng.choice([0, 2, 0x7FFFFFFF, 0xFFFFFFFE, len(meta) + len(base.data) + 1])
        return ("group_length", f"{group_length:#x}",
                b"\0" * 128 + b"DICM" + _set(meta, 8, struct.pack("<L", group_length)) + base.data)
    if choice == 3:
        cut = rng.randrange(1, len(meta))
        return "meta_cut", f"at {cut}", b"\0" * 128 + b"DICM" + meta[:cut]
    if choice == 4:  # a transfer syntax UID that is not one, or one that does not describe the data
        syntax = rng.choice(BAD_SYNTAXES)
        routed = replace(base, transfer_syntax=syntax) if syntax else base
        if not syntax:
            return "transfer_syntax", "none", part10(base)[:132] + _without_syntax(meta) + base.data
        return "transfer_syntax", f"{syntax!r}", part10(routed)
    implicit_meta = encode(_meta_dataset(base), True, True, False)
    return "implicit_meta", "file meta in Implicit VR", b"\0" * 128 + b"DICM" + implicit_meta + base.data


def _meta_dataset(base: Encoded) -> Dataset:
    from pydicom.filereader import read_dataset

    return read_dataset(io.BytesIO(_meta(base)), False, True)


def _without_syntax(meta: bytes) -> bytes:
    items = list(elements(meta, False))
    kept = b"".join(meta[e.start:e.end] for e in items[1:] if e.tag != 0x00020010)
    return meta[:items[0].value_at] + struct.pack("<L", len(kept)) + kept


# -- PDUs (PS3.8) ------------------------------------------------------------------------------
@dataclass(frozen=True)
class BadPdu:
    """Bytes sent on a fresh connection (``associated=False``) or after a good association."""

    family: str
    detail: str
    associated: bool
    data: bytes


def _good_rq(contexts) -> bytes:
    return wire.associate_rq(contexts)


def _items_of_rq(rq: bytes) -> list[int]:
    """Offsets of the variable items (and presentation context sub-items) of an A-ASSOCIATE-RQ."""
    offsets, pos = [], 74
    while pos + 4 <= len(rq):
        offsets.append(pos)
        kind, length = rq[pos], struct.unpack_from(">H", rq, pos + 2)[0]
        if kind in (0x20, 0x50):
            sub = pos + (8 if kind == 0x20 else 4)
            while sub + 4 <= pos + 4 + length:
                offsets.append(sub)
                sub += 4 + struct.unpack_from(">H", rq, sub + 2)[0]
        pos += 4 + length
    return offsets


def _before(rng: random.Random, contexts) -> tuple[str, str, bytes]:
    rq = _good_rq(contexts)
    family = rng.choice(["garbage", "truncated_rq", "rq_length", "rq_item_length", "unknown_pdu",
                         "out_of_order", "bad_rq_fields"])
    if family == "garbage":
        data = rng.randbytes(rng.choice([rng.randrange(1, 16), rng.randrange(16, 2048)]))
        return family, f"{len(data)} random bytes", data
    if family == "truncated_rq":
        cut = rng.randrange(1, len(rq))
        return family, f"cut at {cut} of {len(rq)}", rq[:cut]
    if family == "rq_length":
        length = rng.choice([0, 1, 67, len(rq) - 7, len(rq) - 5, len(rq) + rng.randrange(1, 5000), 0xFFFFFFFF])
        return family, f"PDU length {length:#x}, {len(rq) - 6} bytes sent", _set(rq, 2, struct.pack(">L", length))
    if family == "rq_item_length":
        at = rng.choice(_items_of_rq(rq))
        length = rng.choice([0, 1, 0xFFFF, struct.unpack_from(">H", rq, at + 2)[0] + rng.choice([-3, -1, 1, 7, 300])])
        length &= 0xFFFF
        return family, f"item 0x{rq[at]:02X} at {at} length {length}", _set(rq, at + 2, struct.pack(">H", length))
    if family == "unknown_pdu":
        kind = rng.choice([0x00, 0x08, 0x09, 0x10, 0x7F, 0xFF])
        return family, f"PDU type 0x{kind:02X}", wire.pdu(kind, rng.randbytes(rng.randrange(0, 256)))
    if family == "out_of_order":
        choice = rng.randrange(5)
        data = [wire.p_data(1, wire.c_store_rq(*contexts[0][1:2], "1.2.3.4", 1), command=True),
                wire.pdu(wire.A_RELEASE_RQ, b"\0" * 4), wire.pdu(wire.A_ASSOCIATE_AC, rq[6:]),
                wire.pdu(wire.A_RELEASE_RP, b"\0" * 4), wire.pdu(wire.A_ABORT, b"\0\0\0\0")][choice]
        return family, ["P-DATA-TF", "A-RELEASE-RQ", "A-ASSOCIATE-AC", "A-RELEASE-RP", "A-ABORT"][choice], data
    choice = rng.randrange(1, 7)
    detail = ["", "application context 1.2.3.4", "called AE title of bytes 0xFF",
              "no presentation context", "abstract syntax 'x.y'", "only unknown transfer syntaxes",
              "even presentation context ids"][choice]
    if choice == 1:
        data = wire.associate_rq(contexts).replace(wire._item(0x10, wire.APPLICATION_CONTEXT), wire._item(0x10, b"1.2.3.4"))
        data = _set(data, 2, struct.pack(">L", len(data) - 6))
    elif choice == 2:
        data = wire.associate_rq(contexts, called=b"\xff" * 16)
    elif choice == 3:
        data = wire.associate_rq([])
    elif choice == 4:
        data = wire.associate_rq([(1, "x.y", contexts[0][2])])
    elif choice == 5:
        data = wire.associate_rq([(i, a, "1.2.3.4.5") for i, a, _ in contexts])
    else:
        data = wire.associate_rq([(i + 1, a, t) for i, a, t in contexts])
    return "bad_rq_fields", detail, data


def _after(rng: random.Random, contexts) -> tuple[str, str, bytes]:
    context_id, sop_class, _ = contexts[0]
    command = wire.c_store_rq(sop_class, "1.2.3.4", 1)
    family = rng.choice(["pdv_length", "unknown_context", "bad_command", "dataset_first", "giant_pdu",
                         "unexpected_pdu"])
    if family == "pdv_length":
        good = wire.p_data(context_id, command, command=True)
        length = rng.choice([0, 1, 2, len(command) + 3, 0x7FFFFFFF, 0xFFFFFFFF])
        return family, f"PDV length {length:#x}", _set(good, 6, struct.pack(">L", length))
    if family == "unknown_context":
        other = rng.choice([2, 0, 255, 127])
        return family, f"context id {other}", wire.p_data(other, command, command=True)
    if family == "bad_command":
        choice = rng.randrange(6)
        if choice == 0:
            body = rng.randbytes(rng.randrange(1, 512))
        elif choice == 1:
            body = command[:rng.randrange(1, len(command))]
        elif choice == 2:
            body = command.replace(b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00", b"\x00\x00\x00\x01\x02\x00\x00\x00\xff\x0f")
        elif choice == 3:
            ds = read_dataset_implicit(command[12:])
            del ds.AffectedSOPInstanceUID
            body = wire.encode_command(ds)
        elif choice == 4:
            body = _set(command, 8, struct.pack("<L", 0xFFFFFF))  # Command Group Length past the end
        else:
            return "bad_command", "command fragments never end, then a data set", (
                wire.p_data(context_id, command[:20], command=True, last=False)
                + wire.p_data(context_id, b"\0" * 64, command=False))
        return family, ["random bytes", "truncated", "unknown Command Field", "no Affected SOP Instance UID",
                        "group length past the end"][choice], wire.p_data(context_id, body, command=True)
    if family == "dataset_first":
        return family, "a data set PDV before any command", wire.p_data(context_id, b"\x08\x00\x16\x00" + b"\0" * 60, command=False)
    if family == "giant_pdu":
        length = rng.choice([0x7FFFFFFF, 0xFFFFFFF0, 1 << 20])
        return family, f"P-DATA-TF length {length:#x}, 64 bytes sent", struct.pack(">BBL", 4, 0, length) + b"\0" * 64
    kind = rng.randrange(4)
    data = [_good_rq(contexts), wire.pdu(wire.A_ASSOCIATE_AC, b"\0" * 68), wire.pdu(0x55, b"\0" * 10),
            wire.pdu(wire.A_RELEASE_RP, b"\0" * 4)][kind]
    return family, ["A-ASSOCIATE-RQ again", "A-ASSOCIATE-AC", "PDU type 0x55", "A-RELEASE-RP unasked"][kind], data


def read_dataset_implicit(data: bytes) -> Dataset:
    from pydicom.filereader import read_dataset

    return read_dataset(io.BytesIO(data), True, True)


def bad_pdus(n: int, contexts: list[tuple[int, str, str]], seed: int = 2) -> list[BadPdu]:
    """``n`` bad PDU streams, half before and half after a good association on ``contexts``."""
    rng = random.Random(seed)
    out = []
    for index in range(n):
        associated = index % 2 == 1
        family, detail, data = (_after if associated else _before)(rng, contexts)
        out.append(BadPdu(family, detail, associated, data))
    return out


def report(name: str, counts: dict) -> None:
    """Print ``counts`` and add them under ``name`` to the JSON file named by MEDGATE_FUZZ_REPORT."""
    print(f"\n{name}: {json.dumps(counts, sort_keys=True)}")
    path = os.environ.get("MEDGATE_FUZZ_REPORT")
    if path:
        existing = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        Path(path).write_text(json.dumps({**existing, name: counts}, indent=2, sort_keys=True) + "\n")


# -- MQTT vitals payloads ----------------------------------------------------------------------
T0_MS = 1_795_000_000_000  # 2026-11-18
FULL = {"patient": {"id": "P1"}, "time": "2026-11-22T10:00:00+07:00",
        "vitals": [{"code": "8867-4", "value": 80, "unit": "/min"}, {"code": "59408-5", "value": 97, "unit": "%"}]}
COMPACT = {"d": "dev1", "t": T0_MS, "v": [[147842, 80], [150456, 97]], "o": False, "c": "A", "s": 1}
ECG = {"d": "dev1", "t": T0_MS, "ecg": {"period_ms": 4, "factor": 0.005, "origin": 0,
                                         "leads": [{"code": 131330, "data": [12, 15, 19]}]}}
ADT = {"event": "admit", "device": "dev1", "patient": {"id": "P1"}, "time": "2026-11-22T09:00:00+07:00"}
#: Values of the wrong type, per kind of field (each is refused for every field of its kind).
WRONG = {
    "number": ("80", True, False, None, [], {}, [80], {"v": 80}, ""),
    "string": (True, None, [], {}, ["P1"], 80, 1.5, "", " "),
    "object": ("P1", 80, [], None, True, [{}]),
    "array": ("x", 80, {}, None, True, []),
    "item": ("x", 80, [], None, True),
    "pair": ("x", 80, {}, None, [147842], [147842, 80, 1], []),
    "code": (True, None, 1.5, "x", [147842], {"code": 147842}, [], -1),
    "bool": ("yes", 1, 0, [], {}, "true"),
    "acvpu": (1, [], {}, "X", True, ["A"], "alert"),
    "scale": (3, 0, "1", True, [], {}, 1.5, None),
    "epoch": (0, -1, 1_795_000_000, 946_684_799_999, 4_102_444_800_001, "1795000000000", 1.795e12, True, None, []),
}
FIELDS = {
    "full": (FULL, {("patient",): "object", ("patient", "id"): "string", ("patient", "system"): "string",
                            ("time",): "string", ("vitals",): "array", ("vitals", 0): "item",
                            ("vitals", 0, "code"): "string", ("vitals", 0, "system"): "string",
                            ("vitals", 0, "value"): "number", ("vitals", 0, "unit"): "string",
                            ("on_oxygen",): "bool", ("consciousness",): "acvpu", ("spo2_scale",): "scale",
                            ("device",): "string"}),
    "compact": (COMPACT, {("d",): "string", ("t",): "epoch", ("v",): "array", ("v", 0): "pair", ("v", 0, 0): "code",
                       ("v", 0, 1): "number", ("o",): "bool", ("c",): "acvpu", ("s",): "scale"}),
    "ecg": (ECG, {("d",): "string", ("t",): "epoch", ("ecg",): "object", ("ecg", "period_ms"): "number",
                   ("ecg", "factor"): "number", ("ecg", "origin"): "number", ("ecg", "leads"): "array",
                   ("ecg", "leads", 0): "item", ("ecg", "leads", 0, "code"): "code",
                   ("ecg", "leads", 0, "data"): "array", ("ecg", "leads", 0, "data", 0): "number"}),
}
BAD_TIMES = ("2026-11-22T10:00:00", "2026-11-22 10:00:00Z", "2026-13-45T99:99:99Z", "2026-02-30T10:00:00Z",
             "yesterday", "", "2026-11-22T10:00Z", "2026-11-22T10:00:00+25:00", "2026-11-22T24:00:00Z",
             "22/11/2026 10:00", "2026-11-22T10:00:00.1234567890Z", "\u0662\u0660\u0662\u0666-11-22T10:00:00Z",
             "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1999-12-31T23:59:59Z", "2100-01-01T00:00:01Z",
             1795000000, None, ["2026-11-22T10:00:00Z"])


@dataclass(frozen=True)
class BadPayload:
    family: str
    detail: str
    topic: str
    payload: bytes


def _dump(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


def _mutate(doc: dict, path: tuple, value):
    """A deep copy of ``doc`` with the value at ``path`` replaced (``...``: deleted)."""
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


def _vitals_payload(rng: random.Random) -> tuple[str, str, bytes]:
    family = rng.choice(["not_json", "non_finite", "wrong_type", "wrong_type", "wrong_type", "out_of_range",
                         "unknown_code_or_unit", "missing_field", "unknown_field", "duplicate_key", "bad_time",
                         "deep_nesting", "oversize", "invalid_utf8"])
    if family == "not_json":
        text = _dump(rng.choice([FULL, COMPACT, ECG]))
        choice = rng.randrange(5)
        if choice == 0:
            data = text[:rng.randrange(0, len(text))]
        elif choice == 1:
            data = rng.randbytes(rng.randrange(1, 300))
        elif choice == 2:
            data = rng.choice([b"null", b"[]", b"42", b'"vitals"', b"true", b"[{}]", b" ", b"\x00", b"{}"])
        elif choice == 3:
            data = text.replace(b'"', b"'")  # Python, not JSON
        else:
            data = text[:-1] + b",}"
        return family, repr(data[:40]), data
    if family == "non_finite":
        token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-1e400"])
        if rng.random() < 0.5:
            return family, f"full form value {token!r}", _dump(FULL).replace(b'"value": 80', b'"value": ' + token)
        return family, f"compact value {token!r}", _dump(COMPACT).replace(b"[147842, 80]", b"[147842, " + token + b"]")
    if family == "wrong_type":
        form = rng.choice(list(FIELDS))
        doc, fields = FIELDS[form]
        path, kind = rng.choice(list(fields.items()))
        value = rng.choice(WRONG[kind])
        return family, f"{form} {list(path)} = {str(value)[:40]}", _dump(_mutate(doc, path, value))
    if family == "out_of_range":
        path, value = rng.choice([
            (("vitals", 1), {"code": "59408-5", "value": rng.choice([1.01, 97, -0.1, 2]), "unit": "1"}),
            (("vitals",), FULL["vitals"] * 40), (("v",), COMPACT["v"] * 40),
            (("ecg", "period_ms"), rng.choice([0, -4, 1000.5, 5000])),
            (("ecg", "leads"), [{"code": 131330, "data": [1, 2]}] * 13),
            (("ecg", "leads", 0, "data"), [1] * 5001),
            (("ecg", "leads"), [{"code": 131329, "data": [1, 2]}, {"code": 131330, "data": [1, 2, 3]}])])
        doc = FULL if path[0] == "vitals" else COMPACT if path[0] == "v" else ECG
        return family, f"{list(path)} = {str(value)[:40]}", _dump(_mutate(doc, path, value))
    if family == "unknown_code_or_unit":
        choice = rng.randrange(5)
        if choice == 0:
            vital = {"code": rng.choice(["1234-5", "8867", "8867-4-1", "abc", "999999", "8867\u20134"]), "value": 80, "unit": "/min"}
        elif choice == 1:
            vital = {"code": "8867-4", "value": 80, "unit": rng.choice(["kg", "/s", "bpm ", "mm[Hg]", "%", "Cel"])}
        elif choice == 2:
            vital = {"code": "8867-4", "system": rng.choice(["http://snomed.info/sct", "loinc", "urn:x"]), "value": 80, "unit": "/min"}
        elif choice == 3:
            return family, "compact code", _dump(_mutate(COMPACT, ("v", 0, 0), rng.choice([1, 999999, -147842, "8867-4", 0])))
        else:
            return family, "ECG lead", _dump(_mutate(ECG, ("ecg", "leads", 0, "code"), rng.choice([1, 147842, "II", 0])))
        return family, repr(vital), _dump(_mutate(FULL, ("vitals", 0), vital))
    if family == "missing_field":
        doc, paths = rng.choice([(FULL, [("patient",), ("patient", "id"), ("time",), ("vitals",), ("vitals", 0, "code"),
                                         ("vitals", 0, "value"), ("vitals", 0, "unit")]),
                                 (COMPACT, [("t",), ("v",)]), (ECG, [("t",), ("ecg", "leads"), ("ecg", "period_ms")])])
        path = rng.choice(paths)
        return family, f"{list(path)} left out", _dump(_mutate(doc, path, ...))
    if family == "unknown_field":
        doc, path = rng.choice([(FULL, ("extra",)), (FULL, ("patient", "name")), (FULL, ("vitals", 0, "note")),
                                (COMPACT, ("x",)), (ECG, ("ecg", "gain")), (ECG, ("v",))])
        return family, f"{list(path)} added", _dump(_mutate(doc, path, rng.choice([1, "x", None, []])))
    if family == "duplicate_key":
        key = rng.choice([b'"time"', b'"patient"', b'"vitals"'])
        return family, f"{key!r} twice", _dump(FULL)[:-1] + b", " + key + b": " + (b'"x"' if key == b'"time"' else b"{}") + b"}"
    if family == "bad_time":
        if rng.random() < 0.6:
            value = rng.choice(BAD_TIMES)
            return family, f"full form time {value!r}", _dump(_mutate(FULL, ("time",), value))
        value = rng.choice(WRONG["epoch"])
        return family, f"compact t {value!r}", _dump(_mutate(rng.choice([COMPACT, ECG]), ("t",), value))
    if family == "deep_nesting":
        depth = rng.choice([1_100, 10_000, 100_000])
        if rng.random() < 0.5:
            nested = b"[" * depth + b"]" * depth
            return family, f"{depth} nested arrays in a vital value", _dump(FULL).replace(b'"value": 80', b'"value": ' + nested)
        return family, f"{depth} nested objects in a compact payload", b'{"d": "dev1", "x": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    if family == "oversize":
        n = rng.choice([64 * 1024 + 1, 200_000, 1_000_000])
        if rng.random() < 0.5:
            return family, f"{n} bytes, full form", _dump(_mutate(FULL, ("patient", "id"), "x" * n))
        return family, f"{n} bytes, compact", _dump(_mutate(COMPACT, ("v",), [[147842, 80]] * (n // 12)))
    bad = rng.choice([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\x80", b"\xf8\x88\x80\x80\x80"])
    text = _dump(rng.choice([FULL, COMPACT]))
    at = text.index(b'"', 2) + 1  # inside the first string value or key
    return "invalid_utf8", f"{bad!r} at {at}", text[:at] + bad + text[at:]


def _adt_payload(rng: random.Random) -> tuple[str, str, bytes]:
    choice = rng.randrange(8)
    if choice == 0:
        data = _dump(ADT)[:rng.randrange(0, 40)]
        return "adt", "not JSON", data
    path, value = [(["event"], rng.choice(["admitted", "", None, 1])), (["device"], rng.choice(["", " ", None, 5, []])),
                   (["time"], rng.choice(BAD_TIMES + (None, 5))), (["patient"], rng.choice([None, "P1", [], {"name": "x"}])),
                   (["patient", "id"], rng.choice(["", None, 5])), (["spo2_scale"], rng.choice([3, "2", True, []])),
                   (["extra"], 1)][choice - 1]
    return "adt", f"{path} = {value!r}", _dump(_mutate(ADT, tuple(path), value))


def bad_vitals_payloads(n: int, seed: int = 4, prefix: str = "medgate", adt_share: float = 0.08) -> list[BadPayload]:
    """``n`` bad payloads: vitals (full, compact and ECG forms, on both topic forms) and ADT messages."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < adt_share:
            family, detail, data = _adt_payload(rng)
            out.append(BadPayload(family, detail, f"{prefix}/adt", data))
            continue
        family, detail, data = _vitals_payload(rng)
        topic = rng.choice([f"{prefix}/h1/w1/b1/dev1/vitals", f"{prefix}/w1/b1/vitals"])
        out.append(BadPayload(family, detail, topic, data))
    return out
