"""DICOM pixel data to model input: decode, modality LUT, VOI LUT, photometric handling, volumes.

The array-level transform shared with training lives in :mod:`models.transforms`; this module only
turns datasets into plain arrays: a 2D image in MONOCHROME2 orientation (high value = dense), an
``uint8`` RGB photograph for colour models, the VOI LUT / windowed display values (PS3.3 C.11.2),
the pixel spacing, and CT/MR volumes sorted by Image Position (Patient) along the slice normal
(PS3.3 C.7.6.2.1.1) with their voxel spacing.

Decoding (:func:`decoded_pixels`) is pydicom's, with DCMTK ``dcmdjpeg`` as the fallback for the
JPEG syntaxes its plugins refuse (:mod:`dicom_gateway.dcmtk_decoder`).  Colour arrays are RGB
whatever the Photometric Interpretation (PS3.3 C.7.6.3.1.2): pydicom converts YBR_FULL and
YBR_FULL_422 (native or JPEG) to RGB, JPEG 2000 decoders undo YBR_ICT/YBR_RCT, ``dcmdjpeg``
converts YCbCr, and PALETTE COLOR goes through its lookup tables (:func:`rgb_image`).

A 2D image model takes one frame: :func:`model_input` refuses a multi-frame instance, and refuses
a MONOCHROME image for a colour (3-channel) model rather than inventing colour; a colour image for
a grayscale model is converted to its luminance (ITU-R BT.601 weights).  :class:`ImageInput` (from a
model's metadata) says the same from the header alone, so the intake refuses such an instance to
its sender (:mod:`dicom_gateway.intake`) before it is stored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from dicom_gateway.dcmtk_decoder import DCMDJPEG_SYNTAXES, DecoderError, dcmdjpeg_path, decode_jpeg
from models.transforms import input_channels, to_model_input, to_rgb_model_input

#: ITU-R BT.601 luma weights of R, G, B: a colour image for a grayscale model.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
#: Photometric Interpretations whose decoded array is RGB (PS3.3 C.7.6.3.1.2).
COLOUR_PHOTOMETRICS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"})
#: Most pixels (Rows x Columns x Number of Frames) an instance may decode to: a breast tomosynthesis
#: volume (2457 x 1890 x 70) or a 1000-frame enhanced CT fits; a compressed stream whose header
#: claims 65535 x 65535 (a few kilobytes of RLE or JPEG-LS) is refused before the decoder allocates.
MAX_DECODED_PIXELS = 1 << 29  # 1 GiB at 16 bits


class PixelDataError(ValueError):
    """The dataset's pixels cannot be decoded or are not a usable image; the message says why."""


