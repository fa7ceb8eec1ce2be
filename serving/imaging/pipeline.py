"""The imaging path after study completion: model inference, findings, result objects, delivery.

One worker thread per model takes complete studies from that model's queue (so a chest X-ray never
waits behind a CT volume that takes minutes on a CPU), sends each routed image to its model
deployment (all images of a study concurrently, so the deployment can batch them), turns the
replies into :class:`~models.finding.Finding` objects and writes, per study:

* a TID 1500 SR per source image (2D models) or per series (volume models);
* a DICOM SEG of the masks (volume models whose reply has a ``mask``);
* a Secondary Capture overlay per source image (2D) or of the slice with the largest mask area;
* a FHIR DiagnosticReport with one Observation per finding.

A volume with no candidate at the operating point is reported too: one unlocated finding over the
series, "absent", with the highest candidate probability the model saw (``max_probability``, 0 when
it gives none), so the radiologist and the EHR learn that the AI read the study and found nothing.

Each DICOM object is queued through the outbox for every destination whose ``objects`` list names
its kind (``sr``, ``seg``, ``sc``); the FHIR resources go as one transaction Bundle to
``fhir.base_url`` or, without it, into the local store.  Each study is processed, and its outbox
items enqueued, under its Study Instance UID as correlation id (:mod:`kernel.correlation`).
Studies left ``complete`` by a crash are resubmitted at start.  Every UID and FHIR id derives from
the source and the model version, so reprocessing a study replaces its results instead of adding
more.

A 2D model receives one ``float32`` (C, S, S) item per image, made by
:func:`dicom_gateway.pixels.model_input` for the channels of the model's image input (``num_channels``
in its metadata, ``network_data_format.inputs``): 1, the windowed grayscale image; 3, the RGB
photograph (RGB, YBR and PALETTE COLOR photometrics).  An image the model cannot read (a MONOCHROME
image for a colour model, a multi-frame instance) fails the study with the reason, shown in the
worklist.

A volume model (``nodule``) receives the series as ``{"volume": (Z, Y, X) float32, "spacing_mm"}``
in slice order (ascending position along the normal) and is expected to reply
``{"mask": (Z, Y, X) integer labels, "candidates": [{"label": n, "probability": p}, ...]}``.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_gateway.overlay import build_overlay
from dicom_gateway.ledger import mark_processed, routed_instances, unprocessed_dispatches
from dicom_gateway.pixels import ct_volume, model_input
from dicom_gateway.routing import DEFAULT_RULES, route
from dicom_gateway.seg import build_segmentation
from dicom_gateway.sr import build_measurement_report
from dicom_gateway.storage import write_durably
from dicom_gateway.uids import check_uid, inside
from kernel.correlation import bound
from kernel.fhir_bundle import transaction_bundle
from models.finding import NOT_FOR_CLINICAL_USE, Concept, Finding
from models.registry import ModelRegistry
from models.transforms import input_channels
from serving.fhir.report import PatientIdentity, build_report_resources
from serving.imaging.findings import image_finding, source_image

log = logging.getLogger("medgate.imaging")

#: Models that take a whole series instead of single images.
VOLUME_MODELS = ("nodule",)
#: Every DICOM result kind; a destination's ``objects`` selects among them.
ALL_OBJECTS = ("sr", "seg", "sc")


def registered_input(info: dict) -> dict:
    """The first input of ``network_data_format.inputs`` in the metadata of the served model version
    (``info["name"]``, ``info["version"]``); empty when the registry does not hold that version."""
    try:
        manifest = ModelRegistry().get(info["name"], info["version"])
    except Exception:  # noqa: BLE001 - no registered version: a 2D study then fails naming the model
        return {}
    return dict(next(iter(manifest.raw["network_data_format"]["inputs"].values())))


def class_finding(ds, reply: dict, info: dict) -> Finding:
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
                   probability=_unit(probabilities[index]), threshold=float(operating[f"{concept['name']}_threshold"]),
                   source=source_image(ds), notes=notes)


def _unit(value) -> float:
    return min(max(float(value), 0.0), 1.0)


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=["medgate result", *map(str, parts)])


#: Attempts of a study whose model call timed out or lost its replica, and the first retry delay.
TRANSIENT_ATTEMPTS = 4
RETRY_DELAY_S = 5.0
#: Time allowed for one model call on a whole volume. Sliding-window inference over a chest CT takes
#: minutes on a CPU (a 512x512x150 series is ~860 patches of 64^3, ~0.3 s each on 2 cores), and a
#: retry cannot help a call that is slow rather than stuck: the replica is still busy with the first.
VOLUME_TIMEOUT_S = 900.0


class ImagingPipeline:
    """Process complete studies.

    Parameters
    ----------
    store, outbox
        Local store and delivery outbox.
    handles
        Model name -> Ray Serve deployment handle (``.remote(item)`` and ``.info.remote()``).
    results_dir
        Where result objects are written (``<results_dir>/<study>/...``).
    pacs_destination
        Outbox destination name that gets every object (kept for callers that know only one).
    destinations
        Destination name -> object kinds it receives (``["sr", "sc"]``).
    fhir_base_url
        FHIR server of DiagnosticReports (outbox kind ``fhir``); None keeps them in the store.
    identity
        Patient identifier systems for FHIR.
    """

    def __init__(self, store, outbox, handles: dict[str, Any], results_dir: Path,
                 pacs_destination: str | None = None, timeout_s: float = 60.0, *,
                 destinations: dict[str, list[str]] | None = None, fhir_base_url: str | None = None,
                 identity: PatientIdentity | None = None) -> None:
        self.store, self.outbox, self.handles = store, outbox, handles
        self.results_dir = Path(results_dir)
        self.destinations = dict(destinations or {})
        if pacs_destination and pacs_destination not in self.destinations:
            self.destinations[pacs_destination] = list(ALL_OBJECTS)
        self.fhir_base_url = fhir_base_url
        self.identity = identity or PatientIdentity()
        self.timeout_s = timeout_s
        self._attempts: dict[tuple[str, str], int] = {}  # transient failures so far, per dispatch
        self._info: dict[str, dict] = {}
        self._queues: dict[str, queue.Queue[str | None]] = {model: queue.Queue() for model in handles}
        self._threads = [threading.Thread(target=self._run, args=(model,), name=f"medgate-imaging-{model}",
                                          daemon=True) for model in handles]

    def start(self) -> None:
        for model in self.handles:
            self.model_info(model)  # fail fast at start, and no first-study penalty
        for thread in self._threads:
            thread.start()
        pending = unprocessed_dispatches(self.store)
        if pending is None:  # no gateway ledger in this store: one route per study
            pending = [(study, self.store.study(study)["route"])
                       for study in self.store.studies_with_status("complete")]
        for study, model in pending:
            with bound(study):
                log.info("study %s: resuming %s after restart", study, model)
            self.submit(study, model)

    def stop(self) -> None:
        for pending in self._queues.values():
            pending.put(None)
        deadline = time.monotonic() + self.timeout_s
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def submit(self, study_uid: str, model: str) -> None:
        if model not in self._queues:  # e.g. a dispatch resumed after its model was undeployed
            with bound(study_uid):
                log.error("study %s: no deployment for model %r (deployed: %s)", study_uid, model,
                          ", ".join(self._queues))
            self.store.set_study_status(study_uid, "failed", detail=f"no deployment for model {model!r}")
            mark_processed(self.store, study_uid, model)
            return
        self._queues[model].put(study_uid)

    def _run(self, model: str) -> None:
        while (study := self._queues[model].get()) is not None:
            with bound(study):
                try:
                    self.process(study, model)
                except Exception as exc:  # noqa: BLE001 - the study fails, the pipeline goes on
                    if self._retry_later(study, model, exc):
                        continue  # not marked processed: a restart resumes it too
                    log.exception("study %s: processing failed", study)
                    self.store.set_study_status(study, "failed", detail=f"{type(exc).__name__}: {exc}")
                self._attempts.pop((study, model), None)
                mark_processed(self.store, study, model)

    def _retry_later(self, study: str, model: str, exc: Exception) -> bool:
        """A model call that timed out or lost its replica is tried again (at most
        :data:`TRANSIENT_ATTEMPTS` times, after a growing delay) instead of failing the study."""
        transient = isinstance(exc, TimeoutError) or type(exc).__module__.startswith("ray.")
        attempt = self._attempts.get((study, model), 0) + 1
        if not transient or attempt >= TRANSIENT_ATTEMPTS:
            return False
        self._attempts[(study, model)] = attempt
        delay_s = RETRY_DELAY_S * 2 ** (attempt - 1)
        log.warning("study %s: %s failed (%s: %s), attempt %d of %d; again in %.0f s", study, model,
                    type(exc).__name__, exc, attempt, TRANSIENT_ATTEMPTS, delay_s)
        timer = threading.Timer(delay_s, self.submit, (study, model))
        timer.daemon = True
        timer.start()
        return True

    def model_info(self, model: str) -> dict:
        """The deployment's ``info`` plus ``input``, its image input spec (see :func:`registered_input`)."""
        if model not in self._info:
            info = self.handles[model].info.remote().result(timeout_s=self.timeout_s)
            self._info[model] = {"input": info.get("input") or registered_input(info), **info}
        return self._info[model]

    # -- inference -----------------------------------------------------------------------------
    def process(self, study_uid: str, model: str) -> list[Path]:
        """Run ``model`` on the routed images of the study; returns the paths of the objects written."""
        start = time.perf_counter()
        info = self.model_info(model)
        datasets = [dcmread(row["path"]) for row in self.store.instances_of(study_uid)]
        routed = routed_instances(self.store, study_uid, model)  # as decided at arrival (dicom.routes)
        datasets = [ds for ds in datasets if (ds.SOPInstanceUID in routed if routed is not None
                                              else route(ds, DEFAULT_RULES) == model)]
        if not datasets:
            raise ValueError(f"study {study_uid} has no image routed to {model!r}")
        if model in VOLUME_MODELS:
            paths = self._process_volume(study_uid, datasets, info)
        else:
            paths = self._process_images(study_uid, datasets, info)
        elapsed_ms = (time.perf_counter() - start) * 1000
        kinds = [p.name.split("-")[0] for p in paths]
        detail = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
        self.store.set_study_status(study_uid, "done", detail=detail)
        log.info("study %s: %s@%s -> %s in %.0f ms", study_uid, info["name"], info["version"], detail,
                 elapsed_ms)
        return paths

    def _process_images(self, study_uid: str, datasets: list, info: dict) -> list[Path]:
        handle = self.handles[info["name"]]
        channels = input_channels(info["input"])
        items = [model_input(ds, info["input_size_px"], channels) for ds in datasets]  # PixelDataError: study fails
        pending = [handle.remote(item) for item in items]
        replies = [p.result(timeout_s=self.timeout_s) for p in pending]
        paths, findings = [], []
        for ds, reply in zip(datasets, replies):
            finding = image_finding(ds, reply, info) if info.get("finding") else class_finding(ds, reply, info)
            if "heatmap" in reply:
                finding = replace(finding, heatmap=np.asarray(reply["heatmap"], dtype=np.float32).squeeze())
            findings.append(finding)
            sr = self._sr([finding], ds, info, seed=ds.SOPInstanceUID)
            paths.append(self._deliver_dicom(study_uid, "SR", sr, info, [finding]))
            sc = build_overlay(ds, [finding], series_number=9903,
                               series_instance_uid=_uid(study_uid, info["name"], info["version"], "sc"),
                               sop_instance_uid=_uid(ds.SOPInstanceUID, info["name"], info["version"], "sc"))
            paths.append(self._deliver_dicom(study_uid, "SC", sc, info, [finding]))
        self._deliver_fhir(findings, datasets[0], info, sr_uid=None)
        return paths

    def _process_volume(self, study_uid: str, datasets: list, info: dict) -> list[Path]:
        volume, spacing, series = ct_volume(datasets)  # sorted along the normal; VolumeError if mixed
        reply = self.handles[info["name"]].remote({"volume": volume, "spacing_mm": spacing}).result(
            timeout_s=max(self.timeout_s, VOLUME_TIMEOUT_S))
        findings = self._volume_findings(series, reply, info)
        paths, seg = [], None
        masked = [f for f in findings if f.mask is not None]
        if masked:
            seg = build_segmentation(masked, series, series_instance_uid=_uid(study_uid, info["name"], "seg"),
                                     sop_instance_uid=_uid(study_uid, info["name"], info["version"], "seg"))
            paths.append(self._deliver_dicom(study_uid, "SEG", seg, info, masked))
        sr = self._sr(findings, series, info, seed=series[0].SeriesInstanceUID, segmentation=seg)
        paths.append(self._deliver_dicom(study_uid, "SR", sr, info, findings))
        for f in masked[:1]:
            plane = int(np.argmax(f.mask.reshape(len(series), -1).sum(axis=1)))
            shown = replace(f, source=f.sources[plane], other_sources=(), mask=f.mask[plane:plane + 1])
            sc = build_overlay(series[plane], [shown],
                               series_instance_uid=_uid(study_uid, info["name"], info["version"], "sc"),
                               sop_instance_uid=_uid(series[plane].SOPInstanceUID, info["name"], "sc"))
            paths.append(self._deliver_dicom(study_uid, "SC", sc, info, [shown]))
        self._deliver_fhir(findings, series[0], info, sr_uid=sr.SOPInstanceUID)
        return paths

    @staticmethod
    def _volume_findings(series: list, reply: dict, info: dict) -> list[Finding]:
        labels = np.asarray(reply.get("mask")) if reply.get("mask") is not None else None
        images = [source_image(ds) for ds in series]
        common = dict(model=info["name"], model_version=info["version"], code=Concept(**info["finding"]),
                      threshold=info["threshold"], source=images[0], other_sources=tuple(images[1:]))
        findings = []
        for n, candidate in enumerate(reply.get("candidates", []), start=1):
            label = int(candidate.get("label", n))
            mask = labels == label if labels is not None and labels.shape[0] == len(series) else None
            findings.append(Finding(probability=_unit(candidate["probability"]),
                                    mask=mask if mask is not None and mask.any() else None, **common))
        if not findings:  # nothing at the operating point: the study is reported as read, "absent"
            below = float(np.nextafter(info["threshold"], 0.0))
            findings.append(Finding(probability=min(_unit(reply.get("max_probability", 0.0)), below), **common))
        return findings

    # -- writing and delivery ------------------------------------------------------------------
    @staticmethod
    def _sr(findings, source, info: dict, seed: str, segmentation=None):
        return build_measurement_report(
            findings, source, algorithm_name=f"medgate-{info['name']}", algorithm_version=info["version"],
            series_instance_uid=_uid(findings[0].source.study_uid, info["name"], info["version"], "sr"),
            sop_instance_uid=generate_uid(entropy_srcs=[seed, info["name"], info["version"]]),
            segmentation=segmentation)

    def _deliver_dicom(self, study_uid: str, kind: str, obj, info: dict, findings: list[Finding]) -> Path:
        """Write ``obj``, record it, and queue it for each destination that takes ``kind``."""
        path = inside(self.results_dir, check_uid("StudyInstanceUID", study_uid),
                      f"{kind}-{check_uid('SOPInstanceUID', obj.SOPInstanceUID)}.dcm")
        buffer = io.BytesIO()
        obj.save_as(buffer, enforce_file_format=True)
        write_durably(path, buffer.getvalue())
        summary = {"model": info["name"], "version": info["version"], "sop_instance_uid": obj.SOPInstanceUID,
                   "findings": [{"probability": f.probability, "positive": f.positive, "location": f.location,
                                 "point": f.point, "source": f.source.sop_instance_uid} for f in findings]}
        self.store.add_result(study_uid, kind.lower(), str(path), summary)
        for destination, objects in self.destinations.items():
            if kind.lower() in objects:
                self.outbox.enqueue(f"dicom:{obj.SOPInstanceUID}:{destination}", "dicom", destination,
                                    {"paths": [str(path)]})
        return path

    def _deliver_fhir(self, findings: list[Finding], source, info: dict, sr_uid: str | None) -> None:
        resources = build_report_resources(findings, source, self.identity, sr_sop_instance_uid=sr_uid)
        if self.fhir_base_url is None:
            self.store.put_resources(resources)
            return
        bundle = transaction_bundle(resources, self.fhir_base_url)
        self.outbox.enqueue(f"fhir:bundle:{bundle['id']}", "fhir", self.fhir_base_url, bundle)
