"""What highdicom writes into every object it creates, written directly for the fast writers.

:mod:`dicom_gateway.sr_template` and :mod:`dicom_gateway.sc_image` write the same data elements as
highdicom's ``SOPClass`` subclasses (the reference writers), without the IOD table look-ups
highdicom does on each object: the File Meta Information (PS3.10 7.1) under highdicom's
implementation class UID, and the SOP Common Contributing Equipment Sequence (PS3.3 C.12.1): the
source's acquisition equipment, then highdicom as the processing equipment.
"""
from __future__ import annotations

import datetime
from functools import lru_cache
from io import BytesIO

import highdicom as hd
from highdicom.version import __version__ as HIGHDICOM_VERSION
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

#: highdicom's Implementation Class UID (PS3.7 D.3.3.2), written by the reference writers too.
HIGHDICOM_IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.9.7433.1.1"
#: PS3.3 C.12.1.1.4 Contribution Description of the source's acquisition equipment (highdicom's).
ACQUISITION_DESCRIPTION = "Acquisition equipment of the source image(s)"


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """PS3.10 File Meta Information of an Explicit VR Little Endian object, as highdicom writes it."""
    meta = _file_meta_without_length(sop_class_uid, sop_instance_uid)
    # UIDs are padded to an even length (PS3.5 6.2): the group length depends on that length only.
    meta.FileMetaInformationGroupLength = _group_length(sop_class_uid, (len(sop_instance_uid) + 1) // 2 * 2)
    return meta


def _file_meta_without_length(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.ImplementationClassUID = HIGHDICOM_IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = f"highdicom{HIGHDICOM_VERSION}"
    return meta


@lru_cache(maxsize=None)
def _group_length(sop_class_uid: str, padded_uid_length: int) -> int:
    """File Meta Information Group Length (0002,0000) for a SOP Instance UID of that length."""
    meta = _file_meta_without_length(sop_class_uid, "1" * padded_uid_length)
    with BytesIO() as fp:
        write_file_meta_info(fp, meta, enforce_standard=True)
        return len(fp.getvalue())


def contributing_equipment(source: Dataset, is_image: bool = True) -> list[Dataset]:
    """Contributing Equipment Sequence items: the source's acquisition equipment when ``source``
    is an image that names a manufacturer (highdicom's ``for_image_acquisition`` without its IOD
    look-up; left out when a value is unusable, as highdicom does), then highdicom."""
    items = []
    if is_image and source.get("Manufacturer"):
        acquired = source.get("AcquisitionDateTime")
        date, time_ = source.get("AcquisitionDate"), source.get("AcquisitionTime")
        if acquired is None and isinstance(date, datetime.date) and isinstance(time_, datetime.time):
            acquired = datetime.datetime.combine(date, time_)
        try:
            items.append(hd.ContributingEquipment(
                manufacturer=source.get("Manufacturer"),
                purpose_of_reference=codes.DCM.AcquisitionEquipment,
                manufacturer_model_name=source.get("ManufacturerModelName"),
                software_versions=source.get("SoftwareVersions"),
                device_serial_number=source.get("DeviceSerialNumber"),
                institution_name=source.get("InstitutionName"),
                institutional_department_name=source.get("InstitutionalDepartmentName"),
                institution_address=source.get("InstitutionAddress"),
                station_name=source.get("StationName"),
                contribution_datetime=acquired,
                contribution_description=ACQUISITION_DESCRIPTION,
            ))
        except Exception:  # noqa: BLE001 - as highdicom: an unusable source value leaves the item out
            pass
    items.append(hd.ContributingEquipment.for_highdicom())
    return items
