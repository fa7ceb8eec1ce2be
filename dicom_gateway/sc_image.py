"""An RGB Secondary Capture Image (PS3.3 A.8.1) of a source image, written directly.

:func:`dicom_gateway.overlay.reference_overlay` wraps the overlay picture with highdicom's
``SCImage.from_ref_dataset``, which looks attributes up in its IOD tables on every call (three
scans of the module table, a few milliseconds an image on the 2-core CPU machine, and ~0.4 s to
read the table on the first image of a process).  :func:`secondary_capture` writes the same data
elements (the test ``tests/dicom_gateway/test_overlay_fast.py`` compares them one by one, the
creation dates and times apart) from what is known of the Secondary Capture IOD, once:
it has Content Date and Time (General Image, PS3.3 C.7.6.1) and pixel data (Image Pixel,
C.7.6.3).  highdicom still makes what it makes cheaply: the contributing equipment items
(:mod:`dicom_gateway.sop_common`) and the pixel encoding.

Only what the overlay writer needs: 8-bit RGB pixels, uncompressed (Explicit VR Little Endian),
patient coordinate system, biped patient orientation.
"""
from __future__ import annotations

import datetime

import highdicom as hd
import numpy as np
from highdicom.enum import PatientOrientationValuesBiped, PatientSexValues
from highdicom.frame import encode_frame
from highdicom.valuerep import _check_specific_character_set, check_person_name
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from dicom_gateway.sop_common import contributing_equipment, file_meta

#: PS3.4 Annex B.5: Secondary Capture Image Storage.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: PS3.3 C.8.6.1 Conversion Type "DI" (Digital Interface): the picture is made by software.
DIGITAL_INTERFACE = "DI"
#: PS3.3 C.8.6.2 / C.7.6.1 Image Type of a Secondary Capture made by medgate.
IMAGE_TYPE = ["DERIVED", "SECONDARY", "OTHER"]
_PATIENT_STUDY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                  "StudyDate", "StudyTime", "ReferringPhysicianName")


class OverlayImage(hd.sc.SCImage):
    """An RGB Secondary Capture written by :func:`secondary_capture`: a
    :class:`highdicom.sc.SCImage` built without highdicom's constructor."""

    def __init__(self) -> None:  # noqa: D107 - the data elements are added by secondary_capture
        Dataset.__init__(self)


def secondary_capture(
    source: Dataset,
    pixels: np.ndarray,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str,
    patient_orientation: tuple[str, str],
) -> OverlayImage:
    """An RGB Secondary Capture of ``pixels`` (``(rows, columns, 3)`` ``uint8``) in the study of
    ``source``: the data elements ``hd.sc.SCImage.from_ref_dataset`` writes for the same
    arguments (RGB, 8 bits, patient coordinate system, Explicit VR Little Endian)."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"pixels must be (rows, columns, 3) uint8 RGB, {pixels.dtype} {pixels.shape} is given.")
    for name, value in (("series_number", series_number), ("instance_number", instance_number)):
        if value is None or value < 1:
            raise ValueError(f"{name} must be a positive integer, {value!r} is given.")
    values = {keyword: getattr(source, keyword, None) for keyword in _PATIENT_STUDY}
    for keyword in ("PatientName", "ReferringPhysicianName"):
        if values[keyword] is not None:
            check_person_name(values[keyword])
    sc = OverlayImage()
    sc.preamble = b"\x00" * 128
    sc.file_meta = file_meta(SECONDARY_CAPTURE, str(sop_instance_uid))
    sc.PatientID = values["PatientID"]
    sc.PatientName = values["PatientName"]
    sc.PatientBirthDate = DA(values["PatientBirthDate"])
    sex = values["PatientSex"]
    sc.PatientSex = PatientSexValues(sex).value if sex is not None and sex != "" else sex
    sc.StudyInstanceUID = str(source.StudyInstanceUID)
    sc.AccessionNumber = values["AccessionNumber"]
    sc.StudyID = values["StudyID"]
    sc.StudyDate = DA(values["StudyDate"]) if values["StudyDate"] is not None else None
    sc.StudyTime = TM(values["StudyTime"]) if values["StudyTime"] is not None else None
    sc.ReferringPhysicianName = values["ReferringPhysicianName"]
    sc.SeriesInstanceUID = str(series_instance_uid)
    sc.SeriesNumber = series_number
    sc.Modality = "OT"
    sc.Manufacturer = manufacturer
    sc.SOPInstanceUID = str(sop_instance_uid)
    sc.SOPClassUID = SECONDARY_CAPTURE
    sc.InstanceNumber = instance_number
    now = datetime.datetime.now()
    sc.InstanceCreationDate = DA(now.date())
    sc.InstanceCreationTime = TM(now.time())
    character_set = source.get("SpecificCharacterSet")
    if character_set is not None:
        sc.SpecificCharacterSet = _check_specific_character_set(character_set)
    sc.ContentDate = DA(now.date())
    sc.ContentTime = TM(now.time())
    sc.ContributingEquipmentSequence = contributing_equipment(source)
    sc.PatientOrientation = [PatientOrientationValuesBiped(v).value for v in patient_orientation]
    sc.ConversionType = DIGITAL_INTERFACE
    sc.DateOfSecondaryCapture = DA(now.date())
    sc.TimeOfSecondaryCapture = TM(now.time())
    sc.ImageType = list(IMAGE_TYPE)
    sc.Rows, sc.Columns = pixels.shape[:2]
    sc.BitsAllocated = 8
    sc.HighBit = 7
    sc.BitsStored = 8
    sc.PixelRepresentation = 0
    sc.PhotometricInterpretation = "RGB"
    sc.SamplesPerPixel = 3
    sc.PlanarConfiguration = 0
    sc.PixelData = encode_frame(pixels, transfer_syntax_uid=ExplicitVRLittleEndian, bits_allocated=8,
                                bits_stored=8, photometric_interpretation="RGB", pixel_representation=0,
                                planar_configuration=0)
    return sc
