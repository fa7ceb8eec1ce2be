"""Generated, standard-conformant radiographs and CT series for demos and tests.

:func:`make_dx_dataset` wraps a pixel array in a complete Digital X-Ray Image Storage - For
Presentation (PS3.3 A.26) or Computed Radiography Image Storage (PS3.3 A.2) instance, with file
meta information, so that it can be written with :func:`pydicom.dcmwrite`, sent with C-STORE and
checked with ``dciodvfy``.  :func:`make_photo_dataset` does it for skin photographs (VL Photographic,
Dermoscopic Photography, VL Microscopic, Secondary Capture, Video Photographic, Multi-frame True Color
SC; RGB, JPEG YBR_FULL_422, PALETTE COLOR, MONOCHROME2).  :func:`make_ct_series` does the same for a CT Image Storage series
(PS3.3 A.3) from a volume, and :func:`make_ct_phantom` draws a chest-like volume with one spherical
nodule and its ground-truth mask (for SEG tests).  Every Type 1 and Type 2 attribute of the
mandatory modules is present.
The patient is a made-up demo patient: nothing here is clinical data.
"""
from __future__ import annotations

import datetime
import io

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    DermoscopicPhotographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    PYDICOM_IMPLEMENTATION_UID,
    VLMicroscopicImageStorage,
    generate_uid,
)

#: PS3.6 Annex A: Digital X-Ray Image Storage - For Presentation.
DX_FOR_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
#: PS3.6 Annex A: Computed Radiography Image Storage.
CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
_SOP_CLASSES = {"DX": DX_FOR_PRESENTATION_STORAGE, "CR": CR_STORAGE}
#: PS3.6 Annex A: CT Image Storage.
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
#: Rescale Intercept of generated CT (PS3.3 C.11.1.1.2): stored value 0 is -1024 HU.
CT_RESCALE_INTERCEPT_HU = -1024
#: Pixel Spacing and Slice Thickness of generated CT series, in mm.
CT_PIXEL_SPACING_MM = 0.8
CT_SLICE_THICKNESS_MM = 2.5

#: Bits Stored of every generated image (PS3.3 C.8.11.3 DX Image: 6 to 16 are allowed).
BITS_STORED = 12

#: Detector element pitch in mm (Imager Pixel Spacing, PS3.3 C.8.11.4; also used as Pixel Spacing,
#: i.e. the image is calibrated at the detector plane).
PIXEL_SPACING_MM = 0.2

#: Body Part Examined (PS3.16 Annex L) to Anatomic Region Sequence code (PS3.16 CID 4009
#: "DX Anatomy Imaged").  Unpaired parts only, so Image Laterality is always "U" (unpaired).
BODY_PARTS: dict[str, Code] = {
    "CHEST": codes.SCT.Chest,
    "ABDOMEN": codes.SCT.Abdomen,
    "PELVIS": codes.SCT.Pelvis,
    "SKULL": codes.SCT.Skull,
}

#: View Position (PS3.3 C.8.11.5) to View Code Sequence code (PS3.16 CID 4010 "DX View").
VIEWS: dict[str, Code] = {
    "PA": codes.SCT.PosteroAnterior,
    "AP": codes.SCT.AnteroPosterior,
    "LL": codes.SCT.LeftLateral,
    "RL": codes.SCT.RightLateral,
}

#: Patient Orientation (PS3.3 C.7.6.1.1.1): direction of the rows, then of the columns, of an
#: upright image in the usual display (frontal views as if facing the patient, laterals as if
#: looking at the side against the detector).
_PATIENT_ORIENTATION = {"PA": ["L", "F"], "AP": ["L", "F"], "LL": ["P", "F"], "RL": ["A", "F"]}


