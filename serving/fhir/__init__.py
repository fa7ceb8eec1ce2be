"""FHIR R4 resources medgate builds and serves, without HTTP: the imaging DiagnosticReport, search
over the local store, the CapabilityStatement and the AuditEvent view of the audit log."""
