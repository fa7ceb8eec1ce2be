"""The CapabilityStatement lists only R4 search parameters (or ones medgate defines and serves),
validates as R4, and says what a reader must know of RiskAssessment probabilities."""
from __future__ import annotations

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.searchparameter import SearchParameter

from serving.fhir.capability import capability_statement, search_parameter
from serving.fhir.search import RESULT_PARAMETERS, SearchError, parse_search

BASE = "https://medgate.example.org/fhir"
_COMMON = {"_id": "token", "_lastUpdated": "date", "_tag": "token", "_profile": "uri", "_security": "token",
           "_source": "uri", "_text": "string", "_content": "string", "_list": "special", "_has": "special",
           "_type": "special", "_query": "special", "_filter": "special"}
#: FHIR 4.0.1 search parameter registry (https://hl7.org/fhir/R4/searchparameter-registry.html):
#: name -> type for the types medgate serves (the R4 resource pages' "Search Parameters" tables).
R4_SEARCH_PARAMETERS: dict[str, dict[str, str]] = {
    "Observation": {
        "based-on": "reference", "category": "token", "code": "token", "code-value-concept": "composite",
        "code-value-date": "composite", "code-value-quantity": "composite", "code-value-string": "composite",
        "combo-code": "token", "combo-code-value-concept": "composite", "combo-code-value-quantity": "composite",
        "combo-data-absent-reason": "token", "combo-value-concept": "token", "combo-value-quantity": "quantity",
        "component-code": "token", "component-code-value-concept": "composite",
        "component-code-value-quantity": "composite", "component-data-absent-reason": "token",
        "component-value-concept": "token", "component-value-quantity": "quantity", "data-absent-reason": "token",
        "date": "date", "derived-from": "reference", "device": "reference", "encounter": "reference",
        "focus": "reference", "has-member": "reference", "identifier": "token", "method": "token",
        "part-of": "reference", "patient": "reference", "performer": "reference", "specimen": "reference",
        "status": "token", "subject": "reference", "value-concept": "token", "value-date": "date",
        "value-quantity": "quantity", "value-string": "string"},
    "DiagnosticReport": {
        "based-on": "reference", "category": "token", "code": "token", "conclusion": "token", "date": "date",
        "encounter": "reference", "identifier": "token", "issued": "date", "media": "reference",
        "patient": "reference", "performer": "reference", "result": "reference",
        "results-interpreter": "reference", "specimen": "reference", "status": "token", "subject": "reference"},
    "RiskAssessment": {
        "condition": "reference", "date": "date", "encounter": "reference", "identifier": "token",
        "method": "token", "patient": "reference", "performer": "reference", "probability": "number",
        "risk": "token", "subject": "reference"},
    "Flag": {"author": "reference", "date": "date", "encounter": "reference", "identifier": "token",
             "patient": "reference", "subject": "reference"},
    "AuditEvent": {
        "action": "token", "address": "string", "agent": "reference", "agent-name": "string",
        "agent-role": "token", "altid": "token", "date": "date", "entity": "reference", "entity-name": "string",
        "entity-role": "token", "entity-type": "token", "outcome": "token", "patient": "reference",
        "policy": "uri", "site": "token", "source": "reference", "subtype": "token", "type": "token"},
    "Patient": {"active": "token", "address": "string", "address-city": "string", "address-country": "string",
                "address-postalcode": "string", "address-state": "string", "address-use": "token",
                "birthdate": "date", "death-date": "date", "deceased": "token", "email": "token", "family": "string",
                "gender": "token", "general-practitioner": "reference", "given": "string", "identifier": "token",
                "language": "token", "link": "reference", "name": "string", "organization": "reference",
                "phone": "token", "phonetic": "string", "telecom": "token"},
    "Device": {"device-name": "string", "identifier": "token", "location": "reference",
               "manufacturer": "string", "model": "string", "organization": "reference",
               "patient": "reference", "status": "token", "type": "token", "udi-carrier": "string",
               "udi-di": "string", "url": "uri"},
}


@pytest.fixture(scope="module")
def statement() -> dict:
    return capability_statement(BASE, "0.1.0", date="2026-12-03T10:00:00+00:00")


def test_validates_as_r4(statement):
    CapabilityStatement.model_validate(statement)


