"""Body part and laterality of a series derived from a source image (SC overlay, GSPS).

General Series Laterality (0020,0060) (PS3.3 C.7.3.1) is Type 2C: required, possibly empty, for a
paired body part, and left out for an unpaired one; the unpaired parts are those of PS3.16 Annex L
listed in :data:`UNPAIRED_BODY_PARTS`.
"""
from __future__ import annotations

from pydicom import Dataset

#: PS3.16 Annex L Body Part Examined values of unpaired structures (no Laterality required).
UNPAIRED_BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "BLADDER", "BRAIN", "CHEST", "CHESTABDOMEN", "CHESTABDPELVIS", "COCCYX",
    "CSPINE", "ESOPHAGUS", "HEAD", "HEADNECK", "HEART", "LARYNX", "LIVER", "LSPINE", "MEDIASTINUM", "NECK",
    "PANCREAS", "PELVIS", "PROSTATE", "RECTUM", "SACRUM", "SKULL", "SPINE", "SPLEEN", "SSPINE", "STOMACH",
    "THORAX", "TLSPINE", "TRACHEA", "TSPINE", "UTERUS", "WHOLEBODY",
})


def series_laterality(source: Dataset) -> dict[str, str]:
    """General Series Body Part Examined (Type 3) and Laterality (PS3.3 C.7.3.1, Type 2C, required
    for a paired body part only) of a series derived from ``source``: the side (L or R) the source
    gives; none for an unpaired part (Image Laterality U, or an unpaired Body Part Examined); empty
    (unknown) when the part is not known."""
    out = {}
    body_part = str(source.get("BodyPartExamined", "") or "").strip().upper()
    if body_part:
        out["BodyPartExamined"] = body_part
    image_laterality = str(source.get("ImageLaterality", "") or "")
    laterality = str(source.get("Laterality", "") or image_laterality)
    if laterality in ("L", "R"):
        out["Laterality"] = laterality
    elif laterality != "U" and body_part not in UNPAIRED_BODY_PARTS:
        out["Laterality"] = ""
    return out
