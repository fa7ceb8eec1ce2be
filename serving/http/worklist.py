"""The imaging worklist: studies received, their status, model results, overlays as PNG.

``GET /v1/worklist`` lists the newest ``LIMIT`` studies with the patient ID and modality of their
first instance, the results per model (findings, each with its ``call``: positive, negative or
``outside`` the model's training distribution; links to the SR and the DiagnosticReport) and the
overlay Secondary Captures, each finding numbered from 1 per model version, and the clinicians'
verdicts on them (:mod:`serving.feedback`, ``feedback``).  A study whose instances the gateway refused at
intake is listed too, status ``refused``, its ``detail`` the status, the sender and the reason (bounded, control characters removed;
:func:`dicom_gateway.ledger.record_refusal`), with no instance.  ``GET /v1/overlay/{study_uid}/{name}.png`` renders a stored
Secondary Capture (``results/<study>/SC-<uid>.dcm``, one the results table records) to PNG for the
browser.  One audit row each.
"""
from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_gateway.uids import is_uid
from serving.feedback.api import feedback_service
from serving.feedback.service import finding_observation_id
from serving.fhir.report import report_id
from serving.http.context import current
from serving.imaging.findings import recorded_result
from serving.store import Result, Store

LIMIT = 100
#: The ``call`` of a finding whose input lay outside the model's training distribution.
OUTSIDE = "outside"
_NAME = re.compile(r"SC-[0-9.]{1,64}")
router = APIRouter()


@lru_cache(maxsize=512)
def _header(path: str) -> dict[str, str]:
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - a spool file may be gone; the worklist still answers
        return {}
    return {"patient_id": str(ds.get("PatientID", "")), "modality": str(ds.get("Modality", "")),
            "description": str(ds.get("StudyDescription", "")), "accession": str(ds.get("AccessionNumber", ""))}


def with_call(finding: dict[str, Any]) -> dict[str, Any]:
    """A results row's finding with the ``call`` to show: :data:`OUTSIDE` when its input lay
    outside the model's training distribution (``ood.outside``: no call is made), else
    ``positive`` or ``negative``."""
    ood = finding.get("ood") or {}
    call = OUTSIDE if ood.get("outside") else "positive" if finding.get("positive") else "negative"
    return {**finding, "call": call}


def _results(study_uid: str, results: list[Result]) -> list[dict[str, Any]]:
    by_model: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        summary = r.summary
        key = (summary.get("model", "?"), summary.get("version", "?"))
        entry = by_model.setdefault(key, {
            "model": key[0], "version": key[1], "findings": [], "sr": [], "overlays": [],
            "report": f"/fhir/DiagnosticReport/{report_id(study_uid, *key)}"})
        name = Path(r.path).name if r.path else None
        if r.kind == "sr" and name:
            entry["sr"].append(f"/v1/results/{study_uid}/{name}")
            entry["findings"].extend(with_call(f) for f in summary.get("findings", []))
        elif r.kind == "sc" and name:
            entry["overlays"].append(f"/v1/overlay/{study_uid}/{Path(name).stem}.png")
        elif r.kind == "seg" and name:
            entry.setdefault("seg", []).append(f"/v1/results/{study_uid}/{name}")
    for entry in by_model.values():  # the number a verdict names and what it is filed under (serving.feedback)
        for number, finding in enumerate(entry["findings"], start=1):
            finding["n"] = number
            finding["target"] = "Observation/" + finding_observation_id(
                study_uid, entry["model"], entry["version"], number, str(finding.get("source") or ""))
    return list(by_model.values())


def worklist(store: Store, limit: int = LIMIT) -> list[dict[str, Any]]:
    out = []
    verdicts = feedback_service(store).feedback
    for s in store.gateway.recent_studies(limit):
        instances = store.gateway.instances_of(s.study_uid)
        header = _header(instances[0].path) if instances else {}
        out.append({"study_uid": s.study_uid, "status": s.status, "route": s.route,
                    "detail": s.detail, "received_at": s.received_at, "updated_at": s.updated_at,
                    "instances": len(instances), **header,
                    "results": _results(s.study_uid, store.results_of(s.study_uid)),
                    "feedback": [f.as_json() for f in verdicts.of_study(s.study_uid)]})
    return out


@router.get("/v1/worklist")
async def get_worklist(request: Request) -> dict:
    ctx = current()
    studies = await run_in_threadpool(worklist, ctx.store())
    ctx.record(request, "search", resource_type="ImagingStudy", query="worklist",
               detail=f"{len(studies)} studies")
    return {"studies": studies}


def render_png(path: Path, max_side: int = 1024) -> bytes:
    """A stored (RGB or grayscale) Secondary Capture as 8-bit PNG, at most ``max_side`` pixels."""
    from PIL import Image
    from pydicom import dcmread

    ds = dcmread(path)
    pixels = ds.pixel_array
    if pixels.ndim == 4 or (pixels.ndim == 3 and int(ds.get("SamplesPerPixel", 1)) == 1):
        pixels = pixels[0]
    if pixels.dtype != np.uint8:
        low, high = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - low) / max(high - low, 1e-6) * 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        pixels = 255 - pixels
    image = Image.fromarray(pixels)
    image.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@router.get("/v1/overlay/{study_uid}/{name}.png")
async def overlay_png(study_uid: str, name: str, request: Request) -> Response:
    ctx = current()
    if not is_uid(study_uid) or not _NAME.fullmatch(name):
        return JSONResponse({"error": "the study must be a UID (PS3.5 9.1) and the name SC-<SOP Instance UID>, "
                                      f"{study_uid[:80]!r} and {name[:80]!r} are given"}, status_code=400)
    path = await run_in_threadpool(recorded_result, ctx.store(), ctx.state_dir / "results", study_uid,
                                   f"{name}.dcm")
    if path is None:
        ctx.record(request, "read", "not-found", study_uid=study_uid, resource_type="Media", detail=name)
        return JSONResponse({"error": "no such overlay"}, status_code=404)
    data = await run_in_threadpool(render_png, path)
    ctx.record(request, "read", study_uid=study_uid, resource_type="Media", detail=name)
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
