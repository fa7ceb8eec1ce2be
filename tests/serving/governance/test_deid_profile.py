"""The shipped PS3.15 Table E.1-1 and attribute Types: complete, of a recorded edition, rebuilt
from their sources by ``python -m tools.deid_table``."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from serving.governance.deid_profile import (
    BASIC_PROFILE,
    GROUP_RULES,
    TABLE_EDITION,
    TABLE_SOURCE,
    action,
    attribute_type,
    choose,
)

ROOT = Path(__file__).resolve().parents[3]
needs_source = pytest.mark.skipif(importlib.util.find_spec("dicomanonymizer") is None,
                                  reason="dicom-anonymizer (dev extras) not installed: the source cannot be read")
DX = "1.2.840.10008.5.1.4.1.1.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
VL_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def test_table_is_complete_and_its_edition_recorded():
    assert TABLE_EDITION == "2026c" and "dicom-anonymizer" in TABLE_SOURCE
    counts = Counter(todo for _name, todo in BASIC_PROFILE.values())
    assert counts == {"X": 412, "D": 93, "U": 55, "Z": 42, "X/D": 23, "X/Z": 11, "X/Z/D": 8, "Z/D": 6, "X/Z/U*": 2}
    assert len(BASIC_PROFILE) == 652
    assert {name for _v, _m, name, _a in GROUP_RULES} == {
        "Private Attributes", "Curve Data", "Overlay Comments", "Overlay Data"}


@pytest.mark.parametrize(("tag", "expected"), [
    (0x0040A730, "D"),  # Content Sequence: kept as a dummy, not removed
    (0x00400555, "X/Z"),  # Acquisition Context Sequence
    (0x00160072, "X"),  # GPS Latitude
    (0x0016004D, "X"),  # Camera Owner Name
    (0x0016002B, "X"),  # Maker Note
    (0x00100010, "Z"),  # Patient's Name
    (0x00091010, "X"),  # private
    (0x50023000, "X"),  # curve data
    (0x60024000, "X"),  # overlay comments
    (0x60003000, "X"),  # overlay data
    (0x60000010, None),  # overlay rows: not identifying
    (0x00080060, None),  # Modality: not listed
])
def test_action_of_attribute_and_group_rows(tag, expected):
    assert action(tag) == expected


def test_types_come_from_the_iod():
    assert attribute_type(VL_PHOTOGRAPHIC, ["AcquisitionContextSequence"]) == "2"
    assert attribute_type(DX, ["AcquisitionContextSequence"]) == "2"
    assert attribute_type(CT, ["AcquisitionContextSequence"]) == "3"
    assert attribute_type(COMPREHENSIVE_3D_SR, ["ContentDate"]) == "1"
    assert attribute_type(DX, ["OperatorIdentificationSequence", "InstitutionName"]) == "1C"
    assert attribute_type("1.2.3.4", ["AcquisitionContextSequence"]) == "3"  # unknown SOP Class


@pytest.mark.parametrize(("todo", "kind", "expected"), [
    ("X/Z", "3", "X"), ("X/Z", "2", "Z"), ("X/D", "2", "D"), ("X/D", "1", "D"), ("X/Z/D", "2C", "Z"),
    ("X/Z/D", "1", "D"), ("Z/D", "3", "Z"), ("Z/D", "1C", "D"), ("X/Z/U*", "1", "U"), ("X/Z/U*", "3", "X"),
    ("D", "3", "D"),
])
def test_composite_actions_by_type(todo, kind, expected):
    assert choose(todo, kind) == expected


def test_bad_action_or_type_is_named():
    with pytest.raises(ValueError, match="'4' is given"):
        choose("X/Z", "4")
    with pytest.raises(ValueError, match="'X/K' is given"):
        choose("X/K", "3")


def test_table_is_shipped_as_package_data():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"governance/deid_data/*.json"' in pyproject


@needs_source
def test_shipped_data_is_what_the_sources_give():
    result = subprocess.run([sys.executable, "-m", "tools.deid_table", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@needs_source
def test_every_row_of_the_2024b_edition_is_shipped_with_its_action():
    sys.path.insert(0, str(ROOT))
    from tools.deid_table import build_table

    older = build_table("2024b")
    assert len(older["attributes"]) == 617
    for row in older["attributes"]:
        assert BASIC_PROFILE[int(row["tag"], 16)][1] == row["action"], row