def decoded_pixels(ds: Dataset) -> np.ndarray:
    """Every frame of ``ds`` as pydicom's ``pixel_array`` gives it (colour as RGB), decoded by
    ``dcmdjpeg`` where pydicom's plugins refuse one of :data:`DCMDJPEG_SYNTAXES`.

    Raises
    ------
    PixelDataError
        No Pixel Data, more than :data:`MAX_DECODED_PIXELS` pixels by the header, or no decoder
        can decode it (each decoder's reason is given).
    """
    if "PixelData" not in ds:
        raise PixelDataError("the dataset has no Pixel Data (7FE0,0010)")
    try:
        pixels = int(ds.Rows) * int(ds.Columns) * max(_frames(ds), 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise PixelDataError(f"the Image Pixel Module is incomplete or malformed: {exc}") from None
    if pixels > MAX_DECODED_PIXELS:
        raise PixelDataError(f"the image is {ds.Rows} x {ds.Columns} x {_frames(ds)} frames, {pixels} pixels, "
                             f"over the {MAX_DECODED_PIXELS} this gateway decodes; nothing was decoded")
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - every decoder error is the same failure to us
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax in DCMDJPEG_SYNTAXES and dcmdjpeg_path() is not None:
        try:
            return decode_jpeg(ds).pixel_array
        except DecoderError as exc:
            reason = f"{reason}; {exc}"
        except Exception as exc:  # noqa: BLE001 - dcmdjpeg's output unreadable
            reason = f"{reason}; dcmdjpeg output: {type(exc).__name__}: {exc}"
    raise PixelDataError(f"pixel data cannot be decoded: {reason}")


def _photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def _frames(ds: Dataset) -> int:
    try:
        return int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def grayscale_image(ds: Dataset) -> np.ndarray:
    """Decode ``ds`` into a 2D float32 array, MONOCHROME2 orientation.

    Raises
    ------
    PixelDataError
        No Pixel Data, an undecodable transfer syntax or a corrupt stream, or an empty image.
    """
    pixels = decoded_pixels(ds)
    photometric = _photometric(ds)
    frames = _frames(ds)
    if frames > 1:
        pixels = pixels[frames // 2]
    if photometric == "PALETTE COLOR":
        pixels = _palette_rgb(pixels, ds)
    if photometric in COLOUR_PHOTOMETRICS or photometric == "PALETTE COLOR" or pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float32) @ LUMA_WEIGHTS
    else:
        pixels = apply_modality_lut(pixels, ds).astype(np.float32)
    if photometric == "MONOCHROME1":
        pixels = pixels.max() - pixels
    if pixels.ndim != 2 or min(pixels.shape) < 8:
        raise PixelDataError(f"expected a 2D image of at least 8x8 pixels, shape {pixels.shape} is given")
    return pixels


def check_decodable(ds: Dataset) -> None:
    """Raise :class:`PixelDataError` unless ``grayscale_image(ds)`` would succeed, cheaply.

    Native (uncompressed) Pixel Data is checked by its attributes and length (PS3.5 8.1.1; YBR_FULL_422
    holds two samples per pixel, PS3.3 C.7.6.3.1.2), which is all a decode of it can fail on, so ``ds``
    may be the C-STORE header reader's :class:`dicom_gateway.header.Header`; a PALETTE COLOR image's
    lookup tables are checked where ``ds`` carries them (a pydicom Dataset).  Encapsulated Pixel Data
    is decoded, since only the decoder can tell a corrupt stream.
    """
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if transfer_syntax is None or transfer_syntax.is_compressed or "PixelData" not in ds:
        grayscale_image(ds)
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples, bits = int(ds.SamplesPerPixel), int(ds.BitsAllocated)
        photometric = str(ds.PhotometricInterpretation).upper()
    except Exception as exc:  # noqa: BLE001 - a missing or malformed Image Pixel attribute
        raise PixelDataError(f"the Image Pixel Module is incomplete or malformed: {exc}") from None
    if min(rows, columns) < 8:
        raise PixelDataError(f"expected a 2D image of at least 8x8 pixels, {rows}x{columns} is given")
    if samples not in (1, 3) or frames < 1:
        raise PixelDataError(f"Samples per Pixel must be 1 or 3 and Number of Frames positive, "
                             f"{samples} and {frames} are given")
    if photometric == "PALETTE COLOR" and samples != 1:
        raise PixelDataError(f"PALETTE COLOR has one sample per pixel (PS3.3 C.7.6.3.1.2), {samples} are given")
    if bits not in (1, 8, 16, 32, 64):
        raise PixelDataError(f"Bits Allocated must be 1, 8, 16, 32 or 64, {bits} is given")
    per_pixel = 2 if photometric == "YBR_FULL_422" else samples
    expected = (rows * columns * frames * per_pixel * bits + 7) // 8
    if len(ds.PixelData) < expected:
        raise PixelDataError(f"Pixel Data holds {len(ds.PixelData)} bytes, {expected} expected for "
                             f"{frames} frame(s) of {rows}x{columns}x{samples} at {bits} bits, {photometric}")
    if photometric == "PALETTE COLOR" and isinstance(ds, Dataset):
        _palette_rgb(np.zeros((1, 1), np.uint16 if bits > 8 else np.uint8), ds)


def _palette_rgb(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR indices through the Red/Green/Blue Palette Color Lookup Tables (PS3.3 C.7.6.3.1.5)."""
    try:
        return apply_color_lut(pixels, ds)
    except Exception as exc:  # noqa: BLE001 - a broken palette is a broken image
        raise PixelDataError(f"the palette color lookup table cannot be applied: {exc}") from None


def rgb_image(ds: Dataset) -> np.ndarray:
    """Decode a single-frame colour image into ``uint8`` (rows, columns, 3) RGB.

    RGB and the YBR family arrive as RGB from the decoders (see the module's docstring); PALETTE
    COLOR is looked up, its 16-bit entries scaled to 8 bits; samples of more than 8 bits are scaled
    by Bits Stored.

    Raises
    ------
    PixelDataError
        A MONOCHROME1/2 image (a colour model is not given invented colour), an unknown
        Photometric Interpretation, more than one frame, or anything :func:`decoded_pixels` raises.
    """
    problem = _colour_problem(ds) or _frames_problem(ds)
    if problem is not None:
        raise PixelDataError(problem)
    photometric = _photometric(ds)
    pixels = decoded_pixels(ds)
    if photometric == "PALETTE COLOR":
        pixels = _palette_rgb(pixels, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        bits = int(ds.get("BitsStored", 8) or 8)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 8:
        raise PixelDataError(f"expected a colour image of at least 8x8 pixels, shape {pixels.shape} is given")
    if bits > 8:
        pixels = np.rint(pixels.astype(np.float32) * (255.0 / (2 ** bits - 1)))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _colour_problem(ds) -> str | None:
    photometric = _photometric(ds)
    if photometric in COLOUR_PHOTOMETRICS or photometric == "PALETTE COLOR":
        return None
    return (f"a colour (RGB) image is required, Photometric Interpretation {photometric} is given; "
            "medgate does not turn grayscale into colour")


def _frames_problem(ds) -> str | None:
    frames = _frames(ds)
    if frames == 1:
        return None
    return (f"a 2D image model reads single-frame images, Number of Frames {frames} is given; send each "
            "frame as an instance of its own")


@dataclass(frozen=True)
class ImageInput:
    """What a model's image input reads, from its metadata (``network_data_format.inputs``).

    Attributes
    ----------
    channels
        1: a grayscale image (any photometric; colour is turned into its luminance); 3: an RGB
        photograph (RGB, the YBR family or PALETTE COLOR; MONOCHROME is refused).
    dimensions
        2: one image per instance, a single frame; 3: a volume assembled from a series.
    """

    channels: int
    dimensions: int

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"`channels` must be 1 (grayscale) or 3 (RGB), {self.channels!r} is given.")
        if self.dimensions not in (2, 3):
            raise ValueError(f"`dimensions` must be 2 (an image) or 3 (a volume), {self.dimensions!r} is given.")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "ImageInput | None":
        """The image input described by one ``network_data_format.inputs`` entry (``num_channels`` or
        the channel axis of ``shape``; ``spatial_shape``, else ``shape`` less its batch and channel
        axes); None when the input is not an image (``type`` other than ``image``)."""
        if spec.get("type", "image") != "image":
            return None
        spatial = spec.get("spatial_shape")
        if not isinstance(spatial, (list, tuple)):
            shape = spec.get("shape")
            spatial = shape[2:] if isinstance(shape, (list, tuple)) and len(shape) >= 4 else None
        if spatial is None:
            raise ValueError(f"an image input must give `spatial_shape` or `shape`, {dict(spec)!r} is given.")
        return cls(input_channels(spec), len(spatial))

    def problem(self, ds) -> str | None:
        """Why a model with this input cannot read ``ds``, from its header alone (Photometric
        Interpretation, Number of Frames: a pydicom Dataset or a :class:`dicom_gateway.header.Header`);
        None when it can.  A volume model's series is checked when it is assembled."""
        if self.dimensions != 2:
            return None
        return _frames_problem(ds) or (_colour_problem(ds) if self.channels == 3 else None)


def model_input(ds: Dataset, size_px: int, channels: int = 1) -> np.ndarray:
    """The float32 ``(channels, size_px, size_px)`` input of a 2D image model for ``ds``.

    ``channels`` 1: the grayscale image (:func:`grayscale_image`, windowed by
    :func:`models.transforms.to_model_input`); 3: the RGB photograph (:func:`rgb_image`,
    :func:`models.transforms.to_rgb_model_input`).

    Raises
    ------
    PixelDataError
        A multi-frame instance (a 2D model reads one image; send each frame as an instance), a
        MONOCHROME image for a colour model, an undecodable image; ValueError for ``channels``
        other than 1 or 3.
    """
    problem = ImageInput(channels, 2).problem(ds)
    if problem is not None:
        raise PixelDataError(problem)
    if channels == 3:
        return to_rgb_model_input(rgb_image(ds), size_px)
    return to_model_input(grayscale_image(ds), size_px)


def _nth(value, index: int) -> float:
    return float(value[index]) if isinstance(value, MultiValue) else float(value)


def voi_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI window of modality ``values``, scaled to [0, 1] float32."""
    if width < 1:
        raise PixelDataError(f"Window Width must be at least 1, {width} is given")
    low = center - 0.5 - (width - 1) / 2
    out = (np.asarray(values, np.float32) - np.float32(low)) / np.float32(width - 1)
    return np.clip(out, 0.0, 1.0, out=out)


def windowed_image(ds: Dataset, index: int = 0) -> np.ndarray:
    """The grayscale image for display-like model inputs, in [0, 1] float32, MONOCHROME2.

    Modality LUT first, then the ``index``-th VOI LUT of the VOI LUT Sequence (0028,3010) when
    present, else the ``index``-th Window Center/Width (linear, PS3.3 C.11.2.1.2.1), else the
    full range of the modality values.  MONOCHROME1 is inverted afterwards.

    Raises
    ------
    PixelDataError
        As :func:`grayscale_image`, or a colour image (VOI LUTs apply to grayscale only).
    """
    photometric = _photometric(ds)
    if not photometric.startswith("MONOCHROME"):
        raise PixelDataError(f"VOI LUT applies to MONOCHROME1/2 images, {photometric} is given")
    pixels = decoded_pixels(ds)
    try:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            pixels = pixels[int(ds.NumberOfFrames) // 2]
        values = apply_modality_lut(pixels, ds).astype(np.float32)
    except Exception as exc:  # noqa: BLE001 - decoder or LUT error
        raise PixelDataError(f"pixel data cannot be decoded: {type(exc).__name__}: {exc}") from None
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence) > index:
        item = ds.VOILUTSequence[index]
        bits = int(item.LUTDescriptor[2])
        shown = apply_voi_lut(pixels, ds, index=index).astype(np.float32) / np.float32(2**bits - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _nth(ds.WindowCenter, index), _nth(ds.WindowWidth, index)
        shown = voi_window(values, center, width)
    else:
        low, high = float(values.min()), float(values.max())
        shown = (values - low) / (high - low) if high > low else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        shown = 1.0 - shown
    return shown.astype(np.float32)


def pixel_spacing_mm(ds: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm: Pixel Spacing, else Imager Pixel Spacing; None when absent."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


class VolumeError(PixelDataError):
    """The slices cannot form one volume; the message says which slice and why."""


def _slice_normal(ds: Dataset) -> np.ndarray:
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    return np.cross(iop[:3], iop[3:])


def sort_slices(datasets: list[Dataset]) -> list[Dataset]:
    """The slices in ascending position along the slice normal.

    Raises
    ------
    VolumeError
        No slices, a slice without Image Position/Orientation (Patient), orientations or sizes
        that differ, or two slices at the same position.
    """
    if not datasets:
        raise VolumeError("a volume needs at least one slice, none is given")
    first = datasets[0]
    for ds in datasets:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns"):
            if keyword not in ds:
                raise VolumeError(f"slice {ds.get('SOPInstanceUID', '?')} has no {keyword}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise VolumeError(f"slice {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns}, slice "
                              f"{first.SOPInstanceUID} is {first.Rows}x{first.Columns}: mixed sizes")
        if not np.allclose(np.asarray(ds.ImageOrientationPatient, float),
                           np.asarray(first.ImageOrientationPatient, float), atol=1e-4):
            raise VolumeError(f"slice {ds.SOPInstanceUID} has orientation {list(ds.ImageOrientationPatient)}"
                              f", slice {first.SOPInstanceUID} {list(first.ImageOrientationPatient)}: "
                              "mixed orientations")
    normal = _slice_normal(first)
    keyed = sorted(((float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))), ds) for ds in datasets),
                   key=lambda item: item[0])
    for (a, ds_a), (b, ds_b) in zip(keyed, keyed[1:]):
        if abs(b - a) < 1e-3:
            raise VolumeError(f"slices {ds_a.SOPInstanceUID} and {ds_b.SOPInstanceUID} are at the same "
                              f"position ({a:.3f} mm along the normal)")
    return [ds for _, ds in keyed]


def ct_volume(datasets: list[Dataset]) -> tuple[np.ndarray, list[float], list[Dataset]]:
    """Assemble a ``(Z, Y, X)`` float32 volume of modality values (HU for CT).

    Returns
    -------
    tuple
        The volume, ``spacing_mm`` as ``[slice, row, column]`` (slice spacing from the sorted
        positions, Slice Thickness for a single slice) and the slices in volume order.

    Raises
    ------
    VolumeError
        See :func:`sort_slices`, or a slice whose pixels cannot be decoded.
    """
    series = sort_slices(datasets)
    planes = []
    for ds in series:
        try:
            planes.append(apply_modality_lut(decoded_pixels(ds), ds).astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - one bad slice spoils the volume
            raise VolumeError(f"slice {ds.SOPInstanceUID} cannot be decoded: {type(exc).__name__}: {exc}") from None
    normal = _slice_normal(series[0])
    positions = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, float))) for ds in series]
    if len(series) > 1:
        slice_mm = float(np.median(np.diff(positions)))
    else:
        slice_mm = float(series[0].get("SliceThickness", 1) or 1)
    row_mm, column_mm = pixel_spacing_mm(series[0]) or (1.0, 1.0)
    return np.stack(planes), [slice_mm, row_mm, column_mm], series
