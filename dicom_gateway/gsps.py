"""Findings as a Grayscale Softcopy Presentation State: an overlay a radiologist can toggle.

A GSPS (PS3.3 A.33.1, written with highdicom's :class:`highdicom.pr.GrayscaleSoftcopyPresentationState`)
references the source image and carries annotations that the viewer draws over it, without
touching its pixels (unlike the Secondary Capture of :mod:`dicom_gateway.overlay`): switching the
presentation state off shows the image as acquired.  Per finding about a 2D image, on one
graphic layer :data:`LAYER`:

- a point: a circle of :data:`POINT_RING_PX` around it and the point itself;
- a box: its outline as a closed polyline; a polygon: its outline;
- a finding without a location (an image-level call, such as a skin-lesion class): text only;

the outlines also as a graphics overlay plane activated on that layer (for viewers that render
overlays but not graphic annotations, DCMTK's ``dcmp2pgm`` among them), and a text box in the
top-left corner with the model, version, finding, probability, the
positive/negative call and "NOT FOR CLINICAL USE".  The display window is the source's first
Window Center/Width where it has one, else the range of its stored values through its Modality
LUT, so the presentation shows the image as a viewer would without it.

A GSPS applies to grayscale images only (PS3.4 N.2): a colour source (a dermatology photograph)
gets none, and :func:`build_presentation_state` says so by returning ``None``; its findings go to
the SR and the Secondary Capture.  Findings with a 3D mask are on a volume: their SEG carries them.
"""
from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, pack_bits

from dicom_gateway.laterality import series_laterality
from dicom_gateway.pixels import decoded_pixels
from models.finding import NOT_FOR_CLINICAL_USE, Finding

#: Graphic Layer (0070,0002) of every annotation, and its description.
LAYER = "MEDGATE_AI"
LAYER_DESCRIPTION = "AI findings - not for clinical use"
#: Content Label (0070,0080): PS3.3 C.10.9 (upper case, digits, underscore, space; 16 characters).
CONTENT_LABEL = "MEDGATE_AI"
#: Series Description (0008,103E) of every presentation-state series.
SERIES_DESCRIPTION = "AI presentation state - not for clinical use"
#: Radius of the ring drawn around a point finding, in pixels of the source image.
POINT_RING_PX = 12.0
#: Overlay group (PS3.3 C.9.2) of the outlines' bitmap, and its line width in pixels.
OVERLAY_GROUP = 0x6000
OVERLAY_LINE_PX = 2
#: Text box: its share of the image's width and height, from the top-left corner.
TEXT_BOX_FRACTION = (0.6, 0.12)
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")


def caption(findings: Sequence[Finding]) -> str:
    """``tb 1.1.0: Tuberculosis p=0.870 (positive); NOT FOR CLINICAL USE``."""
    parts = [f"{f.model} {f.model_version}: {f.code.meaning} p={f.probability:.3f} "
             f"({'positive' if f.positive else 'negative'})" for f in findings]
    return "; ".join(parts) + f"; {NOT_FOR_CLINICAL_USE}"


def _outline(finding: Finding, columns: int) -> list[hd.pr.GraphicObject]:
    pixel = hd.pr.AnnotationUnitsValues.PIXEL
    if finding.point is not None:
        col, row = (float(v) for v in finding.point)
        # the circle's second point (on the ring) on the side with room: PS3.3 C.10.5 wants every
        # PIXEL coordinate inside the image (a finding near the right edge failed the whole study)
        edge = col + POINT_RING_PX if col + POINT_RING_PX <= columns else max(col - POINT_RING_PX, 0.0)
        ring = np.array([[col, row], [edge, row]], dtype=np.float32)  # centre, a point on it
        return [hd.pr.GraphicObject(hd.pr.GraphicTypeValues.CIRCLE, ring, pixel),
                hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POINT, np.array([[col, row]], np.float32), pixel)]
    if finding.box is not None:
        c0, r0, c1, r1 = (float(v) for v in finding.box)
        corners = [[c0, r0], [c1, r0], [c1, r1], [c0, r1], [c0, r0]]
        return [hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, np.array(corners, np.float32), pixel)]
    if finding.polygon is not None:
        vertices = [list(map(float, v)) for v in finding.polygon]
        closed = np.array(vertices + [vertices[0]], dtype=np.float32)
        return [hd.pr.GraphicObject(hd.pr.GraphicTypeValues.POLYLINE, closed, pixel)]
    return []


def outline_bitmap(findings: Sequence[Finding], rows: int, columns: int) -> np.ndarray:
    """The outlines of :func:`_outline` as a ``bool`` (rows, columns) bitmap: a ring around a
    point, the edges of a box or a polygon."""
    canvas = Image.new("1", (columns, rows), 0)
    draw = ImageDraw.Draw(canvas)
    for f in findings:
        if f.point is not None:
            col, row = (float(v) for v in f.point)
            draw.ellipse([col - POINT_RING_PX, row - POINT_RING_PX, col + POINT_RING_PX, row + POINT_RING_PX],
                         outline=1, width=OVERLAY_LINE_PX)
        elif f.box is not None:
            draw.rectangle([float(v) for v in f.box], outline=1, width=OVERLAY_LINE_PX)
        elif f.polygon is not None:
            vertices = [tuple(map(float, v)) for v in f.polygon]
            draw.line(vertices + [vertices[0]], fill=1, width=OVERLAY_LINE_PX)
    return np.asarray(canvas, dtype=bool)


