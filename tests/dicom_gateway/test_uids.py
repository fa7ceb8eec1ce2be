"""The UID grammar of PS3.5 9.1 and paths kept inside their folder."""
from __future__ import annotations

import pytest

from dicom_gateway.storage import instance_path
from dicom_gateway.uids import MAX_UID_LENGTH, PathOutsideFolder, check_uid, inside, is_uid


@pytest.mark.parametrize("value", [
    "1.2", "0.0", "1.2.840.10008.5.1.4.1.1.1.1", "2.25.157459375018971029476997973147153175181",
    "1.2.3\x00", "1.2.3 ", "1." + "1" * (MAX_UID_LENGTH - 2),
])
def test_uids_by_ps3_5_9_1_are_accepted(value):
    assert is_uid(value)
    assert check_uid("StudyInstanceUID", value) == value.rstrip("\x00 ")


@pytest.mark.parametrize("value", [
    "", ".", "..", "1", "12345", ".1.2", "1..2", "1.2.", "1.02", "01.2", "1.2.03",
    "/tmp/x", "../../../../tmp/x", "../spool/1.2.999.777", "1.2/../3", "1.2\\3", "1.2\x003", "+1.2",
    "1.2.a", "１.２", "1." + "1" * (MAX_UID_LENGTH - 1), "%2e%2e",
])
def test_everything_else_is_refused_naming_the_attribute_and_value(value):
    assert not is_uid(value)
    with pytest.raises(ValueError, match="StudyInstanceUID must be a DICOM UID") as caught:
        check_uid("StudyInstanceUID", value)
    assert repr(value)[:20] in str(caught.value)


def test_inside_resolves_and_refuses_escapes(tmp_path):
    base = tmp_path / "results"
    base.mkdir()
    assert inside(base, "1.2.3", "SR-1.2.4.dcm") == (base / "1.2.3" / "SR-1.2.4.dcm").resolve()
    for parts in (("..", "medgate.sqlite3"), ("1.2", ".."), ("/etc/passwd",), ("a/../../b",), ("",), ()):
        with pytest.raises(PathOutsideFolder):
            inside(base, *parts)
    (base / "1.2.3").symlink_to(tmp_path)  # a link planted in the folder leads out: refused too
    with pytest.raises(PathOutsideFolder, match="outside"):
        inside(base, "1.2.3", "medgate.sqlite3")


def test_spool_paths_check_both_uids(tmp_path):
    assert instance_path(tmp_path, "1.2.3", "1.2.4") == tmp_path / "1.2.3" / "1.2.4.dcm"
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        instance_path(tmp_path, "../spool/1.2.999.777", "1.2.4")
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        instance_path(tmp_path, "1.2.3", "1.2.04")
