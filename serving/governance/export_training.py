"""``medgate export-training --since DATE --out DIR``: de-identified images plus the model's findings
as labels, in a layout ``medgate train`` reads.

For every study processed (status ``done``) since DATE, each source image with a 2D model finding
is de-identified (:mod:`serving.governance.deid`) and written to ``DIR/<model>/images/<new SOP UID>.dcm``;
``DIR/<model>/dataset.json`` is a Medical Segmentation Decathlon-style datalist whose ``training``
entries carry ``image`` (relative path), ``label`` (1 when the model called the finding positive),
``probability`` and ``centres`` (finding point as (x, y) fractions of the image side).  The labels
are the model's own outputs (pseudo-labels) and say so in the datalist: review before training.

Images with Burned In Annotation YES are excluded and counted.  The salt that keys UIDs, pseudonyms
and date shifts is random per export unless ``--salt-file`` names one; a new salt is kept under
``state_dir/exports/`` (0600), never in DIR.  Every exported study is one audit row (action
``export``).

With ``with_feedback`` only studies with a clinician's verdict on a finding are exported, and each
model's folder also gets ``feedback.json``: the verdicts per exported image, de-identified
(:mod:`serving.governance.feedback_export`), for ``medgate train <model> --from-feedback``.
"""
from __future__ import annotations

import getpass
import json
import os
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from pydicom import dcmread

from dicom_gateway.uids import check_uid, inside
from kernel.database import store_location
from models.registry import ModelNotFoundError, registered
from models.spec import InputKind
from serving.governance.audit import AuditLog
from serving.governance.deid import DeidentificationError, Deidentifier
from serving.governance.feedback_export import VerdictIndex, feedback_case, write_feedback
from serving.feedback.store import FeedbackStore
from serving.inference.versions import read_versions
from serving.store import Result, Store

def _labels_images(model: str, version: str) -> bool:
    """Whether ``model@version``'s findings are about single images (its serving spec's input kind):
    a volume model's finding is about a whole series, not one exported image."""
    try:
        return registered(model, version).serving.input is InputKind.IMAGE
    except (ModelNotFoundError, ValueError):  # a version no longer registered (or none named): not labelled
        return False


@dataclass
class ExportReport:
    """What one export wrote."""

    studies: int = 0
    images: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    salt_path: Path | None = None
    feedback_cases: dict[str, int] = field(default_factory=dict)
    feedback_skipped: dict[str, int] = field(default_factory=dict)


def _salt(state_dir: Path, salt_file: Path | None) -> tuple[bytes, Path]:
    if salt_file is not None:
        data = Path(salt_file).read_bytes()
        if len(data) < 16:
            raise ValueError(f"--salt-file must hold at least 16 bytes, {salt_file} has {len(data)}")
        return data, Path(salt_file)
    folder = state_dir / "exports"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"salt-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}.bin"
    data = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data, path


def _labels(results: list[Result]) -> dict[str, dict]:
    """Source SOP Instance UID -> {model, version, finding} from the SR result summaries."""
    out = {}
    for r in results:
        summary = r.summary
        if r.kind != "sr" or not _labels_images(summary.get("model", ""), summary.get("version", "")):
            continue
        for finding in summary.get("findings", []):
            out[finding["source"]] = {"model": summary["model"], "version": summary["version"], **finding}
    return out


def export_training(state_dir: Path, since: datetime, out: Path, *, salt_file: Path | None = None,
                    operator: str | None = None, meanings: dict[str, str] | None = None,
                    with_feedback: bool = False, store_url: str | None = None) -> ExportReport:
    """Export studies done since ``since`` (aware datetime) to ``out``; see the module docstring.
    ``store_url``: ``store.url`` (PostgreSQL on a cluster); None reads the SQLite file under ``state_dir``."""
    if since.tzinfo is None:
        raise ValueError(f"since must be timezone-aware, {since.isoformat()} is given")
    state_dir, out = Path(state_dir), Path(out)
    location = store_location(store_url, state_dir)
    store, audit = Store(location), AuditLog(location)
    operator = operator or getpass.getuser()
    salt, salt_path = _salt(state_dir, salt_file)
    deid = Deidentifier(salt)
    report = ExportReport(salt_path=salt_path)
    entries: dict[str, list[dict]] = defaultdict(list)
    versions: dict[str, set[str]] = defaultdict(set)
    feedback, index = (FeedbackStore(store.database), VerdictIndex()) if with_feedback else (None, None)
    cases: dict[str, list[dict]] = defaultdict(list)
    try:
        for study_uid in store.gateway.done_studies(since.timestamp()):
            written = 0
            results = store.results_of(study_uid)
            labels = _labels(results)
            verdicts = index.of_study(study_uid, results, feedback.of_study(study_uid)) if feedback else None
            if feedback and not verdicts:
                continue
            for inst in store.gateway.instances_of(study_uid):
                label = labels.get(inst.sop_instance_uid)
                if label is None or not Path(inst.path).is_file():
                    continue
                ds = dcmread(inst.path)
                rows, cols = int(ds.Rows), int(ds.Columns)
                try:
                    deid.apply(ds)
                except DeidentificationError:
                    report.excluded["burned_in_annotation"] = report.excluded.get("burned_in_annotation", 0) + 1
                    continue
                model = label["model"]
                (out / model / "images").mkdir(parents=True, exist_ok=True)
                target = inside(out / model / "images", f"{check_uid('SOPInstanceUID', ds.SOPInstanceUID)}.dcm")
                ds.save_as(target, enforce_file_format=True)
                point = label.get("point")
                entries[model].append({
                    "image": f"images/{target.name}", "label": int(bool(label["positive"])),
                    "probability": round(float(label["probability"]), 6),
                    "centres": [[point[0] / cols, point[1] / rows]] if point and label["positive"] else []})
                versions[model].add(label["version"])
                if verdicts and inst.sop_instance_uid in verdicts:
                    cases[model].append(feedback_case(entries[model][-1], label["version"],
                                                      verdicts[inst.sop_instance_uid]))
                written += 1
            if written:
                report.studies += 1
                audit.record(who=operator, role="operator", action="export", study_uid=study_uid,
                             client="local", query=f"since={since.isoformat()}",
                             detail=f"{written} de-identified images to {out}")
        for model, items in entries.items():
            _write_datalist(out / model, model, sorted(versions[model]), items, (meanings or {}).get(model))
            report.images[model] = len(items)
        deployed = read_versions(state_dir)
        for model, found in cases.items():
            write_feedback(out / model, model, deployed.get(model, {}).get("version"), found)
            report.feedback_cases[model] = len(found)
        report.feedback_skipped = dict(index.skipped) if index else {}
    finally:
        store.close()
        audit.close()
    return report


def _write_datalist(folder: Path, model: str, versions: list[str], items: list[dict],
                    meaning: str | None) -> None:
    datalist = {
        "name": f"medgate-{model}-export",
        "description": "De-identified images (PS3.15 Basic Profile, modified dates) with model findings as labels",
        "labelSource": f"model output of medgate {model} {', '.join(versions)} (pseudo-labels: review before training)",
        "labels": {"0": "no finding", "1": meaning or "finding"},
        "numTraining": len(items),
        "training": items,
    }
    (folder / "dataset.json").write_text(json.dumps(datalist, indent=1), encoding="utf-8")
