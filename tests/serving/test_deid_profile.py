"""PS3.15 Basic Profile de-identification, attribute by attribute, on pydicom's test files."""
from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from serving.deid import DeidentificationError, Deidentifier
from serving.deid_profile import BASIC_PROFILE

FILES = ["CT_small.dcm", "MR_small.dcm", "SC_rgb_small_odd.dcm", "examples_overlay.dcm", "rtdose.dcm",
         "liver_1frame.dcm", "JPEG2000.dcm", "nested_priv_SQ.dcm"]
SALT = b"0123456789abcdef-test-salt"
_VALUES = {"PN": "Doe^Jane", "DA": "20261102", "TM": "101010", "DT": "20261102101010", "LO": "IDENT123",
           "SH": "IDENT123", "LT": "Jane Doe text", "ST": "Jane Doe text", "UT": "Jane Doe text",
           "CS": "IDENT", "AE": "SCANNER1", "DS": "1.5", "IS": "7", "AS": "042Y", "UC": "Jane Doe",
           "UR": "http://example.org/jane", "US": 7, "UL": 7, "SS": 7, "SL": 7, "FL": 1.5, "FD": 1.5,
           "OB": b"\x01\x02", "OW": b"\x01\x02"}


def identifying(tag: int):
    """(VR, value) that an identifying attribute could carry, or None for VRs not filled here."""
    vr = dictionary_VR(tag)
    if vr == "UI":
        return vr, generate_uid()
    if vr == "SQ":
        item = Dataset()
        item.PatientName = "Doe^Jane"
        item.ReferencedSOPInstanceUID = generate_uid()
        return vr, Sequence([item])
    return (vr, _VALUES[vr]) if vr in _VALUES else None


def loaded(name: str):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(reason=f"pydicom test file {name} is not available")
    ds = dcmread(path)
    ds.remove_private_tags()
    ds.add_new(0x00091010, "LO", "private vendor note")  # a private attribute
    ds.add_new(0x00091001, "LO", "Private Creator") if 0x00090010 not in ds else None
    ds.add_new(0x60004000, "LT", "overlay comment Jane Doe")
    for tag in BASIC_PROFILE:
        if tag >> 16 == 0x0002 or tag in ds:
            continue
        filled = identifying(tag)
        if filled:
            ds.add_new(tag, *filled)
    if "PatientID" not in ds or not ds.PatientID:
        ds.PatientID = "079123456789"
    return ds


@pytest.mark.parametrize("name", FILES)
def test_every_basic_profile_attribute_is_handled(name):
    ds = loaded(name)
    before = {tag: ds[tag].value for tag in BASIC_PROFILE if tag in ds}
    pixels = ds.get("PixelData")
    assert len(before) > 250, f"only {len(before)} profile attributes could be filled in {name}"
    deid = Deidentifier(SALT)
    out = deid.apply(ds)
    checked = 0
    for tag, original in before.items():
        keyword, action = BASIC_PROFILE[tag]
        vr = dictionary_VR(tag)
        where = f"{name}: ({tag >> 16:04X},{tag & 0xFFFF:04X}) {keyword} [{action}]"
        if vr in ("DA", "DT", "TM") and action not in ("X", "U") and keyword != "PatientBirthDate":
            assert tag in out, where  # Modified Dates option: kept, shifted
            if vr != "TM" and original:
                assert out[tag].value and out[tag].value != original, where
        elif action.startswith("X"):
            assert tag not in out, where
        elif action == "U":
            assert out[tag].value != original and str(out[tag].value).startswith("2.25."), where
        elif action == "Z" and keyword in ("PatientName", "PatientID"):
            assert str(out[tag].value).startswith("ANON-"), where
        elif action == "Z" or vr == "SQ":
            assert tag in out and not out[tag].value, where
        elif action in ("D", "Z/D"):  # a dummy (Z/D: or zero length)
            assert tag in out and out[tag].value != original, where
            assert out[tag].value or action == "Z/D", where
        else:
            pytest.fail(f"unchecked action {where}")
        checked += 1
    assert checked == len(before)
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert 0x60004000 not in out
    assert out.get("PixelData") == pixels  # pixel data intact, byte for byte
    assert out.PatientIdentityRemoved == "YES" and out.LongitudinalTemporalInformationModified == "MODIFIED"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107"]
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    text = str(out)
    assert "Doe^Jane" not in text and "079123456789" not in text


def test_uids_and_dates_are_consistent_per_salt_and_patient():
    a, b = loaded("CT_small.dcm"), loaded("CT_small.dcm")
    b.SOPInstanceUID = generate_uid()
    a.StudyDate = b.StudyDate = "20261102"
    a.SeriesDate = "20261105"
    deid = Deidentifier(SALT)
    out_a, out_b = deid.apply(a), deid.apply(b)
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID  # same study, same new UID
    assert out_a.SOPInstanceUID != out_b.SOPInstanceUID
    assert out_a.StudyDate == out_b.StudyDate  # same patient, same shift
    from datetime import datetime

    gap = datetime.strptime(out_a.SeriesDate, "%Y%m%d") - datetime.strptime(out_a.StudyDate, "%Y%m%d")
    assert gap.days == 3  # intervals kept
    other = Deidentifier(b"another-salt-0123456789").apply(loaded("CT_small.dcm"))
    assert other.StudyInstanceUID != out_a.StudyInstanceUID


def test_burned_in_annotation_is_not_exported():
    ds = loaded("CT_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="Burned In Annotation"):
        Deidentifier(SALT).apply(ds)
