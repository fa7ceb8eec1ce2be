"""serving.fhir.include: which _include/_revinclude values are served, and what they add."""
from __future__ import annotations

import pytest

from serving.fhir.include import INCLUDES, included, parse_include


@pytest.mark.parametrize("searched, value, reverse, served", [
    ("DiagnosticReport", "DiagnosticReport:result", False, True),
    ("DiagnosticReport", "DiagnosticReport:result:Observation", False, True),
    ("DiagnosticReport", "DiagnosticReport:result:Patient", False, False),  # wrong target type
    ("Observation", "DiagnosticReport:result", False, False),  # _include names the type searched
    ("Observation", "DiagnosticReport:result", True, True),
    ("DiagnosticReport", "Observation:derived-from", True, False),  # R4 derivedFrom never targets a report
    ("Observation", "Observation:derived-from", True, True),
    ("Patient", "Observation:subject", True, True), ("Observation", "Observation:subject", False, True),
    ("Device", "Observation:device", True, False), ("Observation", "*", False, False),
    ("Observation", "Observation", False, False), ("Observation", "Observation:subject:Patient:x", False, False)])
def test_served_values(searched, value, reverse, served):
    assert (parse_include(searched, value, reverse) is not None) is served


def test_included_follows_references_once_and_never_repeats_a_match():
    report = {"resourceType": "DiagnosticReport", "id": "r", "subject": {"reference": "Patient/p"},
              "result": [{"reference": "Observation/o1"}, {"reference": "Observation/o2"},
                         {"reference": "Observation/o1"}]}
    other = {**report, "id": "r2", "result": [{"reference": "Observation/o2"}]}
    store = {("Observation", "o1"): {"resourceType": "Observation", "id": "o1"},
             ("Observation", "o2"): {"resourceType": "Observation", "id": "o2"},
             ("Patient", "p"): {"resourceType": "Patient", "id": "p"}}
    reads = []

    def read(rtype, rid):
        reads.append((rtype, rid))
        return store.get((rtype, rid))

    found = included([report, other], [INCLUDES["DiagnosticReport", "result"], INCLUDES["DiagnosticReport", "subject"]],
                     [], read, lambda include, refs: [])
    assert [(r["resourceType"], r["id"]) for r in found] == [("Observation", "o1"), ("Observation", "o2"),
                                                             ("Patient", "p")]
    assert len(reads) == 3  # each reference read once
    back = included([store["Observation", "o1"]], [], [INCLUDES["DiagnosticReport", "result"]], read,
                    lambda include, refs: [report] if refs == ["Observation/o1"] else [])
    assert back == [report]
