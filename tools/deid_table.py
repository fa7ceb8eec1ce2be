"""Regenerate the de-identification data that ``serving/governance/deid_profile.py`` reads.

``python -m tools.deid_table [--edition 2026c] [--check]`` writes two files under
``serving/governance/deid_data/``:

``table_e1_1.json``
    DICOM PS3.15 Table E.1-1 "Application Level Confidentiality Profile Attributes", column
    "Basic Prof.", as published in the PyPI package ``dicom-anonymizer`` (its
    ``dicom_anonymization_databases/dicomfields_<edition>.py`` modules are generated from the
    standard's table, one per edition).  The edition and the package version are recorded in the
    file.  The package keeps the table's "Private Attributes" row in code, not in its lists: it is
    added here as the group row it is in the standard.
``iod_types.json``
    The Type (PS3.5 7.4) of each attribute whose action is a composite (``Z/D``, ``X/Z``, ``X/D``,
    ``X/Z/D``, ``X/Z/U*``) or that is an unlisted Person Name, per IOD and per nesting path, taken
    from the module tables of PS3.3 that ``highdicom`` ships (``highdicom/_standard/*.json``,
    generated from the standard).  Only Types 1, 1C, 2 and 2C are stored; an attribute not listed
    for an IOD is Type 3 there.  Where one path appears in several modules of an IOD the strongest
    Type is kept (a replaced value is de-identified either way; a removed Type 1 would break the
    IOD).

``--check`` compares instead of writing and exits 1 when the shipped files differ from what the
sources give (``tests/serving/governance/test_deid_profile.py`` runs it when ``dicom-anonymizer`` is
installed).  Needs the dev extras (``dicom-anonymizer``); run-time code never imports it.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import sys
from pathlib import Path

from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom.datadict import DicomDictionary, keyword_for_tag

#: The edition shipped: the newest the pinned ``dicom-anonymizer`` carries.
DEFAULT_EDITION = "2026c"
OUT = Path(__file__).resolve().parent.parent / "serving" / "governance" / "deid_data"
TABLE_FILE, TYPES_FILE = "table_e1_1.json", "iod_types.json"

#: dicom-anonymizer's list names -> the table's action codes (PS3.15 E.1.1, Table E.1-1a).
CATEGORIES = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}
#: The table's row "Private Attributes (gggg,eeee) where gggg is odd", action X: an odd group.
PRIVATE_ROW = {"tag": "00010000", "mask": "00010000", "name": "Private Attributes", "action": "X"}
_ENTRY = re.compile(r"\(\s*0x([0-9A-Fa-f]{4})\s*,\s*0x([0-9A-Fa-f]{4})\s*"
                    r"(?:,\s*0x([0-9A-Fa-f]{4})\s*,\s*0x([0-9A-Fa-f]{4})\s*)?,?\s*\)\s*,\s*#[ \t]*([^\n]+)")
_TYPE_RANK = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}


def _names(source_text: str) -> dict[tuple[str, str], str]:
    """(tag, mask) -> attribute name, from the comments beside each entry of the source module."""
    names = {}
    for match in _ENTRY.finditer(source_text):  # entries may be wrapped over several lines
        group, element, group_mask, element_mask, name = match.groups()
        mask = f"{group_mask}{element_mask}".upper() if group_mask else "FFFFFFFF"
        names[(f"{group}{element}".upper(), mask)] = name.strip()
    return names


def build_table(edition: str) -> dict:
    """The table of ``edition`` as stored in ``table_e1_1.json``."""
    module_name = f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{edition}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise SystemExit(f"dicom-anonymizer has no table of edition {edition!r} ({module_name}): {exc}") from exc
    names = _names(Path(module.__file__).read_text(encoding="utf-8"))
    attributes, groups = [], [PRIVATE_ROW]
    for category, action in CATEGORIES.items():
        for entry in getattr(module, category):
            tag = f"{entry[0]:04X}{entry[1]:04X}"
            if len(entry) == 2:
                attributes.append({"tag": tag, "name": names[(tag, "FFFFFFFF")], "action": action})
            else:
                mask = f"{entry[2]:04X}{entry[3]:04X}"
                groups.append({"tag": tag, "mask": mask, "name": names[(tag, mask)], "action": action})
    tags = [row["tag"] for row in attributes]
    if len(set(tags)) != len(tags):
        raise SystemExit(f"edition {edition}: an attribute is listed under two actions")
    attributes.sort(key=lambda row: row["tag"])
    return {
        "standard": "DICOM PS3.15 Annex E, Table E.1-1, column Basic Prof.",
        "edition": edition,
        "source": f"dicom-anonymizer {importlib.metadata.version('dicom-anonymizer')}, {module_name}",
        "regenerate": "python -m tools.deid_table",
        "attributes": attributes,
        "groups": groups,
    }


def _typed_keywords(table: dict) -> set[str]:
    listed = {int(row["tag"], 16) for row in table["attributes"]}
    composite = {keyword_for_tag(int(row["tag"], 16)) for row in table["attributes"] if "/" in row["action"]}
    unlisted_names = {entry[4] for tag, entry in DicomDictionary.items() if entry[0] == "PN" and tag not in listed}
    return {keyword for keyword in composite | unlisted_names if keyword}


def build_types(table: dict) -> dict:
    """Types 1/1C/2/2C of the attributes that need one, per IOD and path, from highdicom's data."""
    keywords = _typed_keywords(table)
    modules = get_module_attribute_map()
    types: dict[str, dict[str, str]] = {}
    for iod, iod_modules in sorted(get_iod_module_map().items()):
        found: dict[str, str] = {}
        for module in iod_modules:
            for attribute in modules.get(module["key"], []):
                if attribute["keyword"] not in keywords:
                    continue
                path = "/".join([*attribute["path"], attribute["keyword"]])
                if path not in found or _TYPE_RANK[attribute["type"]] < _TYPE_RANK[found[path]]:
                    found[path] = attribute["type"]
        required = {path: kind for path, kind in sorted(found.items()) if kind != "3"}
        if required:
            types[iod] = required
    return {
        "standard": "DICOM PS3.3 module tables (attribute Types), PS3.4 SOP Classes",
        "source": f"highdicom {importlib.metadata.version('highdicom')}, highdicom/_standard/*.json",
        "regenerate": "python -m tools.deid_table",
        "keywords": sorted(keywords),
        "sop_classes": dict(sorted(get_sop_class_iod_map().items())),
        "types": types,
    }


