"""medgate's private coding scheme and the site's class -> code map (``class_codes``)."""
from __future__ import annotations

import json
import uuid

import pytest

from models import coding_scheme
from models.coding_scheme import map_classes
from models.registry import ModelRegistry
from serving.config import ConfigError, load_config


def test_the_scheme_uid_is_a_uuid_derived_oid():
    assert coding_scheme.UID.startswith("2.25.") and len(coding_scheme.UID) <= 64  # PS3.5 UI
    assert uuid.UUID(int=int(coding_scheme.UID[5:])).version == 4
    assert coding_scheme.SYSTEM_URI == f"urn:oid:{coding_scheme.UID}"
    assert coding_scheme.is_private("99MEDGATE") and not coding_scheme.is_private("SCT")


def derm_classes():
    return ModelRegistry().get("derm").raw["classes"]


def test_unverified_derm_classes_keep_their_local_codes_until_a_site_maps_them():
    card = derm_classes()
    local = {c["name"] for c in card if c["scheme"] == coding_scheme.DESIGNATOR}
    assert local == {"bkl", "df", "vasc"}
    assert map_classes(card, {}) == card
    site = {"df": {"value": "123456789", "scheme": "SCT", "meaning": "Dermatofibroma (site-verified)"}}
    mapped = {c["name"]: c for c in map_classes(card, site)}
    assert (mapped["df"]["value"], mapped["df"]["scheme"]) == ("123456789", "SCT")
    assert mapped["df"]["mapped_by"] == "configuration" and "snomed_ct" not in mapped["df"]
    assert mapped["df"]["card_code"] == {"value": "df", "scheme": "99MEDGATE", "meaning": "Dermatofibroma"}
    assert mapped["bkl"]["scheme"] == "99MEDGATE", "unmapped classes keep the card's code"
    assert json.dumps(card) == json.dumps(derm_classes()), "the card is not changed"


def test_a_mapping_for_a_class_the_model_lacks_or_without_a_code_is_refused():
    with pytest.raises(ValueError, match="class_codes name classes the model does not have: psoriasis"):
        map_classes(derm_classes(), {"psoriasis": {"value": "9014002", "scheme": "SCT", "meaning": "Psoriasis"}})
    with pytest.raises(ValueError, match="class_codes.vasc lacks value"):
        map_classes(derm_classes(), {"vasc": {"value": "", "scheme": "SCT", "meaning": "Vascular lesion"}})


def test_class_codes_are_configuration(tmp_path):
    path = tmp_path / "medgate.yaml"
    path.write_text("class_codes:\n  derm:\n    bkl: {value: '123', scheme: SCT, meaning: Benign keratosis}\n")
    settings = load_config(path)
    codes = {name: code.model_dump() for name, code in settings.class_codes["derm"].items()}
    assert codes == {"bkl": {"value": "123", "scheme": "SCT", "meaning": "Benign keratosis"}}
    assert map_classes(derm_classes(), codes)[2]["value"] == "123"
    assert load_config(None).class_codes == {}
    path.write_text("class_codes:\n  derm:\n    bkl: {value: '123', scheme: ''}\n")
    with pytest.raises(ConfigError, match="class_codes.derm.bkl"):
        load_config(path)