def test_every_search_param_is_r4_or_defined_and_served_here(statement):
    resources = statement["rest"][0]["resource"]
    listed = 0
    for resource in resources:
        r4 = {**_COMMON, **R4_SEARCH_PARAMETERS.get(resource["type"], {})}
        for param in resource.get("searchParam", []):
            listed += 1
            name = param["name"]
            assert ":" not in name and name not in RESULT_PARAMETERS, (resource["type"], name)
            if "definition" not in param:
                assert name in r4, f"{resource['type']} {name} is not an R4 search parameter"
                assert param["type"] == r4[name], (resource["type"], name, param["type"])
                continue
            assert name not in r4, f"{resource['type']} {name} is R4's own: no medgate definition"
            definition = param["definition"].removeprefix(BASE + "/SearchParameter/")
            served = search_parameter(definition, BASE)
            assert served is not None and served["url"] == param["definition"]
            SearchParameter.model_validate(served)
            assert served["code"] == name and served["base"] == [resource["type"]]
            assert served["type"] == param["type"]
    assert listed >= 20


def test_identifier_is_a_modifier_of_patient_and_subject(statement):
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    params = {p["name"]: p for p in observation["searchParam"]}
    assert ":identifier" in params["patient"]["documentation"] and ":identifier" in params["subject"]["documentation"]
    search = parse_search("DiagnosticReport", [("patient:identifier", "urn:cccd|079123")])
    assert search.matches({"subject": {"identifier": {"system": "urn:cccd", "value": "079123"}}})
    assert not search.matches({"subject": {"identifier": {"system": "urn:cccd", "value": "079124"}}})
    with pytest.raises(SearchError, match="modifier ':text' is not supported on Observation code"):
        parse_search("Observation", [("code:text", "heart")])
    with pytest.raises(SearchError, match="modifier ':identifier' is not supported on Observation date"):
        parse_search("Observation", [("date:identifier", "x|y")])


def test_result_parameters_are_documented_not_listed(statement):
    text = statement["rest"][0]["documentation"]
    assert all(name in text for name in RESULT_PARAMETERS)


def test_risk_assessment_probability_is_stated_as_a_decimal_0_to_1(statement):
    risk = next(r for r in statement["rest"][0]["resource"] if r["type"] == "RiskAssessment")
    assert "probabilityDecimal is a probability as a decimal from 0 to 1" in risk["documentation"]
    assert "never a percentage" in risk["documentation"]


def test_device_is_read_only_and_patient_searchable_by_identifier(statement):
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for rtype in ("Device", "SearchParameter"):
        assert by_type[rtype]["interaction"] == [{"code": "read"}] and "searchParam" not in by_type[rtype]
    patient = by_type["Patient"]
    assert {"code": "search-type"} in patient["interaction"]
    assert {p["name"] for p in patient["searchParam"]} == {"_id", "_lastUpdated", "identifier"}


def test_versioning_conditional_read_and_includes_are_stated(statement):
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for rtype in ("Observation", "DiagnosticReport", "Patient", "Device", "AuditEvent"):
        resource = by_type[rtype]
        assert (resource["versioning"], resource["conditionalRead"], resource["readHistory"]) == \
            ("versioned", "full-support", False)
    assert by_type["DiagnosticReport"]["searchInclude"] == ["DiagnosticReport:patient", "DiagnosticReport:result",
                                                            "DiagnosticReport:subject"]
    assert set(by_type["Observation"]["searchInclude"]) == {"Observation:derived-from", "Observation:device",
                                                            "Observation:patient", "Observation:subject"}
    assert set(by_type["Observation"]["searchRevInclude"]) == {"DiagnosticReport:result", "Observation:derived-from"}
    assert "Observation:subject" in by_type["Patient"]["searchRevInclude"]
    assert "searchInclude" not in by_type["AuditEvent"]
    text = statement["rest"][0]["documentation"]
    assert "Prefer: handling=strict" in text and "_total" in text and "_lastUpdated" in text


def test_flag_status_search_parameter_matches_the_status():
    search = parse_search("Flag", [("status", "active")])
    assert search.matches({"status": "active"}) and not search.matches({"status": "inactive"})
    assert search_parameter("Observation-status", BASE) is None


@pytest.mark.parametrize("key, query, expected", [
    ("agent-name", "clin", True), ("agent-name", "USER", False), ("agent-name:contains", "USER", True),
    ("agent-name:exact", "clinician", False), ("agent-name:exact", "clinician user", True)])
def test_agent_name_is_an_r4_string_search(key, query, expected):
    search = parse_search("AuditEvent", [(key, query)])
    assert search.matches({"agent": [{"who": {"display": "Clinician User"}}]}) is expected


def test_entity_type_is_a_resource_types_token():
    event = {"entity": [{"what": {"reference": "Patient/p1"}}]}
    assert parse_search("AuditEvent", [("entity-type", "Patient")]).matches(event)
    assert parse_search("AuditEvent", [("entity-type", "http://hl7.org/fhir/resource-types|Patient")]).matches(event)
    assert not parse_search("AuditEvent", [("entity-type", "Observation")]).matches(event)
