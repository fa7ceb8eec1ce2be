"""The imaging path after a study is complete: model calls, findings, result objects (SR, SEG, SC,
FHIR) and their delivery items."""
