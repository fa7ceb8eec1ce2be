"""HL7 v2 in over MLLP: ADT (patients, visits, beds) and IHE PCD-01 device observations.

:mod:`iomt.hl7.listener` reads MLLP blocks, :mod:`iomt.hl7.intake` turns each message into an
original-mode acknowledgement (:mod:`iomt.hl7.ack`) after what it says is committed:
:mod:`iomt.hl7.adt` for ADT, :mod:`iomt.hl7.pcd01` for ORU^R01, both through the vitals
pipeline the MQTT bridge uses (:mod:`iomt.pipeline`).  See docs/hl7.md.
"""
