"""medgate models: network definitions, the versioned registry, and the finding type.

Knows nothing of DICOM, MQTT or Ray.
"""
