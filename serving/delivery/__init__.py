"""Delivery of results: the durable outbox, where it keeps its items (SQLite or PostgreSQL), and the
FHIR sender."""