def _code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy.ndarray, {type(pixels).__name__} is given.")
    if pixels.dtype != np.uint16:
        raise ValueError(f"pixels must have dtype uint16, {pixels.dtype} is given.")
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ValueError(f"pixels must be a non-empty 2D array, shape {pixels.shape} is given.")
    if pixels.max() >= 1 << BITS_STORED:
        raise ValueError(
            f"pixels must fit in {BITS_STORED} bits (<= {(1 << BITS_STORED) - 1}), "
            f"maximum {int(pixels.max())} is given."
        )
    return np.ascontiguousarray(pixels)


def make_dx_dataset(
    pixels: np.ndarray,
    *,
    patient_id: str = "079123456789",
    patient_name: str = "Demo^Patient",
    issuer: str | None = None,
    study_uid: str | None = None,
    accession: str | None = None,
    sop_class: str = "DX",
    body_part: str = "CHEST",
    view: str = "PA",
) -> Dataset:
    """Wrap ``pixels`` in a complete DX (For Presentation) or CR image instance.

    Parameters
    ----------
    pixels: numpy.ndarray
        2D ``uint16`` array, rows by columns, values below ``2**BITS_STORED`` (MONOCHROME2: high
        value = bright = dense).
    patient_id: str, optional
        Patient ID (0010,0020).
    patient_name: str, optional
        Patient's Name (0010,0010), in DICOM PN form (``Family^Given``).
    issuer: str | None, optional
        Issuer of Patient ID (0010,0021); left out when None.
    study_uid: str | None, optional
        Study Instance UID; a new UID when None (pass one to put several images in one study).
    accession: str | None, optional
        Accession Number (0008,0050); empty (Type 2) when None.
    sop_class: str, optional
        ``"DX"`` for Digital X-Ray Image Storage - For Presentation, ``"CR"`` for Computed
        Radiography Image Storage.
    body_part: str, optional
        Body Part Examined (0018,0015), one of :data:`BODY_PARTS`.
    view: str, optional
        View Position (0018,5101), one of :data:`VIEWS`.

    Returns
    -------
    pydicom.Dataset
        The instance, with file meta information (Explicit VR Little Endian).

    Raises
    ------
    TypeError
        When ``pixels`` is not a numpy array.
    ValueError
        When an argument is out of range; the message names it.
    """
    pixels = _check_pixels(pixels)
    modality = str(sop_class).upper()
    if modality not in _SOP_CLASSES:
        raise ValueError(
            f"sop_class must be one of {sorted(_SOP_CLASSES)}, {sop_class!r} is given."
        )
    body_part = str(body_part).upper()
    if body_part not in BODY_PARTS:
        raise ValueError(f"body_part must be one of {sorted(BODY_PARTS)}, {body_part!r} is given.")
    view = str(view).upper()
    if view not in VIEWS:
        raise ValueError(f"view must be one of {sorted(VIEWS)}, {view!r} is given.")
    if not patient_id or len(patient_id) > 64:
        raise ValueError(f"patient_id must have 1 to 64 characters, {patient_id!r} is given.")

    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_class_uid = _SOP_CLASSES[modality]
    sop_instance_uid = generate_uid()

    ds = Dataset()
    # SOP Common (PS3.3 C.12.1)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient (C.7.1.1)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = study_uid if study_uid is not None else generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = accession if accession is not None else ""
    ds.StudyDescription = f"XR {body_part.title()} {view}"
    # General Series (C.7.3.1), DX Series (C.8.11.1) / CR Series (C.8.1.1)
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = f"{body_part.title()} {view}"
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    # Laterality (C.7.3.1) is Type 2C for paired body parts only: BODY_PARTS has none.
    # General Equipment (C.7.5.1)
    ds.Manufacturer = "medgate"
    ds.ManufacturerModelName = "medgate test data generator"
    ds.SoftwareVersions = "1"
    ds.InstitutionName = "medgate demo"
    # General Acquisition (C.7.10.1), General Image (C.7.6.1)
    ds.AcquisitionDate, ds.AcquisitionTime = date, time
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceNumber = 1
    ds.PatientOrientation = _PATIENT_ORIENTATION[view]
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel (C.7.6.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    # Modality LUT, VOI LUT (C.11.2: required for DX For Presentation), Presentation LUT
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = (1 << BITS_STORED) // 2
    ds.WindowWidth = 1 << BITS_STORED
    ds.PresentationLUTShape = "IDENTITY"
    # Detector / plate geometry (DX Detector C.8.11.4, CR Image C.8.1.2)
    ds.ImagerPixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "detector plane"
    ds.KVP = 120
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = 200
    if modality == "DX":
        _add_dx_modules(ds, body_part, view)
    return _with_file_meta(ds)


def _add_dx_modules(ds: Dataset, body_part: str, view: str) -> None:
    """DX Anatomy Imaged (C.8.11.2), DX Image (C.8.11.3), DX Detector (C.8.11.4), DX Positioning
    (C.8.11.5) and Acquisition Context (C.7.6.14, mandatory in the DX IOD only)."""
    ds.AcquisitionContextSequence = []
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = [_code_item(BODY_PARTS[body_part])]
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.CalibrationImage = "NO"
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "MEDGATE-0001"
    ds.DetectorManufacturerName = "medgate"
    ds.DetectorManufacturerModelName = "generated"
    ds.DetectorConditionsNominalFlag = "YES"
    ds.DetectorElementPhysicalSize = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.DetectorElementSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.DetectorActiveShape = "RECTANGLE"
    height_mm, width_mm = (round(PIXEL_SPACING_MM * n, 3) for n in (ds.Rows, ds.Columns))
    ds.DetectorActiveDimensions = [height_mm, width_mm]
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [max(1, round(height_mm)), max(1, round(width_mm))]
    ds.FieldOfViewOrigin = [0, 0]
    ds.FieldOfViewRotation = "0"
    ds.FieldOfViewHorizontalFlip = "NO"
    ds.PositionerType = "COLUMN"
    ds.ViewCodeSequence = [_code_item(VIEWS[view])]


def _with_file_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    return ds


def make_ct_phantom(
    shape: tuple[int, int, int] = (8, 64, 64),
    *,
    nodule_centre_px: tuple[float, float, float] = (4.0, 24.0, 20.0),
    nodule_radius_px: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like CT volume (stored values, HU + 1024) with one solid nodule in the right lung.

    Parameters
    ----------
    shape: tuple[int, int, int], optional
        ``(slices, rows, columns)``.
    nodule_centre_px: tuple[float, float, float], optional
        ``(slice, row, column)`` of the nodule centre, in voxels.
    nodule_radius_px: float, optional
        Nodule radius in in-plane pixels (slices are thicker: the sphere is scaled in mm).

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``uint16`` volume and boolean nodule mask, both of ``shape``.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (slices, rows, columns) of positive sizes, {shape} is given.")
    if nodule_radius_px <= 0:
        raise ValueError(f"nodule_radius_px must be positive, {nodule_radius_px} is given.")
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    rows, columns = shape[1], shape[2]
    body = ((y - rows / 2) / (0.45 * rows)) ** 2 + ((x - columns / 2) / (0.48 * columns)) ** 2 <= 1
    lungs = np.zeros(shape, bool)
    for cx in (0.3 * columns, 0.7 * columns):
        lungs |= ((y - rows / 2) / (0.32 * rows)) ** 2 + ((x - cx) / (0.16 * columns)) ** 2 <= 1
    hu = np.full(shape, -1000.0)
    hu[body] = 40.0
    hu[lungs] = -850.0
    dz = (z - nodule_centre_px[0]) * CT_SLICE_THICKNESS_MM / CT_PIXEL_SPACING_MM
    nodule = dz**2 + (y - nodule_centre_px[1]) ** 2 + (x - nodule_centre_px[2]) ** 2 <= nodule_radius_px**2
    hu[nodule] = 30.0
    return np.round(hu - CT_RESCALE_INTERCEPT_HU).astype(np.uint16), nodule


def make_ct_series(
    volume: np.ndarray,
    *,
    patient_id: str = "079123456789",
    patient_name: str = "Demo^Patient",
    issuer: str | None = None,
    study_uid: str | None = None,
    accession: str | None = None,
) -> list[Dataset]:
    """Wrap ``volume`` (``(slices, rows, columns)`` uint16, 12 bits) in a CT Image Storage series.

    Axial slices, head first supine, ``CT_SLICE_THICKNESS_MM`` apart along +z, one Frame of
    Reference; stored value 0 is :data:`CT_RESCALE_INTERCEPT_HU`.  Arguments as for
    :func:`make_dx_dataset`.

    Returns
    -------
    list[pydicom.Dataset]
        One instance per slice, with file meta information, in slice order.
    """
    if not isinstance(volume, np.ndarray) or volume.ndim != 3:
        raise ValueError(
            f"volume must be a 3D numpy array (slices, rows, columns), "
            f"{getattr(volume, 'shape', type(volume).__name__)} is given."
        )
    if not patient_id or len(patient_id) > 64:
        raise ValueError(f"patient_id must have 1 to 64 characters, {patient_id!r} is given.")
    first = make_dx_dataset(_check_pixels(volume[0]), patient_id=patient_id, patient_name=patient_name,
                            issuer=issuer, study_uid=study_uid, accession=accession, sop_class="CR")
    series_uid, frame_of_reference_uid = generate_uid(), generate_uid()
    out = []
    for index, plane in enumerate(volume):
        ds = Dataset()
        for keyword in ("SpecificCharacterSet", "InstanceCreationDate", "InstanceCreationTime",
                        "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate",
                        "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber", "Manufacturer",
                        "ManufacturerModelName", "SoftwareVersions", "InstitutionName",
                        "ContentDate", "ContentTime", "AcquisitionDate", "AcquisitionTime"):
            if keyword in first:
                setattr(ds, keyword, first[keyword].value)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDescription = "CT Chest"
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = "Chest axial"
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = index + 1
        ds.AcquisitionNumber = 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BurnedInAnnotation = "NO"
        ds.PixelSpacing = [CT_PIXEL_SPACING_MM, CT_PIXEL_SPACING_MM]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, round(index * CT_SLICE_THICKNESS_MM, 3)]
        ds.SliceThickness = CT_SLICE_THICKNESS_MM
        ds.SliceLocation = ds.ImagePositionPatient[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, BITS_STORED, BITS_STORED - 1
        ds.PixelRepresentation = 0
        ds.PixelData = _check_pixels(plane).astype("<u2").tobytes()
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT_HU
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.KVP = 120
        out.append(_with_file_meta(ds))
    return out


#: PS3.6 Annex A storage SOP classes of skin photographs: VL Photographic Image (PS3.3 A.32.4),
#: Dermoscopic Photography Image (A.32.11), VL Microscopic Image (A.32.2), Secondary Capture Image
#: (A.8.1), and the multi-frame Video Photographic Image (A.32.7) and Multi-frame True Color Secondary
#: Capture Image (A.8.5).
VL_PHOTOGRAPHIC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.4")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
VIDEO_PHOTOGRAPHIC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.77.1.4.1")
MULTIFRAME_TRUE_COLOR_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.4")
#: The photographs :func:`make_photo_dataset` writes, by ``kind``.
PHOTO_SOP_CLASSES = {"photo": VL_PHOTOGRAPHIC_STORAGE, "dermoscopy": DermoscopicPhotographyImageStorage,
                     "microscopic": VLMicroscopicImageStorage, "sc": SECONDARY_CAPTURE_STORAGE,
                     "video": VIDEO_PHOTOGRAPHIC_STORAGE, "multiframe": MULTIFRAME_TRUE_COLOR_SC_STORAGE}
#: General Series Modality (PS3.3 C.7.3.1.1.1) by ``kind``: External-camera Photography, except
#: Dermoscopy (DMS, the Dermoscopic Photography IOD's) and General Microscopy (GM, VL Microscopic).
PHOTO_MODALITIES = {"dermoscopy": "DMS", "microscopic": "GM"}
MULTIFRAME_KINDS = ("video", "multiframe")
PHOTO_PHOTOMETRICS = ("RGB", "YBR_FULL_422", "PALETTE COLOR", "MONOCHROME2")
#: Anatomic Region of generated skin photographs (PS3.16 CID 4031 "Common Anatomic Regions").
SKIN_OF_TRUNK = Code("86381001", "SCT", "Skin of trunk")


def make_photo_dataset(
    rgb: np.ndarray,
    *,
    kind: str = "photo",
    photometric: str = "RGB",
    patient_id: str = "079123456789",
    study_uid: str | None = None,
) -> Dataset:
    """Wrap an ``uint8`` RGB photograph, (rows, columns, 3), or (frames, rows, columns, 3) for
    a multi-frame ``kind``, in a skin photograph instance (Modality XC) as a camera or dermatoscope
    sends it.

    Parameters
    ----------
    kind
        ``"photo"`` VL Photographic Image, ``"dermoscopy"`` Dermoscopic Photography Image (Modality
        DMS), ``"microscopic"`` VL Microscopic Image (Modality GM, Body Part Examined SKIN), ``"sc"``
        Secondary Capture Image; multi-frame: ``"video"`` Video Photographic Image, ``"multiframe"``
        Multi-frame True Color Secondary Capture.
    photometric
        ``"RGB"`` native; ``"YBR_FULL_422"`` JPEG Baseline (Process 1) with 4:2:2 chroma
        subsampling, as cameras write; ``"PALETTE COLOR"`` (``"sc"`` only: the VL IODs do not allow
        it) 256 colours with 16-bit lookup tables; ``"MONOCHROME2"`` the luminance.
    patient_id, study_uid
        As for :func:`make_dx_dataset`.

    Raises
    ------
    ValueError
        An unknown ``kind`` or ``photometric``, or ``rgb`` not ``uint8`` of the shape ``kind`` takes.
    """
    if kind not in PHOTO_SOP_CLASSES:
        raise ValueError(f"kind must be one of {sorted(PHOTO_SOP_CLASSES)}, {kind!r} is given.")
    if photometric not in PHOTO_PHOTOMETRICS:
        raise ValueError(f"photometric must be one of {PHOTO_PHOTOMETRICS}, {photometric!r} is given.")
    frames = np.asarray(rgb)
    frames = frames if kind in MULTIFRAME_KINDS else frames[None]
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"rgb must be uint8 (rows, columns, 3), or (frames, rows, columns, 3) for a "
                         f"multiframe, {frames.dtype} {np.asarray(rgb).shape} is given.")
    if kind in MULTIFRAME_KINDS and photometric != "RGB":
        raise ValueError(f"a multi-frame {kind} is written as RGB, {photometric!r} is given.")
    if photometric == "PALETTE COLOR" and kind != "sc":
        raise ValueError(f"PALETTE COLOR is written as a Secondary Capture (kind 'sc'), {kind!r} is given.")
    gray = make_dx_dataset(np.zeros((8, 8), np.uint16), patient_id=patient_id, study_uid=study_uid,
                           sop_class="CR")
    ds = Dataset()
    for keyword in ("SpecificCharacterSet", "InstanceCreationDate", "InstanceCreationTime", "PatientName",
                    "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "StudyID", "AccessionNumber", "Manufacturer", "ContentDate",
                    "ContentTime", "AcquisitionDate", "AcquisitionTime", "SeriesDate", "SeriesTime"):
        setattr(ds, keyword, gray[keyword].value)
    ds.AcquisitionDateTime = gray.AcquisitionDate + gray.AcquisitionTime
    ds.SOPClassUID = PHOTO_SOP_CLASSES[kind]
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDescription = "Skin lesion photography"
    ds.Modality = PHOTO_MODALITIES.get(kind, "XC")
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"Skin lesion {kind}"
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY"] if kind in ("sc", "multiframe") else ["ORIGINAL", "PRIMARY"]
    # General Series Laterality (C.7.3.1) is Type 2C, for a paired part without Image Laterality: the
    # skin of the trunk is unpaired, so Image Laterality U (General Image C.7.6.1) and no Laterality
    ds.ImageLaterality = "U"
    if kind in ("sc", "multiframe"):  # SC Equipment (C.8.6.1)
        ds.ConversionType = "DV"
    else:  # Acquisition Context (C.7.6.14), VL Image (C.8.12.1): region of the photographed skin
        ds.AcquisitionContextSequence = []
        ds.AnatomicRegionSequence = [_code_item(SKIN_OF_TRUNK)]
    if kind == "microscopic":  # what routes it to derm by default (dicom_gateway.routing)
        ds.BodyPartExamined = "SKIN"
    if kind == "dermoscopy":
        _add_dermoscopy_modules(ds, gray)
    if kind in MULTIFRAME_KINDS:  # Multi-frame (C.7.6.6), Cine (C.7.6.5)
        ds.NumberOfFrames = len(frames)
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 1000.0
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    syntax = ExplicitVRLittleEndian
    if photometric in ("RGB", "YBR_FULL_422"):
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PixelData = frames.tobytes()
    if photometric == "YBR_FULL_422":
        ds.PixelData, syntax = encapsulate([_jpeg_baseline_422(frames[0])]), JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = round(frames[0].nbytes / len(ds.PixelData), 2)
    elif photometric == "PALETTE COLOR":
        _add_palette(ds, frames[0])
    elif photometric == "MONOCHROME2":
        ds.SamplesPerPixel = 1
        luma = frames[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        ds.PixelData = np.clip(np.rint(luma), 0, 255).astype(np.uint8).tobytes()
    ds.PhotometricInterpretation = photometric
    ds = _with_file_meta(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _add_dermoscopy_modules(ds: Dataset, gray: Dataset) -> None:
    """The Dermoscopic Photography Image IOD's own modules (PS3.3 A.32.11): Frame of Reference
    (C.7.4.1), Enhanced General Equipment (C.7.5.2) and Dermoscopic Image (C.8.12.x); the Type 2
    acquisition values a generator does not know are empty."""
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    for keyword in ("ManufacturerModelName", "SoftwareVersions"):
        setattr(ds, keyword, gray[keyword].value)
    ds.DeviceSerialNumber = "MEDGATE-0001"
    ds.RecognizableVisualFeatures = "NO"
    ds.LightSourcePolarization = ""
    ds.EmitterColorTemperature = None
    ds.ContactMethod = ""
    ds.OpticalMagnificationFactor = None


def _jpeg_baseline_422(rgb: np.ndarray) -> bytes:
    """One RGB frame as a JPEG Baseline stream, YCbCr with 4:2:2 chroma subsampling (PS3.5 8.2.1:
    Photometric Interpretation YBR_FULL_422)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "JPEG", quality=95, subsampling=1)  # 1: 4:2:2
    return buffer.getvalue()


def _add_palette(ds: Dataset, rgb: np.ndarray) -> None:
    """Quantise ``rgb`` to 256 colours: indices as Pixel Data and 16-bit Red/Green/Blue Palette Color
    Lookup Tables (PS3.3 C.7.6.3.1.5, C.7.9)."""
    from PIL import Image

    image = Image.fromarray(rgb, "RGB").quantize(colors=256)
    palette = np.zeros((256, 3), np.uint16)
    entries = np.asarray(image.getpalette()[:768], np.uint16).reshape(-1, 3)
    palette[:len(entries)] = entries * 257  # 8 -> 16 bits
    ds.SamplesPerPixel = 1
    ds.PixelData = np.asarray(image, np.uint8).tobytes()
    for index, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", palette[:, index].astype("<u2").tobytes())