def _dump(data: dict) -> str:
    """JSON with one table row, SOP Class or IOD a line (reviewable diffs when the edition changes)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, (list, dict)) and len(value) > 1 and key != "keywords":
            items = value.items() if isinstance(value, dict) else enumerate(value)
            inner = [(f"{json.dumps(k)}: " if isinstance(value, dict) else "") + json.dumps(v, ensure_ascii=False)
                     for k, v in items]
            opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
            lines.append(f" {json.dumps(key)}: {opening}\n  " + ",\n  ".join(inner) + f"\n {closing}")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edition", default=DEFAULT_EDITION, help="dicom-anonymizer table edition, e.g. 2024b")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    table = build_table(args.edition)
    files = {TABLE_FILE: _dump(table), TYPES_FILE: _dump(build_types(table))}
    stale = [name for name, text in files.items()
             if not (OUT / name).is_file() or (OUT / name).read_text(encoding="utf-8") != text]
    if args.check:
        for name in stale:
            print(f"{OUT / name} differs from what its source gives: run python -m tools.deid_table", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text, encoding="utf-8")
    counts: dict[str, int] = {}
    for row in table["attributes"]:
        counts[row["action"]] = counts.get(row["action"], 0) + 1
    print(f"edition {table['edition']}: {len(table['attributes'])} attributes {dict(sorted(counts.items()))}, "
          f"{len(table['groups'])} group rows -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