def _add_overlay(gsps: Dataset, bitmap: np.ndarray) -> None:
    """The outlines as a graphics overlay plane of the presentation state (PS3.3 C.9.2, and C.11.7
    Overlay Activation on :data:`LAYER`): viewers that render overlays but not graphic
    annotations (DCMTK's ``dcmp2pgm``) show them too."""
    group = OVERLAY_GROUP
    gsps.add_new((group, 0x0010), "US", bitmap.shape[0])  # Overlay Rows
    gsps.add_new((group, 0x0011), "US", bitmap.shape[1])  # Overlay Columns
    gsps.add_new((group, 0x0022), "LO", "AI finding outlines")  # Overlay Description
    gsps.add_new((group, 0x0040), "CS", "G")  # Overlay Type: graphics
    gsps.add_new((group, 0x0050), "SS", [1, 1])  # Overlay Origin (row, column), 1-based
    gsps.add_new((group, 0x0100), "US", 1)  # Overlay Bits Allocated
    gsps.add_new((group, 0x0102), "US", 0)  # Overlay Bit Position
    gsps.add_new((group, 0x1001), "CS", LAYER)  # Overlay Activation Layer
    gsps.add_new((group, 0x1500), "LO", "MEDGATE AI")  # Overlay Label
    gsps.add_new((group, 0x3000), "OW", pack_bits(bitmap.astype(np.uint8).ravel()))  # Overlay Data


def _window(source: Dataset) -> hd.pr.SoftcopyVOILUTTransformation:
    """The source's first window, else the range of its modality values."""
    center, width = source.get("WindowCenter"), source.get("WindowWidth")
    if center is not None and width is not None:
        center, width = (float(v[0] if isinstance(v, MultiValue) else v) for v in (center, width))  # VM 1-n
        return hd.pr.SoftcopyVOILUTTransformation(window_center=center, window_width=max(width, 1.0))
    values = apply_modality_lut(decoded_pixels(source), source)
    low, high = float(np.min(values)), float(np.max(values))
    return hd.pr.SoftcopyVOILUTTransformation(window_center=(low + high) / 2, window_width=max(high - low, 1.0))


def build_presentation_state(findings: Sequence[Finding], source: Dataset, *, series_instance_uid: str,
                             sop_instance_uid: str, series_number: int = 9904, instance_number: int = 1,
                             manufacturer: str = "medgate") -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    """A GSPS of ``findings`` about the grayscale image ``source`` (see the module docstring);
    ``None`` for a colour source, which a GSPS cannot present.

    Raises
    ------
    ValueError
        No finding, a finding about another image, or one with a 3D mask.
    """
    if not findings:
        raise ValueError("`findings` must hold at least one finding, none is given.")
    for f in findings:
        if f.source.sop_instance_uid != source.SOPInstanceUID:
            raise ValueError(f"finding of {f.model} is about {f.source.sop_instance_uid}, not about the "
                             f"source {source.SOPInstanceUID}.")
        if f.mask is not None or f.point_3d_mm is not None:
            raise ValueError(f"finding of {f.model} is located in 3D: its SEG carries it, not a GSPS.")
    if source.get("PhotometricInterpretation") not in GRAYSCALE:
        return None
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description=LAYER_DESCRIPTION)
    rows, columns = int(source.Rows), int(source.Columns)
    box = (1.0, 1.0, max(columns * TEXT_BOX_FRACTION[0], 2.0), max(rows * TEXT_BOX_FRACTION[1], 2.0))
    text = hd.pr.TextObject(caption(findings)[:1024], hd.pr.AnnotationUnitsValues.PIXEL, bounding_box=box,
                            text_justification=hd.pr.TextJustificationValues.LEFT)
    graphics = [g for f in findings for g in _outline(f, columns)]
    annotation = hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=layer,
                                         graphic_objects=graphics or None, text_objects=[text])
    versions = sorted({f"{f.model} {f.model_version}" for f in findings})
    gsps = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[source], series_instance_uid=series_instance_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=instance_number, manufacturer=manufacturer,
        manufacturer_model_name="medgate", software_versions=versions[0] if len(versions) == 1 else tuple(versions),
        device_serial_number="none", content_label=CONTENT_LABEL,
        content_description=f"AI findings, {NOT_FOR_CLINICAL_USE}"[:64], graphic_annotations=[annotation],
        graphic_layers=[layer], voi_lut_transformations=[_window(source)])
    gsps.SeriesDescription = SERIES_DESCRIPTION
    for keyword, value in series_laterality(source).items():
        setattr(gsps, keyword, value)
    bitmap = outline_bitmap(findings, rows, columns)
    if bitmap.any():
        _add_overlay(gsps, bitmap)
    return gsps
