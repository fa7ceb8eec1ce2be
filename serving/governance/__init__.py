"""Data governance: the audit log, DICOM de-identification (PS3.15) and the export of de-identified
training data."""
