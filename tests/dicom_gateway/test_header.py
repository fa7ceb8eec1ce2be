"""read_header (dicom_gateway/header.py) against pydicom: the same values the checks read, and
pydicom where the fast path does not apply."""
from __future__ import annotations

import io

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import decode, encode

from dicom_gateway import dimse
from dicom_gateway.header import ATTRIBUTES, palette_problem, read_header
from dicom_gateway.wellformed import dataset_problem
from dicom_testdata import make_ct_series, make_photo_dataset
from training.synthetic.dicom import make_dx_dataset


def _encoded(ds: Dataset, syntax: str) -> bytes:
    from pydicom.filebase import DicomFileLike
    buffer = io.BytesIO()
    stream = DicomFileLike(buffer)
    stream.is_little_endian, stream.is_implicit_VR = syntax != ExplicitVRBigEndian, syntax == ImplicitVRLittleEndian
    write_dataset(stream, ds)
    return buffer.getvalue()


def _header(data: bytes, syntax: str):
    top = []
    assert dataset_problem(data, syntax, top) is None
    return read_header(data, syntax, top)


def _ct() -> Dataset:
    ds = make_ct_series(np.zeros((3, 16, 16), np.uint16))[1]
    ds.NumberOfStudyRelatedInstances = 3
    ds.SeriesDescription = "Ngực không cản quang"  # a Vietnamese description, in UTF-8
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.BodyPartExamined = "CHEST"
    return ds


def _palette() -> Dataset:
    rgb = np.random.default_rng(3).integers(0, 255, (16, 16, 3)).astype(np.uint8)
    return make_photo_dataset(rgb, kind="sc", photometric="PALETTE COLOR")


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("make", [_ct, lambda: make_dx_dataset(np.zeros((64, 64), np.uint16)), _palette])
def test_header_values_equal_pydicom(syntax, make):
    ds = make()
    data = _encoded(ds, syntax)
    header = _header(data, syntax)
    decoded = decode(io.BytesIO(data), syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian)
    for keyword, _ in ATTRIBUTES.values():
        expected = decoded.get(keyword)
        if expected in (None, ""):
            assert keyword not in header and header.get(keyword, "x") == "x", keyword
        elif keyword == "ImageOrientationPatient":
            assert header.ImageOrientationPatient == [float(v) for v in expected]
        else:
            assert header.get(keyword) == expected and getattr(header, keyword) == expected, keyword
    assert bytes(header.PixelData) == decoded.PixelData
    assert header.file_meta.TransferSyntaxUID == syntax
    with pytest.raises(AttributeError):
        header.AccessionNumber  # noqa: B018 - not one of the attributes read


def test_pydicom_decodes_what_the_fast_path_does_not_apply_to():
    ds = _ct()
    ds.SeriesDescription = "CHEST"
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]  # code extensions: pydicom's job
    assert _header(_encoded(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian) is None
    ds = _ct()
    ds.add_new(0x00280010, "SS", 16)  # Rows with another VR than the dictionary's
    assert _header(_encoded(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian) is None
    ds = _ct()
    ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", 4, b"two ", 0, False, True)  # not a number
    assert _header(_encoded(ds, ExplicitVRLittleEndian), ExplicitVRLittleEndian) is None
    top = []
    assert read_header(b"", JPEG2000Lossless, top) is None  # compressed: the pixel check decodes


def test_command_sets_are_read_like_pydicom_reads_them():
    request = Dataset()
    request.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    request.CommandField, request.MessageID, request.Priority = 0x0001, 7, 0
    request.CommandDataSetType = 0x0000
    request.AffectedSOPInstanceUID = "1.2.3.4"
    data = encode(request, True, True)
    fast, slow = dimse.decode_command(data), decode(io.BytesIO(data), True, True)
    for keyword in ("AffectedSOPClassUID", "CommandField", "MessageID", "AffectedSOPInstanceUID"):
        assert getattr(fast, keyword) == getattr(slow, keyword)
    assert dimse.has_data_set(fast)
    assert dimse.encode_response(fast, 0) == dimse.encode_response(slow, 0)
    with pytest.raises(dimse.UpperLayerError):
        dimse.decode_command(b"\x00\x00\x00\x01\xff\xff")


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_palette_tables_are_checked_against_their_descriptors(syntax):
    """The C-STORE header carries the palette descriptors and table lengths, so a broken palette is
    found at intake (it passed the length check and failed later, in its study)."""
    assert palette_problem(_header(_encoded(_palette(), syntax), syntax)) is None
    short = _palette()
    short.GreenPaletteColorLookupTableData = short.GreenPaletteColorLookupTableData[:256]  # 128 entries
    assert "hold 256 entries of 16 bits each" in palette_problem(_header(_encoded(short, syntax), syntax))
    twelve = _palette()
    for colour in ("Red", "Green", "Blue"):
        setattr(twelve, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 12])
    assert "8 or 16 bits per entry" in palette_problem(_header(_encoded(twelve, syntax), syntax))
    missing = _palette()
    del missing.BluePaletteColorLookupTableDescriptor
    assert "of three values" in palette_problem(_header(_encoded(missing, syntax), syntax))
    for broken in (short, twelve, missing):  # a pydicom Dataset gets the same answer
        assert palette_problem(broken) is not None
    assert palette_problem(_ct()) is None  # not PALETTE COLOR
