"""Model replies to findings: the JSON the HTTP API returns and the :class:`~models.finding.Finding`
objects the result writer (:mod:`serving.imaging.results`) uses, chosen by the model's reply format
(``reply`` in its serving spec, :mod:`models.spec`); result files found again (only as the results
table records them)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models.finding import NOT_FOR_CLINICAL_USE, Concept, Finding, OutOfDistribution, SourceImage
from models.spec import ReplyFormat, ServingSpec
from models.transforms import heatmap_peak

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


def class_finding(ds, reply: dict[str, Any], info: dict[str, Any]) -> Finding:
    """The finding of a multi-class model's reply (``probabilities`` in the order of ``info["classes"]``)
    about DICOM image ``ds``: the class that has its own operating point (``operating_point`` key
    ``<class name>_threshold``, e.g. derm's ``mel_threshold``), the only decision its model card
    validates; every class's probability goes into the finding's notes, most probable first.

    Raises
    ------
    ValueError
        The model names no class with an operating point, or the reply's length differs from the
        classes'.
    """
    classes = info.get("classes") or []
    probabilities = np.asarray(reply["probabilities"], dtype=np.float64).reshape(-1)
    if len(probabilities) != len(classes):
        raise ValueError(f"{info['name']}: {len(probabilities)} probabilities for {len(classes)} classes")
    operating = info.get("operating_point") or {}
    decided = [(i, c) for i, c in enumerate(classes) if f"{c['name']}_threshold" in operating]
    if not decided:
        raise ValueError(f"{info['name']}: no class has an operating point (`<class>_threshold`) in "
                         f"{sorted(operating)}")
    index, concept = decided[0]
    ranked = sorted(zip(classes, probabilities), key=lambda item: -item[1])
    notes = (NOT_FOR_CLINICAL_USE, "class probabilities: " + ", ".join(
        f"{c['name']} ({c['meaning']}) {p:.3f}" for c, p in ranked))
    return Finding(model=info["name"], model_version=info["version"],
                   code=Concept(value=concept["value"], scheme=concept["scheme"], meaning=concept["meaning"]),
                   probability=unit(probabilities[index]),
                   threshold=float(operating[f"{concept['name']}_threshold"]), source=source_image(ds), notes=notes)


def unit(value) -> float:
    """``value`` clipped to [0, 1]."""
    return min(max(float(value), 0.0), 1.0)


def finding_of(ds, reply: dict[str, Any], info: dict[str, Any], spec: ServingSpec) -> Finding:
    """The finding of a 2D model's reply about DICOM image ``ds``, as its reply format reads it
    (``classes``: :func:`class_finding`; else :func:`image_finding`), with the reply's heatmap.

    Raises
    ------
    ValueError
        The spec's reply format is not one of an image model (``finding``, ``classes``).
    """
    if spec.reply is ReplyFormat.CLASSES:
        finding = class_finding(ds, reply, info)
    elif spec.reply is ReplyFormat.FINDING:
        finding = image_finding(ds, reply, info)
    else:
        raise ValueError(f"{info['name']}: reply {spec.reply.value!r} is not one of an image model "
                         f"({ReplyFormat.FINDING.value!r}, {ReplyFormat.CLASSES.value!r})")
    if "heatmap" in reply:
        finding = replace(finding, heatmap=np.asarray(reply["heatmap"], dtype=np.float32).squeeze())
    if reply.get("ood") is not None:  # the replica's out-of-distribution verdict (serving.inference.ood)
        finding = replace(finding, ood=OutOfDistribution.from_dict(reply["ood"]))
    return finding


def findings_json(reply: dict[str, Any], info: dict[str, Any], spec: ServingSpec) -> list[dict[str, Any]]:
    """JSON findings of one reply (probabilities, operating point, location when there is one), as
    the model's reply format reads it: every class ranked, or one probability against the threshold."""
    if spec.reply is ReplyFormat.CLASSES:
        probs = np.asarray(reply["probabilities"]).reshape(-1)
        classes = [c["name"] if isinstance(c, dict) else c for c in info.get("classes") or []]
        ranked = sorted(zip(classes, probs.tolist()), key=lambda kv: -kv[1])
        return [{"class": name, "probability": round(p, 6), "ood": reply.get("ood")} for name, p in ranked]
    probability = float(np.asarray(reply["probability"]).reshape(-1)[0])
    finding = {"code": info.get("finding"), "probability": round(probability, 6),
               "threshold": info.get("threshold"),
               "positive": info.get("threshold") is not None and probability >= info["threshold"]
               and not (reply.get("ood") or {}).get("outside"), "ood": reply.get("ood")}
    if "heatmap" in reply:  # peak as a fraction of the image width and height
        col, row = heatmap_peak(reply["heatmap"], _FRACTION_SCALE, _FRACTION_SCALE)
        finding["point_fraction"] = [round(col / _FRACTION_SCALE, 4), round(row / _FRACTION_SCALE, 4)]
    return [finding]


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
