"""The Basic Application Level Confidentiality Profile's attribute table, and attribute Types.

Table: DICOM PS3.15 Annex E, Table E.1-1 "Application Level Confidentiality Profile Attributes",
column "Basic Prof.", shipped as data in ``serving/governance/deid_data/table_e1_1.json`` with the edition it
is of (:data:`TABLE_EDITION`) and its source (the ``dicom-anonymizer`` package, whose tables are
generated from the standard).  ``python -m tools.deid_table`` regenerates it.  Action codes
(PS3.15 E.1.1):

* ``D`` replace with a non-zero length dummy value consistent with the VR;
* ``Z`` replace with a zero length value, or a dummy value consistent with the VR;
* ``X`` remove;
* ``U`` replace with a non-zero length UID, consistent within the set of instances;
* ``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``, ``X/Z/U*``: the one that keeps the IOD conformant, by the
  attribute's Type there (:func:`choose`); ``U*`` replaces the UIDs inside the sequence.

Group rows of the table (:data:`GROUP_RULES`): Private Attributes (odd group), Curve Data
``(50xx,xxxx)``, Overlay Comments ``(60xx,4000)`` and Overlay Data ``(60xx,3000)``, all ``X``.

Types: ``serving/governance/deid_data/iod_types.json`` holds, per IOD and nesting path, the Type 1/1C/2/2C of
each attribute with a composite action (and of the Person Name attributes the table does not
list), from the PS3.3 module tables that ``highdicom`` ships; everything else is Type 3
(:func:`attribute_type`).

DICOM is a registered trademark of NEMA.  Attribute names and actions are the standard's data.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

#: Basic Application Level Confidentiality Profile Option codes (PS3.16 CID 7050).
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
RETAIN_LONGITUDINAL_MODIFIED_DATES_CODE = ("113107", "DCM",
                                           "Retain Longitudinal Temporal Information Modified Dates Option")

#: Actions a composite may resolve to, most preferred first, by Type (PS3.5 7.4; PS3.15 E.1.1:
#: X for Type 3, Z for Type 2, D or U for Type 1).  1C and 2C: as 1 and 2 once present.
_PREFERENCE = {"1": "DUZX", "1C": "DUZX", "2": "ZDUX", "2C": "ZDUX", "3": "XZDU"}


def _load(name: str) -> dict:
    return json.loads(resources.files("serving.governance").joinpath("deid_data", name).read_text(encoding="utf-8"))


_TABLE = _load("table_e1_1.json")
_TYPES = _load("iod_types.json")

#: Edition of PS3.15 the shipped table is of, e.g. ``"2026c"``, and where it was taken from.
TABLE_EDITION: str = _TABLE["edition"]
TABLE_SOURCE: str = _TABLE["source"]

#: (group << 16 | element) -> (attribute name, Basic Profile action), one row per attribute.
BASIC_PROFILE: dict[int, tuple[str, str]] = {
    int(row["tag"], 16): (row["name"], row["action"]) for row in _TABLE["attributes"]}

#: Group rows: (value, mask, name, action); a tag matches when ``tag & mask == value``.
GROUP_RULES: tuple[tuple[int, int, str, str], ...] = tuple(
    (int(row["tag"], 16), int(row["mask"], 16), row["name"], row["action"]) for row in _TABLE["groups"])

_IOD_OF_SOP_CLASS: dict[str, str] = _TYPES["sop_classes"]
_TYPES_OF_IOD: dict[str, dict[str, str]] = _TYPES["types"]


def action(tag: int) -> str | None:
    """The Basic Profile action of ``tag`` (an attribute row, else a group row), None when unlisted."""
    row = BASIC_PROFILE.get(tag)
    if row is not None:
        return row[1]
    for value, mask, _name, todo in GROUP_RULES:
        if tag & mask == value:
            return todo
    return None


def attribute_type(sop_class_uid: str, path: Sequence[str]) -> str:
    """Type of the attribute at ``path`` (keywords from the top level down) in the IOD of
    ``sop_class_uid``: ``"1"``, ``"1C"``, ``"2"``, ``"2C"``, or ``"3"`` (also for an unknown SOP
    Class or path).  Consecutive repeats of a sequence (an SR content tree) count once."""
    iod = _IOD_OF_SOP_CLASS.get(str(sop_class_uid))
    if iod is None:
        return "3"
    collapsed = [k for i, k in enumerate(path) if i == 0 or k != path[i - 1]]
    return _TYPES_OF_IOD.get(iod, {}).get("/".join(collapsed), "3")


def choose(todo: str, attribute_type_: str) -> str:
    """The single action (``X``, ``Z``, ``D`` or ``U``) that ``todo`` means for an attribute of
    Type ``attribute_type_``: e.g. ``choose("X/Z/D", "2") == "Z"``, ``choose("X/D", "3") == "X"``."""
    options = todo.replace("*", "").split("/")
    preference = _PREFERENCE.get(attribute_type_)
    if preference is None:
        raise ValueError(f"attribute type must be one of {sorted(_PREFERENCE)}, {attribute_type_!r} is given")
    unknown = set(options) - set("XZDU")
    if unknown:
        raise ValueError(f"action must be made of X, Z, D, U, {todo!r} is given")
    return next(letter for letter in preference if letter in options)
