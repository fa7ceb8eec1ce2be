"""HTTP uploads to model inputs: sniff, decode, preprocess (in the ingress, not in the model replica).

Accepted, as the model's serving spec lists them (``uploads``, :mod:`models.spec`): a DICOM Part 10
file (``DICM`` at byte 128), PNG or JPEG images, turned into the model item by the spec's
``preprocess`` function; or, for a model whose input is a ``window`` of vital signs, a JSON body
with a ``window``.  Anything else is refused with :class:`UploadError` carrying the HTTP status and
the reason.

An image's decoded size is checked from its header before anything is decoded (PNG and JPEG by
Pillow's header read, DICOM by Rows x Columns x Number of Frames): an 11 KB PNG of 9500 x 9500
would otherwise take gigabytes of memory.  Over ``max_pixels`` it is refused with 422.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.registry import ModelManifest
from models.spec import IMAGE_UPLOADS, InputKind
from models.transforms import input_channels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
#: The UIDs an uploaded DICOM image's results are filed and linked under: each must be a UID.
IDENTIFYING_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: RFC 9110 15.5.21: the body is within its limit, its image is not usable here.
UNPROCESSABLE = 422


class UploadError(ValueError):
    """An upload that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass
class Decoded:
    """A decoded upload: pixels (2D gray or HxWx3 RGB), and the DICOM dataset when it was one."""

    kind: str  # "dicom" | "png" | "jpeg"
    pixels: np.ndarray
    dataset: Any = None


def sniff(data: bytes) -> str:
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(JPEG_SIGNATURE):
        return "jpeg"
    raise UploadError(415, "`file` must be a DICOM Part 10 file, a PNG or a JPEG image")


def _check_uids(ds) -> None:
    """:class:`UploadError` (422) unless each of :data:`IDENTIFYING_UIDS` is a UID (PS3.5 9.1)."""
    from dicom_gateway.uids import check_uid

    for keyword in IDENTIFYING_UIDS:
        try:
            check_uid(keyword, ds.get(keyword, ""))
        except ValueError as exc:
            raise UploadError(422, str(exc)) from None


def check_pixels(kind: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    """:class:`UploadError` (422) when ``width x height x frames`` is over ``max_pixels``."""
    if width * height * frames > max_pixels:
        raise UploadError(UNPROCESSABLE, f"the {kind.upper()} image is {width} x {height} pixels"
                          + (f" x {frames} frames" if frames > 1 else "")
                          + f", over the {max_pixels}-pixel limit (http.max_image_pixels); nothing was decoded")


def _dicom_size(ds) -> tuple[int, int, int]:
    """Columns, Rows and Number of Frames from the header; :class:`UploadError` (422) when malformed."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return int(ds.Columns), int(ds.Rows), max(frames, 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UploadError(422, f"the Image Pixel Module is incomplete or malformed: {exc}") from None


def decode(data: bytes, max_pixels: int) -> Decoded:
    """Decode an uploaded file of at most ``max_pixels`` pixels (``http.max_image_pixels``; every
    frame of a DICOM counted); raises :class:`UploadError` (415/422) with the reason."""
    kind = sniff(data)
    if kind == "dicom":
        from pydicom import dcmread

        from dicom_gateway.pixels import PixelDataError, grayscale_image

        try:
            ds = dcmread(io.BytesIO(data))
            _check_uids(ds)
            check_pixels(kind, *_dicom_size(ds), max_pixels)
            photometric = str(ds.get("PhotometricInterpretation", "")).upper()
            pixels = ds.pixel_array if photometric.startswith(("RGB", "YBR")) else grayscale_image(ds)
        except UploadError:
            raise
        except PixelDataError as exc:
            raise UploadError(422, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad upload
            raise UploadError(422, f"not a readable DICOM file: {type(exc).__name__}: {exc}") from None
        return Decoded(kind, np.asarray(pixels), ds)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            check_pixels(kind, *image.size, 1, max_pixels)  # the first frame is all that is decoded
            image.load()
            rgb = image.convert("RGB") if image.mode not in ("L", "I;16", "I") else image
            return Decoded(kind, np.asarray(rgb))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, when max_pixels is above it
        raise UploadError(UNPROCESSABLE, f"the {kind.upper()} image is too large to decode: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UploadError(422, f"corrupt {kind.upper()} image: {exc}") from None


def to_gray(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3:
        return pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return pixels


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as H x W x 3: a grayscale image repeated over three channels, RGBA without alpha."""
    return pixels[..., :3] if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, -1)


def check_upload_kind(manifest: ModelManifest, kind: str) -> None:
    """:class:`UploadError` (422) unless the model's serving spec accepts uploads of ``kind``
    (:data:`models.spec.UPLOAD_KINDS`), naming what it accepts instead."""
    spec = manifest.serving
    if spec.accepts(kind):
        return
    if not spec.uploads:
        how = ("send the series by C-STORE or STOW-RS" if spec.input is InputKind.VOLUME
               else "it is fed by the server itself")
        raise UploadError(UNPROCESSABLE, f"model {manifest.name!r} takes no upload over HTTP "
                                         f"({spec.input.value} input); {how}")
    takes = [u.upper() if u != "json" else "a JSON body" for u in spec.uploads]
    raise UploadError(UNPROCESSABLE, f"model {manifest.name!r} does not take a {kind.upper()} upload; "
                                     f"it takes {', '.join(takes)}")


def model_item(manifest: ModelManifest, decoded: Decoded) -> np.ndarray:
    """The request item of the model ``manifest`` describes from an uploaded image: grayscale or
    RGB as its input has 1 or 3 channels, through its serving spec's ``preprocess`` function at its
    input size (see :mod:`serving.inference.runners`)."""
    check_upload_kind(manifest, decoded.kind)
    channels = input_channels(manifest.input_spec)
    pixels = to_gray(decoded.pixels) if channels == 1 else to_rgb(decoded.pixels)
    return manifest.serving.function("preprocess")(pixels, int(manifest.input_size_px))


def takes_images(manifest: ModelManifest) -> bool:
    """Whether the model accepts any image upload (DICOM, PNG, JPEG)."""
    return any(manifest.serving.accepts(kind) for kind in IMAGE_UPLOADS)


def vitals_window(body: bytes, sample_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A ``(T, F)`` float32 window from a JSON body ``{"window": [[...], ...]}``, of the model's
    ``sample_shape`` when it is known (:func:`sample_shape`): a window of another shape never
    reaches the model, where it would fail the whole batch it was joined to."""
    try:
        window = np.asarray(json.loads(body)["window"], dtype=np.float32)
    except RecursionError:  # arrays nested deeper than the parser's recursion limit
        raise UploadError(422, "body must be JSON {\"window\": [[...]]}: it is nested too deeply") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UploadError(422, f"body must be JSON {{\"window\": [[...]]}}: {exc}") from None
    if window.ndim != 2 or not np.isfinite(window).all():
        raise UploadError(422, f"`window` must be a finite 2D array, shape {window.shape} is given")
    if sample_shape is not None and window.shape != tuple(sample_shape):
        raise UploadError(422, f"`window` must have the model's input shape {tuple(sample_shape)} "
                               f"(time steps, features), shape {window.shape} is given")
    return window


def sample_shape(manifest: ModelManifest) -> tuple[int, ...] | None:
    """One sample's shape (the batch axis left out) of the model's first input, as its metadata
    declares it (``network_data_format.inputs``), or None when an axis is open."""
    sample = (manifest.input_spec.get("shape") or [])[1:]
    if not sample or not all(isinstance(n, int) and n > 0 for n in sample):
        return None
    return tuple(sample)
