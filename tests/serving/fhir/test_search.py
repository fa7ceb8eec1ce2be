"""serving.fhir.search: R4 search semantics without HTTP (ignored parameters and strict handling,
tokens, _sort, _total, _lastUpdated, paging links)."""
from __future__ import annotations

import pytest

from serving.fhir.search import MAX_COUNT, SearchError, parse_search, searchset, strict_handling, tokens

BASE = "https://medgate.example.org/fhir"


def obs(oid: str, when: str | None, updated: str = "2026-12-01T00:00:00.000Z") -> dict:
    body = {"resourceType": "Observation", "id": oid, "meta": {"versionId": "1", "lastUpdated": updated}}
    if when:
        body["effectiveDateTime"] = when
    return body


def test_unknown_parameters_and_values_are_ignored_and_listed():
    search = parse_search("Observation", [
        ("colour", "red"), ("_sort", "-date,colour"), ("_summary", "true"), ("_include", "Observation:colour"),
        ("_include:iterate", "Observation:subject"), ("_revinclude", "Flag:subject"), ("code", "8867-4")])
    assert search.ignored == ["colour=red", "_sort=colour", "_summary=true", "_include=Observation:colour",
                              "_include:iterate=Observation:subject", "_revinclude=Flag:subject"]
    assert search.params == [("_sort", "-date"), ("code", "8867-4")] and search.sort == [("date", True)]


def test_strict_handling_refuses_them_all_by_name():
    with pytest.raises(SearchError) as refused:
        parse_search("Observation", [("colour", "red"), ("_sort", "size")], strict=True)
    assert "colour=red" in str(refused.value) and "_sort=size" in str(refused.value)
    assert parse_search("Observation", [("code", "x"), ("_sort", "date")], strict=True).ignored == []


@pytest.mark.parametrize("prefer, strict", [("handling=strict", True), ("return=minimal, handling=strict", True),
                                            ("handling = strict", True), ("handling=lenient", False), (None, False),
                                            ("handling=strictly", False)])
def test_prefer_header(prefer, strict):
    assert strict_handling(prefer) is strict


def test_unsupported_modifier_and_unreadable_values_are_refused_even_when_lenient():
    for items in ([("code:text", "x")], [("patient", "p 1")], [("subject", "Patient/../x")],
                  [("patient", "x" * 65)], [("_lastUpdated", "soon")], [("_total", "maybe")], [("_count", "-1")],
                  [("_count", "ten")]):
        with pytest.raises(SearchError):
            parse_search("Observation", items)


def test_count_is_cut_to_the_maximum():
    assert parse_search("Observation", [("_count", str(MAX_COUNT * 10))]).count == MAX_COUNT


@pytest.mark.parametrize("value, system, code, expected", [
    ("x", "urn:a", "x", True), ("x", None, "x", True), ("urn:a|x", "urn:a", "x", True),
    ("urn:a|x", "urn:b", "x", False), ("|x", None, "x", True), ("|x", "urn:a", "x", False),
    ("urn:a|", "urn:a", "y", True), ("urn:a|", "urn:b", "y", False), ("y,x", "urn:a", "x", True)])
def test_token_semantics(value, system, code, expected):
    assert any(t.matches(system, code) for t in tokens(value)) is expected


def test_patient_identifier_token_matches_any_of_its_identifiers():
    patient = {"resourceType": "Patient", "id": "p", "identifier": [{"system": "urn:cccd", "value": "1"},
                                                                    {"value": "MRN-1"}]}
    for value, expected in (("urn:cccd|1", True), ("|MRN-1", True), ("MRN-1", True), ("urn:cccd|MRN-1", False)):
        assert parse_search("Patient", [("identifier", value)]).matches(patient) is expected


def test_sort_by_date_and_last_updated_missing_values_last():
    resources = [obs("a", "2026-11-02"), obs("b", None, "2026-12-02T00:00:00.000Z"),
                 obs("c", "2026-11-03T10:00:00Z"), obs("d", "2026-11-01T00:00:00+07:00")]

    def order(sort: str) -> list[str]:
        return [r["id"] for r in parse_search("Observation", [("_sort", sort)]).order(resources)]
    assert order("date") == ["d", "a", "c", "b"]
    assert order("-date") == ["c", "a", "d", "b"]
    assert order("-_lastUpdated,_id") == ["b", "a", "c", "d"]
    assert order("_id") == ["a", "b", "c", "d"]
    assert [r["id"] for r in parse_search("Observation", []).order(resources)] == ["c", "a", "d", "b"]  # newest first


def test_date_is_no_sort_key_of_a_patient():
    search = parse_search("Patient", [("_sort", "date")])
    assert search.sort == [] and search.ignored == ["_sort=date"]


@pytest.mark.parametrize("value, matched", [("gt2026-12-01", ["b"]), ("ge2026-12-01", ["a", "b"]),
                                            ("lt2026-12-02", ["a"]), ("le2026-12", ["a", "b"]),
                                            ("eq2026-12-02", ["b"]), ("2026-12-01", ["a"])])
def test_last_updated_prefixes(value, matched):
    resources = [obs("a", None, "2026-12-01T08:00:00.000Z"), obs("b", None, "2026-12-02T08:00:00.000Z")]
    search = parse_search("Observation", [("_lastUpdated", value)])
    assert [r["id"] for r in resources if search.matches(r)] == matched


def test_searchset_total_none_outcome_entry_and_links():
    search = parse_search("Observation", [("colour", "red"), ("_total", "none"), ("_count", "1"), ("code", "x")])
    bundle = searchset(search, [obs("a", None)], BASE, total=3)
    assert "total" not in bundle
    assert [e["search"]["mode"] for e in bundle["entry"]] == ["match", "outcome"]
    outcome = bundle["entry"][1]["resource"]["issue"][0]
    assert outcome["severity"] == "warning" and "colour=red" in outcome["diagnostics"]
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["next"] == f"{BASE}/Observation?_total=none&code=x&_count=1&_offset=1"
    assert "colour" not in links["self"]
    empty = searchset(parse_search("Observation", [("_count", "0")]), [], BASE, total=3)
    assert [link["relation"] for link in empty["link"]] == ["self"] and empty["total"] == 3
