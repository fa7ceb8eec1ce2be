"""Findings drawn on a Secondary Capture of the source image, for PACS that cannot show SEG/SR.

The source image is shown as a viewer would show it (grayscale: Modality LUT, then the linear VOI
window of PS3.3 C.11.2.1.2.1, MONOCHROME1 inverted; colour: RGB, YBR decoded to RGB, PALETTE
COLOR through its lookup tables; decoded by :func:`dicom_gateway.pixels.decoded_pixels`, so DCMTK
decodes a 12-bit JPEG Extended source where pydicom cannot), and the findings drawn on it: the
heatmap alpha-blended in a colour map, boxes and polygons outlined, points marked with a ring and
cross.  A black border
added above the image carries :data:`BANNER` ("NOT FOR CLINICAL USE", the wording of every other
output) with the model, version and probabilities, so the picture is never taken for the original
and no pixel of the image is hidden under text; on small images the text wraps onto more lines of
the border instead of shrinking below :data:`BANNER_MIN_TEXT_PX`.  The result is an RGB Secondary
Capture Image (PS3.3 A.8.1) in the source study, in a new series, with Burned In Annotation YES,
Image Type DERIVED\\SECONDARY, a Source Image Sequence pointing to the source instance, the
source's Recognizable Visual Features, and Laterality only where the body part is paired.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut
from pydicom.uid import generate_uid

from dicom_gateway.laterality import series_laterality
from dicom_gateway.pixels import decoded_pixels
from dicom_gateway.sc_image import secondary_capture
from models.finding import Finding

#: Text of the banner above every overlay: the wording of every other output (SR, SEG, FHIR).
BANNER = "AI result - NOT FOR CLINICAL USE"
BANNER_RGB = (255, 64, 64)
#: Series Description (0008,103E) of every overlay series.
SERIES_DESCRIPTION = "AI overlay - not for clinical use"
#: Maximum opacity of the heatmap, reached where the heatmap is 1.
HEATMAP_MAX_ALPHA = 0.5
#: Heatmap values below this are not drawn (keeps the image readable away from the finding).
HEATMAP_FLOOR = 0.2
#: Outline colour of positive findings (yellow) and of negative ones (cyan), RGB.
POSITIVE_RGB = (255, 215, 0)
NEGATIVE_RGB = (0, 200, 255)
#: Banner text size as a fraction of the image's shorter side, and its floor in pixels: on small
#: images the text wraps onto more lines of the border rather than shrinking below legibility.
BANNER_TEXT_FRACTION = 0.04
BANNER_MIN_TEXT_PX = 10
BANNER_PADDING_PX = 3
#: A windowed grayscale source goes through a table of its stored values (one entry per value
#: between its smallest and largest) when it has at least this many pixels per entry.
LOOKUP_PIXELS_PER_ENTRY = 4
#: PS3.3 C.8.6.1: Secondary Capture "Derivation Description" of the overlay.
DERIVATION_DESCRIPTION = "source image with AI findings drawn on it and a banner border; not for clinical use"


def displayed_gray(ds: Dataset) -> np.ndarray:
    """The source pixels as a viewer shows them, as ``float32`` in [0, 1] (0 = black)."""
    stored = _stored_gray(ds)
    lookup = _gray_lookup(stored, ds)
    if lookup is not None:
        index, table = lookup
        return table[index]
    return _gray(stored, ds)


def _stored_gray(ds: Dataset) -> np.ndarray:
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"source must be a grayscale image, SamplesPerPixel {ds.SamplesPerPixel} is given.")
    stored = decoded_pixels(ds)
    if stored.ndim != 2:
        raise ValueError(f"source must be a single-frame image, pixel array shape {stored.shape} is given.")
    return stored


def _gray_lookup(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """``(index, table)`` with ``table[index]`` the displayed gray of ``stored``, or None.

    Every step of :func:`_gray` but the percentile stretch maps each stored value on its own, so
    a windowed integer image can be computed once per value in its range and looked up: the same
    numbers, far fewer operations (when there are :data:`LOOKUP_PIXELS_PER_ENTRY` pixels a value).
    """
    if "WindowCenter" not in ds or "WindowWidth" not in ds or stored.dtype.kind not in "ui":
        return None
    low, high = int(stored.min()), int(stored.max())
    if high - low >= stored.size // LOOKUP_PIXELS_PER_ENTRY:
        return None
    table = _gray(np.arange(low, high + 1).astype(stored.dtype), ds)
    index = stored - stored.dtype.type(low) if stored.dtype.kind == "u" else stored.astype(np.int32) - low
    return index, table


def _gray(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT, VOI window (or the 1-99 percentile stretch) and MONOCHROME1 inversion."""
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        centre = float(np.ravel(ds.WindowCenter)[0])
        width = max(float(np.ravel(ds.WindowWidth)[0]), 1.0)
        gray = ((values - (centre - 0.5)) / (width - 1) + 0.5).clip(0.0, 1.0)
    else:
        lo, hi = np.percentile(values, [1, 99])
        gray = ((values - lo) / max(hi - lo, 1e-6)).clip(0.0, 1.0)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        gray = 1.0 - gray
    return gray.astype(np.float32)


