"""Model replies to findings: the JSON the HTTP API returns and the Finding objects writers use;
the result files of an upload, written and found again (only as the results table records them)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from models.finding import Concept, Finding, SourceImage
from models.transforms import heatmap_peak
from serving.fhir.report import PatientIdentity, build_report_resources

_FRACTION_SCALE = 10_000


def source_image(ds) -> SourceImage:
    """The :class:`SourceImage` (UIDs, size, frame of reference) of DICOM image ``ds``."""
    return SourceImage(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                       sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                       rows=int(ds.Rows), columns=int(ds.Columns),
                       frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")))


def image_finding(ds, reply: dict[str, Any], info: dict[str, Any]) -> Finding:
    """The :class:`Finding` of an image classifier's reply about DICOM image ``ds``."""
    source = source_image(ds)
    point = heatmap_peak(reply["heatmap"], source.rows, source.columns) if "heatmap" in reply else None
    probability = float(np.asarray(reply["probability"]).reshape(-1)[0])
    return Finding(model=info["name"], model_version=info["version"], code=Concept(**info["finding"]),
                   probability=min(max(probability, 0.0), 1.0), threshold=info["threshold"],
                   source=source, point=point)


def findings_json(model: str, reply: dict[str, Any], info: dict[str, Any]) -> list[dict[str, Any]]:
    """JSON findings of one reply (probabilities, operating point, location when there is one)."""
    if model == "derm":
        probs = np.asarray(reply["probabilities"]).reshape(-1)
        classes = [c["name"] if isinstance(c, dict) else c for c in info.get("classes") or []]
        ranked = sorted(zip(classes, probs.tolist()), key=lambda kv: -kv[1])
        return [{"class": name, "probability": round(p, 6)} for name, p in ranked]
    probability = float(np.asarray(reply["probability"]).reshape(-1)[0])
    finding = {"code": info.get("finding"), "probability": round(probability, 6),
               "threshold": info.get("threshold"),
               "positive": info.get("threshold") is not None and probability >= info["threshold"]}
    if "heatmap" in reply:  # peak as a fraction of the image width and height
        col, row = heatmap_peak(reply["heatmap"], _FRACTION_SCALE, _FRACTION_SCALE)
        finding["point_fraction"] = [round(col / _FRACTION_SCALE, 4), round(row / _FRACTION_SCALE, 4)]
    return [finding]


def write_upload_results(store, results_dir: Path, ds, reply: dict[str, Any], info: dict[str, Any],
                         identity: dict[str, Any] | None = None) -> dict[str, str]:
    """Write the TID 1500 SR (``<results_dir>/<StudyInstanceUID>/SR-<uid>.dcm``, recorded in
    ``store``'s results, so ``GET /v1/results/...`` serves it) and the FHIR DiagnosticReport +
    Observation (local store) for an uploaded DICOM image; returns links to both.

    The study UID names a folder: it must be a UID (PS3.5 9.1) and the file stay under
    ``results_dir``, else :class:`ValueError` and nothing is written."""
    from dicom_gateway.sr import build_measurement_report
    from dicom_gateway.storage import write_durably
    from dicom_gateway.uids import check_uid, inside

    study_uid = check_uid("StudyInstanceUID", ds.StudyInstanceUID)
    finding = image_finding(ds, reply, info)
    seed = [ds.SOPInstanceUID, info["name"], info["version"]]
    sr = build_measurement_report([finding], ds, algorithm_name=f"medgate-{info['name']}",
                                  algorithm_version=info["version"],
                                  series_instance_uid=generate_uid(entropy_srcs=seed + ["series"]),
                                  sop_instance_uid=generate_uid(entropy_srcs=seed))
    name = f"SR-{sr.SOPInstanceUID}.dcm"
    path = inside(results_dir, study_uid, name)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    write_durably(path, buffer.getvalue())
    store.add_result(study_uid, "sr", str(path), {
        "model": info["name"], "version": info["version"], "sop_instance_uid": sr.SOPInstanceUID,
        "source": "upload", "findings": [{"probability": finding.probability, "positive": finding.positive,
                                          "location": finding.location, "point": finding.point,
                                          "source": finding.source.sop_instance_uid}]})
    resources = build_report_resources([finding], ds, PatientIdentity(**(identity or {})),
                                       sr_sop_instance_uid=sr.SOPInstanceUID)
    store.put_resources(resources)
    return {"sr": f"/v1/results/{study_uid}/{name}", "fhir": f"/fhir/DiagnosticReport/{resources[0]['id']}"}


def recorded_result(store, results_dir: Path, study_uid: str, name: str) -> Path | None:
    """The file ``<results_dir>/<study_uid>/<name>`` if ``store``'s results table records it for the
    study and it exists, else None: a request names a result, never a path."""
    from dicom_gateway.uids import PathOutsideFolder, inside

    recorded = store.result_path(study_uid, name)
    if recorded is None:
        return None
    try:
        path = inside(results_dir, study_uid, name)
    except PathOutsideFolder:
        return None
    return path if recorded.resolve() == path and path.is_file() else None
