"""DICOM test data: CT series and skin photographs as a scanner, camera or dermatoscope sends them.

:func:`make_ct_series` wraps a volume in a CT Image Storage series (PS3.3 A.3); :func:`chest_ct`
draws that volume with the project's CT phantom (:mod:`training.synthetic.ct`) at the series'
spacing.  :func:`make_photo_dataset` wraps skin photographs (VL Photographic, Dermoscopic
Photography, VL Microscopic, Secondary Capture, Video Photographic, Multi-frame True Color SC; RGB,
JPEG YBR_FULL_422, PALETTE COLOR, MONOCHROME2).  Radiographs: :func:`training.synthetic.dicom.make_dx_dataset`,
whose modules these reuse.  Every Type 1 and Type 2 attribute of the mandatory modules is present.
The patient is a made-up demo patient: nothing here is clinical data.
"""
from __future__ import annotations

import io

import numpy as np
from pydicom import Dataset
from pydicom.encaps import encapsulate
from pydicom.sr.coding import Code
from pydicom.uid import (
    UID,
    DermoscopicPhotographyImageStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    VLMicroscopicImageStorage,
    generate_uid,
)

from training.synthetic.ct import CtSample, generate_ct
from training.synthetic.dicom import BITS_STORED, check_pixels, code_item, make_dx_dataset, with_file_meta

#: PS3.6 Annex A: CT Image Storage.
CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
#: Rescale Intercept of generated CT (PS3.3 C.11.1.1.2): stored value 0 is -1024 HU.
CT_RESCALE_INTERCEPT_HU = -1024
#: Pixel Spacing and Slice Thickness of generated CT series, in mm.
CT_PIXEL_SPACING_MM = 0.8
CT_SLICE_THICKNESS_MM = 2.5

#: Voxel spacing ``(z, y, x)`` of :func:`make_ct_series` and :func:`chest_ct`, in mm.
CT_SPACING_MM = (CT_SLICE_THICKNESS_MM, CT_PIXEL_SPACING_MM, CT_PIXEL_SPACING_MM)


def stored_values(volume_hu: np.ndarray) -> np.ndarray:
    """Hounsfield units as the 12-bit stored values of :func:`make_ct_series` (value 0 is
    :data:`CT_RESCALE_INTERCEPT_HU`)."""
    stored = np.asarray(volume_hu, np.int32) - CT_RESCALE_INTERCEPT_HU
    return np.clip(stored, 0, (1 << BITS_STORED) - 1).astype(np.uint16)


def chest_ct(seed: int = 0, shape_vox: tuple[int, int, int] = (16, 64, 64), *,
             n_nodules: int | None = 1) -> tuple[np.ndarray, CtSample]:
    """A chest CT drawn by :func:`training.synthetic.ct.generate_ct` at :data:`CT_SPACING_MM`.

    Returns
    -------
    tuple[numpy.ndarray, CtSample]
        The volume as stored values for :func:`make_ct_series`, and the sample (its
        ``nodule_mask`` and ``nodules`` are the ground truth).
    """
    sample = generate_ct(np.random.default_rng(seed), shape_vox, CT_SPACING_MM, n_nodules)
    return stored_values(sample.volume_hu), sample


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
    first = make_dx_dataset(check_pixels(volume[0]), patient_id=patient_id, patient_name=patient_name,
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
        ds.PixelData = check_pixels(plane).astype("<u2").tobytes()
        ds.RescaleIntercept = CT_RESCALE_INTERCEPT_HU
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.KVP = 120
        out.append(with_file_meta(ds))
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
        ds.AnatomicRegionSequence = [code_item(SKIN_OF_TRUNK)]
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
    ds = with_file_meta(ds)
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


#: Transfer syntaxes (PS3.5 Annex A) :func:`transcode` writes, and how: DCMTK ``dcmconv`` for the
#: native encodings, ``dcmcjpeg`` for JPEG (PS3.5 A.4.1), pydicom's encoders (:meth:`Dataset.compress`:
#: pyjpegls, pylibjpeg-openjpeg, pydicom's RLE) for JPEG-LS, JPEG 2000 and RLE.  JPEG Baseline is
#: 8-bit: ``dcmcjpeg`` requantises 12-bit samples to 8 bits.
DCMTK_TRANSCODERS = {
    "1.2.840.10008.1.2": ("dcmconv", "+ti"),  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99": ("dcmconv", "+td"),  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2": ("dcmconv", "+tb"),  # Explicit VR Big Endian (retired, still accepted)
    "1.2.840.10008.1.2.4.50": ("dcmcjpeg", "+eb"),  # JPEG Baseline (Process 1), 8-bit
    "1.2.840.10008.1.2.4.51": ("dcmcjpeg", "+ee"),  # JPEG Extended (Process 2 and 4), 8 or 12-bit
    "1.2.840.10008.1.2.4.57": ("dcmcjpeg", "+el"),  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": ("dcmcjpeg", "+e1"),  # JPEG Lossless, Selection Value 1
}
#: pydicom encoder options of a lossy syntax: JPEG-LS NEAR 2 (PS3.5 A.4.3); JPEG 2000 at 10:1.
PYDICOM_TRANSCODERS = {
    "1.2.840.10008.1.2.4.80": {},  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": {"jls_error": 2},  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": {},  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": {"j2k_cr": [10]},  # JPEG 2000 (lossy)
    "1.2.840.10008.1.2.5": {},  # RLE Lossless
}
TRANSCODED_SYNTAXES = tuple(DCMTK_TRANSCODERS) + tuple(PYDICOM_TRANSCODERS)


def transcode(ds: Dataset, syntax: str, folder) -> Dataset:
    """``ds`` (native Pixel Data) re-encoded in the transfer syntax ``syntax``, one of
    :data:`TRANSCODED_SYNTAXES`, as read back from the Part 10 file written in ``folder``
    (its ``filename``: send that file, since pydicom does not write every syntax it reads).

    Raises
    ------
    ValueError
        ``syntax`` is not one of :data:`TRANSCODED_SYNTAXES`.
    subprocess.CalledProcessError
        The DCMTK tool refused the image (its stderr says why).
    """
    import copy
    import subprocess
    from pathlib import Path

    from pydicom import dcmread

    from peers import DCMTK_ENV, find_peer

    if syntax not in TRANSCODED_SYNTAXES:
        raise ValueError(f"syntax must be one of {TRANSCODED_SYNTAXES}, {syntax!r} is given.")
    folder = Path(folder)
    source, target = folder / f"{ds.SOPInstanceUID}.dcm", folder / f"{ds.SOPInstanceUID}-{syntax}.dcm"
    if syntax in DCMTK_TRANSCODERS:
        ds.save_as(source, enforce_file_format=True)
        tool, option = DCMTK_TRANSCODERS[syntax]
        subprocess.run([find_peer(tool), option, str(source), str(target)], env=DCMTK_ENV, check=True,
                       capture_output=True, timeout=60)
    else:
        encoded = copy.deepcopy(ds)
        encoded.compress(syntax, **PYDICOM_TRANSCODERS[syntax])
        encoded.save_as(target, enforce_file_format=True)
    return dcmread(target)
