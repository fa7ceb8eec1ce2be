"""Findings burnt into a Secondary Capture of the source image, for PACS that cannot show SEG/SR.

The source image is windowed as a viewer would show it (Modality LUT, then the linear VOI window
of PS3.3 C.11.2.1.2.1, MONOCHROME1 inverted), turned to RGB, and the findings drawn on it: the
heatmap alpha-blended in a colour map, boxes and polygons outlined, points marked with a ring and
cross.  A banner at the top reads :data:`BANNER` with the model, version and probabilities, so
the picture is never taken for the original.  The result is an RGB Secondary Capture Image
(PS3.3 A.8.1) in the source study, in a new series, with Burned In Annotation YES, Image Type
DERIVED\\SECONDARY and a Source Image Sequence pointing to the source instance.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from models.finding import Finding

#: Text of the banner burnt into every overlay.
BANNER = "AI result \u2014 not for diagnosis"
#: Series Description (0008,103E) of every overlay series.
SERIES_DESCRIPTION = "AI overlay - not for diagnosis"
#: Maximum opacity of the heatmap, reached where the heatmap is 1.
HEATMAP_MAX_ALPHA = 0.5
#: Heatmap values below this are not drawn (keeps the image readable away from the finding).
HEATMAP_FLOOR = 0.2
#: Outline colour of positive findings (yellow) and of negative ones (cyan), RGB.
POSITIVE_RGB = (255, 215, 0)
NEGATIVE_RGB = (0, 200, 255)
#: Banner height as a fraction of the image height, and its minimum in pixels.
BANNER_FRACTION = 0.1
BANNER_MIN_PX = 24
#: PS3.3 C.8.6.1: Secondary Capture "Derivation Description" of the overlay.
DERIVATION_DESCRIPTION = "source image with AI findings burnt in; not for diagnosis"


def displayed_gray(ds: Dataset) -> np.ndarray:
    """The source pixels as a viewer shows them, as ``float32`` in [0, 1] (0 = black)."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(f"source must be a grayscale image, SamplesPerPixel {ds.SamplesPerPixel} is given.")
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if values.ndim != 2:
        raise ValueError(f"source must be a single-frame image, pixel array shape {values.shape} is given.")
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


def _blend_heatmap(rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    rows, columns = rgb.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    heat = np.asarray(Image.fromarray(heat).resize((columns, rows), Image.Resampling.BILINEAR))
    heat = heat.clip(0.0, 1.0)
    alpha = np.where(heat >= HEATMAP_FLOOR, HEATMAP_MAX_ALPHA * heat, 0.0)[..., None]
    return rgb * (1.0 - alpha) + colour_map(heat) * alpha


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


def _draw_dashed_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
                      font: ImageFont.FreeTypeFont, fill: tuple[int, int, int]) -> None:
    """Draw ``text``; an em dash, which Pillow's default font lacks, is drawn as a line."""
    x, y = xy
    for i, part in enumerate(text.split("\u2014")):
        if i:
            width = font.getlength("M")
            top, bottom = font.getbbox("x")[1], font.getbbox("x")[3]
            mid = y + (top + bottom) / 2
            draw.line((x + width * 0.1, mid, x + width * 0.9, mid), fill=fill, width=max(1, round(width / 8)))
            x += width
        draw.text((x, y), part, fill=fill, font=font)
        x += font.getlength(part)


def _fitting_font(text: str, size: int, width_px: float) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    while size > 6 and font.getlength(text) > width_px:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def _draw_banner(image: Image.Image, findings: Sequence[Finding]) -> None:
    columns, rows = image.size
    height = max(BANNER_MIN_PX, round(rows * BANNER_FRACTION))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, columns, height), fill=(0, 0, 0))
    models = ", ".join(dict.fromkeys(f"{f.model} {f.model_version}" for f in findings))
    calls = "; ".join(f"{f.code.meaning} p={f.probability:.2f}" for f in findings[:3])
    font = _fitting_font(BANNER, max(8, round(height * 0.45)), columns - 8)
    _draw_dashed_text(draw, (4, 1), BANNER, font, (255, 64, 64))
    line = f"{models}: {calls}"
    small = _fitting_font(line, max(7, round(height * 0.34)), columns - 8)
    draw.text((4, height * 0.55), line, fill=(255, 255, 255), font=small)


def render_overlay(source: Dataset, findings: Sequence[Finding]) -> np.ndarray:
    """The overlay picture: ``(rows, columns, 3)`` ``uint8`` RGB of ``source`` with ``findings``."""
    if not findings:
        raise ValueError("findings must contain at least one Finding, an empty sequence is given.")
    for i, finding in enumerate(findings):
        if finding.source.sop_instance_uid != source.SOPInstanceUID:
            raise ValueError(
                f"findings[{i}] is about image {finding.source.sop_instance_uid}, not the source image "
                f"{source.SOPInstanceUID}; build one overlay per source image."
            )
    rgb = np.repeat(displayed_gray(source)[..., None], 3, axis=2)
    for finding in findings:
        if finding.heatmap is not None:
            rgb = _blend_heatmap(rgb, finding.heatmap)
        if finding.mask is not None:
            rgb = _blend_heatmap(rgb, finding.mask[0].astype(np.float32))
    image = Image.fromarray(np.round(rgb * 255).astype(np.uint8), mode="RGB")
    line_px = max(1, round(min(image.size) / 250))
    _draw_locations(ImageDraw.Draw(image), findings, line_px)
    _draw_banner(image, findings)
    return np.asarray(image)


def _patient_orientation(source: Dataset) -> tuple[str, str]:
    if "PatientOrientation" in source and len(source.PatientOrientation) == 2:
        return tuple(str(v) for v in source.PatientOrientation)
    orientation = np.asarray(source.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=float)
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def direction(vector: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(vector)))
        return letters[axis][0 if vector[axis] > 0 else 1]

    return direction(orientation[:3]), direction(orientation[3:])


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
        The grayscale source image, pixel data included; patient and study are copied from it.
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
        The overlay; write it with ``.save_as``.
    """
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
    sc.BurnedInAnnotation = "YES"
    # General Series Laterality (PS3.3 C.7.3.1) is Type 2C (paired body parts); copy it, or leave
    # it empty (allowed for Type 2) because an SC does not say whether the part is paired.
    laterality = str(source.get("Laterality", "") or source.get("ImageLaterality", ""))
    sc.Laterality = laterality if laterality in ("L", "R") else ""
    sc.RecognizableVisualFeatures = "NO"
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