def colour_map(values: np.ndarray) -> np.ndarray:
    """A blue-cyan-yellow-red ("jet"-like) colour map of ``values`` in [0, 1]; ``(..., 3)`` in [0, 1]."""
    x = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # red, green, blue
    return np.clip(1.5 - np.abs(4.0 * x - 4.0 * centres), 0.0, 1.0)


def _heat_image(layer: np.ndarray, rows: int, columns: int) -> Image.Image:
    """A heatmap (or mask plane) stretched bilinearly over a ``rows`` x ``columns`` image."""
    return Image.fromarray(np.asarray(layer, dtype=np.float32)).resize((columns, rows), Image.Resampling.BILINEAR)


def _reach(layer: np.ndarray, rows: int, columns: int) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` of a box of the stretched ``layer`` outside which it stays
    below :data:`HEATMAP_FLOOR`, or None when it stays below everywhere.

    Bilinear stretching makes each output pixel a weighted mean of the input cells within one
    cell of it, so it reaches the floor only within one cell of a cell that does; the box adds a
    further cell of margin.
    """
    cells = np.asarray(layer, dtype=np.float32) >= HEATMAP_FLOOR
    if not cells.any():
        return None
    (h, w), hot_rows, hot_columns = cells.shape, np.flatnonzero(cells.any(axis=1)), np.flatnonzero(cells.any(axis=0))
    return (max(0, (hot_columns[0] - 1) * columns // w), max(0, (hot_rows[0] - 1) * rows // h),
            min(columns, -(-(hot_columns[-1] + 2) * columns // w)), min(rows, -(-(hot_rows[-1] + 2) * rows // h)))


def _blend_heatmap(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """``heat`` alpha-blended over ``rgb`` (the same pixels, colour last) in the colour map."""
    alpha = np.where(heat >= HEATMAP_FLOOR, HEATMAP_MAX_ALPHA * heat, 0.0)[..., None]
    return rgb * (1.0 - alpha) + colour_map(heat) * alpha


def _composited(source: Dataset, findings: Sequence[Finding]) -> Image.Image:
    """The displayed source with the findings' heatmaps (and first mask planes) blended in, as an
    RGB image.

    A heatmap leaves every pixel below :data:`HEATMAP_FLOOR` as it is, so the blending runs on
    the pixels some heatmap reaches only (found in the box :func:`_reach` bounds); the rest of the
    image is rounded as the blended image would round it (float64 once a heatmap is blended,
    else float32).  The pixels are those of blending the whole image, pinned by the tests.
    """
    colour = _is_colour(source)
    stored = None if colour else _stored_gray(source)
    lookup = None if colour else _gray_lookup(stored, source)
    if lookup is not None:
        index, table = lookup
        rows, columns = index.shape

        def region(box) -> np.ndarray:
            return table[index[box]]

        def rounded(dtype) -> np.ndarray:
            return np.round(table.astype(dtype) * 255).astype(np.uint8)[index]
    else:
        base = displayed_rgb(source) if colour else _gray(stored, source)
        rows, columns = base.shape[:2]

        def region(box) -> np.ndarray:
            return base[box]

        def rounded(dtype) -> np.ndarray:
            return np.round(base.astype(dtype, copy=False) * 255).astype(np.uint8)
    # in the findings' order, each finding's heatmap before its mask's first plane
    layers = [layer for f in findings for layer in (f.heatmap, None if f.mask is None else f.mask[0])
              if layer is not None]
    if not layers:
        return _rgb_image(rounded(np.float32))
    image = _rgb_image(rounded(np.float64))
    boxes = [box for box in (_reach(layer, rows, columns) for layer in layers) if box is not None]
    if not boxes:
        return image
    crop = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
    heats = [np.asarray(_heat_image(layer, rows, columns).crop(crop)).clip(0.0, 1.0) for layer in layers]
    hot = np.logical_or.reduce([heat >= HEATMAP_FLOOR for heat in heats])
    box = np.s_[crop[1]:crop[3], crop[0]:crop[2]]
    rgb = _as_rgb(region(box))[hot]
    for heat in heats:
        rgb = _blend_heatmap(rgb, heat[hot])
    patch = np.array(image.crop(crop))
    patch[hot] = np.round(rgb * 255).astype(np.uint8)
    image.paste(Image.fromarray(patch, mode="RGB"), crop[:2])
    return image


def _is_colour(ds: Dataset) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    return int(ds.get("SamplesPerPixel", 1)) != 1 or photometric == "PALETTE COLOR"


def _rgb_image(pixels: np.ndarray) -> Image.Image:
    """``uint8`` grayscale ``(rows, columns)`` or RGB ``(rows, columns, 3)`` as an RGB image."""
    return Image.fromarray(pixels, mode="L").convert("RGB") if pixels.ndim == 2 else Image.fromarray(pixels, mode="RGB")


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    """Grayscale ``(rows, columns)`` repeated into three channels; colour returned as is."""
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def _draw_locations(draw: ImageDraw.ImageDraw, findings: Sequence[Finding], line_px: int) -> None:
    for finding in findings:
        colour = POSITIVE_RGB if finding.positive else NEGATIVE_RGB
        if finding.box is not None:
            draw.rectangle(finding.box, outline=colour, width=line_px)
        elif finding.polygon is not None:
            draw.polygon([tuple(v) for v in finding.polygon], outline=colour, width=line_px)
        elif finding.point is not None:
            col, row = finding.point
            r = 6 * line_px
            draw.ellipse((col - r, row - r, col + r, row + r), outline=colour, width=line_px)
            draw.line((col - 2 * r, row, col - r, row), fill=colour, width=line_px)
            draw.line((col + r, row, col + 2 * r, row), fill=colour, width=line_px)
            draw.line((col, row - 2 * r, col, row - r), fill=colour, width=line_px)
            draw.line((col, row + r, col, row + 2 * r), fill=colour, width=line_px)


def _wrapped(text: str, font: ImageFont.FreeTypeFont, width_px: float) -> list[str]:
    """``text`` in lines no wider than ``width_px`` (a single longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width_px:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _banner_layout(rows: int, columns: int, findings: Sequence[Finding]):
    """The banner's lines as ``(text, font, colour, y)`` and its height in pixels."""
    size = max(BANNER_MIN_TEXT_PX, round(min(rows, columns) * BANNER_TEXT_FRACTION))
    title = ImageFont.load_default(size=size)
    detail = ImageFont.load_default(size=max(BANNER_MIN_TEXT_PX, round(size * 0.75)))
    models = ", ".join(dict.fromkeys(f"{f.model} {f.model_version}" for f in findings))
    calls = "; ".join(f"{f.code.meaning} p={f.probability:.2f}" for f in findings[:3])
    width = columns - 2 * BANNER_PADDING_PX
    layout, y = [], BANNER_PADDING_PX
    for text, font, colour in ((BANNER, title, BANNER_RGB), (f"{models}: {calls}", detail, (255, 255, 255))):
        for line in _wrapped(text, font, width):
            layout.append((line, font, colour, y))
            y += round(font.size * 1.2)
    return layout, y + BANNER_PADDING_PX


def banner_height_px(rows: int, columns: int, findings: Sequence[Finding]) -> int:
    """Height of the banner border added above a ``rows`` x ``columns`` image."""
    return _banner_layout(rows, columns, findings)[1]


def _banner(columns: int, rows: int, findings: Sequence[Finding]) -> np.ndarray:
    """The black border that carries :data:`BANNER`, the models and the calls, ``(height, columns, 3)``."""
    layout, height = _banner_layout(rows, columns, findings)
    strip = Image.new("RGB", (columns, height), (0, 0, 0))
    draw = ImageDraw.Draw(strip)
    for text, font, colour, y in layout:
        draw.text((BANNER_PADDING_PX, y), text, fill=colour, font=font)
    return np.asarray(strip)


def displayed_rgb(ds: Dataset) -> np.ndarray:
    """The source as a viewer shows it, ``(rows, columns, 3)`` ``float32`` in [0, 1].

    Grayscale through :func:`displayed_gray`; RGB and YBR (pydicom decodes YBR to RGB) scaled by
    Bits Stored; PALETTE COLOR through its lookup tables (PS3.3 C.7.6.3.1.5).
    """
    if not _is_colour(ds):
        return _as_rgb(displayed_gray(ds))
    values = decoded_pixels(ds)
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        values = apply_color_lut(values, ds)
        full_scale = 65535.0 if values.max() > 255 else 255.0
    else:
        full_scale = float(2 ** int(ds.get("BitsStored", 8)) - 1)
    if values.ndim != 3 or values.shape[2] != 3:
        raise ValueError(f"source must be a single-frame image, pixel array shape {values.shape} is given.")
    return (values.astype(np.float32) / full_scale).clip(0.0, 1.0)


def render_overlay(source: Dataset, findings: Sequence[Finding]) -> np.ndarray:
    """The overlay picture: ``(banner + rows, columns, 3)`` ``uint8`` RGB of ``source`` with
    ``findings`` drawn on it, below a banner border (:func:`banner_height_px` rows)."""
    if not findings:
        raise ValueError("findings must contain at least one Finding, an empty sequence is given.")
    for i, finding in enumerate(findings):
        if finding.source.sop_instance_uid != source.SOPInstanceUID:
            raise ValueError(
                f"findings[{i}] is about image {finding.source.sop_instance_uid}, not the source image "
                f"{source.SOPInstanceUID}; build one overlay per source image."
            )
    image = _composited(source, findings)
    line_px = max(1, round(min(image.size) / 250))
    _draw_locations(ImageDraw.Draw(image), findings, line_px)
    return np.concatenate([_banner(*image.size, findings), np.asarray(image)])


def _patient_orientation(source: Dataset) -> tuple[str, str]:
    if "PatientOrientation" in source and len(source.PatientOrientation) == 2:
        return tuple(str(v) for v in source.PatientOrientation)
    orientation = np.asarray(source.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def direction(vector: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(vector)))
        return letters[axis][0 if vector[axis] > 0 else 1]

    return direction(orientation[:3]), direction(orientation[3:])


def _set_laterality(sc: Dataset, source: Dataset) -> None:
    """General Series Laterality (PS3.3 C.7.3.1), Type 2C, required for a paired body part only:
    the source's side (L or R) when it says one; absent when the source shows an unpaired part
    (Image Laterality U or an unpaired Body Part Examined); empty (unknown) when the part is not
    known.  Body Part Examined and Image Laterality (General Image, Type 3) are copied, so a
    receiver can tell too."""
    sc.pop("Laterality", None)
    for keyword, value in series_laterality(source).items():
        setattr(sc, keyword, value)
    image_laterality = str(source.get("ImageLaterality", "") or "")
    if image_laterality in ("L", "R", "U", "B"):
        sc.ImageLaterality = image_laterality


def build_overlay(
    source: Dataset,
    findings: Sequence[Finding],
    *,
    manufacturer: str = "medgate",
    series_number: int = 9903,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    """Build an RGB Secondary Capture of ``source`` with ``findings`` burnt in.

    Parameters
    ----------
    source: pydicom.Dataset
        The source image (grayscale or colour), pixel data included; patient and study are copied from it.
    findings: Sequence[models.finding.Finding]
        Findings about ``source``; heatmaps, boxes, polygons, points and the first plane of a
        mask are drawn.
    manufacturer: str, optional
        Manufacturer of the overlay.
    series_number, instance_number: int, optional
        Series and Instance Number of the overlay.
    series_instance_uid, sop_instance_uid: str | None, optional
        UIDs of the overlay; fresh ones when None.

    Returns
    -------
    highdicom.sc.SCImage
        The overlay; write it with ``.save_as``.  Its data elements are those of
        :func:`reference_overlay` (highdicom's ``SCImage``), written by
        :func:`dicom_gateway.sc_image.secondary_capture` without highdicom's per-call IOD look-ups.
    """
    pixels = render_overlay(source, findings)
    sc = secondary_capture(
        source, pixels,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=_patient_orientation(source),
    )
    return _as_overlay(sc, source)


def reference_overlay(
    source: Dataset,
    findings: Sequence[Finding],
    *,
    manufacturer: str = "medgate",
    series_number: int = 9903,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> hd.sc.SCImage:
    """The overlay of :func:`build_overlay` (same arguments) wrapped by highdicom's
    ``SCImage.from_ref_dataset``: the reference the direct writer is compared with."""
    pixels = render_overlay(source, findings)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=_patient_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    return _as_overlay(sc, source)


def _as_overlay(sc: hd.sc.SCImage, source: Dataset) -> hd.sc.SCImage:
    """What makes a Secondary Capture of ``source`` medgate's overlay: burned-in annotation,
    laterality, the source's recognizable visual features, descriptions and source reference."""
    sc.BurnedInAnnotation = "YES"
    _set_laterality(sc, source)
    # Recognizable Visual Features (0028,0302) of the picture are those of its source.
    sc.pop("RecognizableVisualFeatures", None)
    if "RecognizableVisualFeatures" in source:
        sc.RecognizableVisualFeatures = source.RecognizableVisualFeatures
    sc.SeriesDescription = SERIES_DESCRIPTION
    sc.DerivationDescription = DERIVATION_DESCRIPTION
    for keyword in ("IssuerOfPatientID", "StudyDescription"):
        if keyword in source:
            setattr(sc, keyword, source[keyword].value)
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    return sc


def save_png(sc: Dataset, path: str | Path) -> Path:
    """Write the pixels of an RGB overlay as a PNG (for documentation and quick looks)."""
    path = Path(path)
    Image.fromarray(np.asarray(sc.pixel_array, dtype=np.uint8), mode="RGB").save(path)
    return path
