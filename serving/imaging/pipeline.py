"""The imaging path after study completion: model inference, findings, result objects, delivery.

One worker thread per model takes complete studies from that model's queue (so a chest X-ray never
waits behind a CT volume that takes minutes on a CPU), sends each routed image to its model
deployment (all images of a study concurrently, so the deployment can batch them), turns the
replies into :class:`~models.finding.Finding` objects and writes, per study:

* a TID 1500 SR per source image (2D models) or per series (volume models);
* a DICOM SEG of the masks (volume models whose reply has a ``mask``);
* a Secondary Capture overlay per source image (2D) or of the slice with the largest mask area;
* a FHIR DiagnosticReport with one Observation per finding;
* an HL7 v2.5.1 ORU^R01 per configured ``hl7.destinations`` entry (every imaging model's results
  unless the entry lists ``models``);

each only when the model's serving spec lists it (``results``, :mod:`models.spec`).  Whether a model
reads single images or whole series (``input``: ``image`` or ``volume``) and how its reply becomes
findings (``reply``) come from its spec too, never from its name.  The objects are written,
recorded and queued by the one result writer, :class:`serving.imaging.results.ResultWriter`, which
the HTTP uploads use as well.

A volume with no candidate at the operating point is reported too: one unlocated finding over the
series, "absent", with the highest candidate probability the model saw (``max_probability``, 0 when
it gives none), so the radiologist and the EHR learn that the AI read the study and found nothing.

Each DICOM object is queued through the outbox for every destination whose ``objects`` list names
its kind (``sr``, ``seg``, ``sc``); the FHIR resources go as one transaction Bundle to
``fhir.base_url`` or, without it, into the local store.  Each study is processed, and its outbox
items enqueued, under its Study Instance UID as correlation id (:mod:`kernel.correlation`).
Every UID and FHIR id derives from the source and the model version, so reprocessing a study
replaces its results instead of adding more.

Each (study, model) the gateway dispatched is leased to this node (``node_id``) while it is queued
or processed here (:class:`dicom_gateway.leases.DispatchLeases` renews the leases every
``lease_s / 3``).  The lease is confirmed before the study starts and again between the model call
and the first result written: a dispatch another node took over (this node lost the database for
longer than the lease) is dropped, never written twice.  At start the node resumes its own
unprocessed dispatches and those whose lease expired, and leaves another node's live ones alone.
When the database cannot be reached mid-study the dispatch is let go: its lease lapses and the
takeover sweep (:meth:`dicom_gateway.completion.StudyAssembler.take_over`, on this node or another)
runs it again.

A 2D model receives one ``float32`` (C, S, S) item per image, made by
:func:`dicom_gateway.pixels.model_input` for the channels of the model's image input (``num_channels``
in its metadata, ``network_data_format.inputs``): 1, the windowed grayscale image; 3, the RGB
photograph (RGB, YBR and PALETTE COLOR photometrics).  An image the model cannot read (a MONOCHROME
image for a colour model, a multi-frame instance) fails the study with the reason, shown in the
worklist.

A volume model (input ``volume``, e.g. ``nodule``) receives the series as ``{"volume": (Z, Y, X) float32, "spacing_mm"}``
in slice order (ascending position along the normal) and is expected to reply
``{"mask": (Z, Y, X) integer labels, "candidates": [{"label": n, "probability": p}, ...]}``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread

from dicom_gateway.config import DicomConfig
from dicom_gateway.leases import DispatchLeases, LeaseLost
from dicom_gateway.ledger import LOCAL_NODE, database_unreachable, mark_processed, resume_dispatches, routed_instances
from dicom_gateway.overlay import build_overlay
from dicom_gateway.pixels import ct_volume, model_input
from dicom_gateway.routing import DEFAULT_RULES, route
from dicom_gateway.seg import build_segmentation
from dicom_gateway.sr import largest_plane
from kernel.correlation import bound
from models.finding import Concept, Finding, OutOfDistribution
from models.reference import image_features, volume_features
from models.registry import registered
from models.spec import InputKind, ServingSpec
from models.transforms import input_channels
from serving.config import RESULT_OBJECTS, Hl7Section
from serving.fhir.report import PatientIdentity
from serving.imaging.findings import finding_of, source_image, unit
from serving.imaging.results import OVERLAY_SERIES_NUMBER, ResultWriter, result_uid

log = logging.getLogger("medgate.imaging")

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults (dispatch leases), the constructor's defaults

def served_spec(info: dict) -> ServingSpec:
    """The serving spec of the served model version (``info["name"]``, ``info["version"]``)."""
    return registered(info["name"], info["version"]).serving


def registered_input(info: dict) -> dict:
    """The first input of ``network_data_format.inputs`` in the metadata of the served model version
    (``info["name"]``, ``info["version"]``); empty when the registry does not hold that version."""
    try:
        return registered(info["name"], info["version"]).input_spec
    except Exception:  # noqa: BLE001 - no registered version: a 2D study then fails naming the model
        return {}


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
    hl7
        The ``hl7`` section: the RIS/HIS destinations of ORU^R01 messages.
    node_id
        This node's id, the owner of the dispatch leases it holds (``local`` alone; with several
        nodes on one database, the same id its gateway's assembler is given).
    lease_s
        Length of a dispatch lease (default ``dicom.completion.lease_s``).
    """

    def __init__(self, store, outbox, handles: dict[str, Any], results_dir: Path,
                 pacs_destination: str | None = None, timeout_s: float = 60.0, *,
                 destinations: dict[str, list[str]] | None = None, fhir_base_url: str | None = None,
                 identity: PatientIdentity | None = None, hl7: Hl7Section | None = None,
                 node_id: str = LOCAL_NODE, lease_s: float = _DICOM.completion.lease_s) -> None:
        self.store, self.outbox, self.handles = store, outbox, handles
        self.results_dir = Path(results_dir)
        self.destinations = dict(destinations or {})
        if pacs_destination and pacs_destination not in self.destinations:
            self.destinations[pacs_destination] = list(RESULT_OBJECTS)
        self.fhir_base_url = fhir_base_url
        self.identity = identity or PatientIdentity()
        self.results = ResultWriter(store, outbox, self.results_dir, destinations=self.destinations,
                                    fhir_base_url=fhir_base_url, identity=self.identity, hl7=hl7)
        self.timeout_s = timeout_s
        self.leases = DispatchLeases(store, node_id=node_id, lease_s=lease_s)
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
        self.leases.start()
        pending = resume_dispatches(self.store, self.leases.node_id, self.leases.lease_s)
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
        self.leases.stop()

    def submit(self, study_uid: str, model: str) -> None:
        """Queue ``(study_uid, model)`` and hold its lease; nothing when it is queued or in progress
        here already (a takeover sweep may hand back a dispatch this node holds)."""
        if model not in self._queues:  # e.g. a dispatch resumed after its model was undeployed
            with bound(study_uid):
                log.error("study %s: no deployment for model %r (deployed: %s)", study_uid, model,
                          ", ".join(self._queues))
            self.store.set_study_status(study_uid, "failed", detail=f"no deployment for model {model!r}")
            mark_processed(self.store, study_uid, model)
            return
        if self.leases.hold(study_uid, model):
            self._queues[model].put(study_uid)

    def _run(self, model: str) -> None:
        while (study := self._queues[model].get()) is not None:
            with bound(study):
                self._handle(study, model)

    def _handle(self, study: str, model: str) -> None:
        """Process one queued dispatch under its lease, then mark it processed."""
        try:
            if not self.leases.confirm(study, model):
                log.info("study %s: %s is another node's or processed already; not run here", study, model)
                return
            self.process(study, model)
        except LeaseLost as exc:
            log.warning("study %s: %s", study, exc)
            self._attempts.pop((study, model), None)
            return
        except Exception as exc:  # noqa: BLE001 - the study fails, the pipeline goes on
            if database_unreachable(self.store, exc):
                log.warning("study %s: %s stopped, the database does not answer (%s); its lease lapses and"
                            " the takeover sweep runs it again", study, model, exc)
                self.leases.drop(study, model)
                return
            if self._retry_later(study, model, exc):
                return  # not marked processed: a restart resumes it too
            log.exception("study %s: processing failed", study)
            try:
                self.store.set_study_status(study, "failed", detail=f"{type(exc).__name__}: {exc}")
            except Exception:  # noqa: BLE001 - logged; the dispatch is marked processed all the same
                log.exception("study %s: its failure not recorded", study)
        self._attempts.pop((study, model), None)
        self.leases.release(study, model)

    def _fence(self, study_uid: str, model: str) -> None:
        """Between the model call and the first result written: the dispatch must still be this
        node's (its lease renewed now), else :class:`LeaseLost` and nothing is written."""
        if not self.leases.confirm(study_uid, model):
            raise LeaseLost(f"{model} was taken over by another node during the model call; its results"
                            " are that node's to write")

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
        timer = threading.Timer(delay_s, self._queues[model].put, (study,))  # still held: renewed meanwhile
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
        if served_spec(info).input is InputKind.VOLUME:
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
        handle, spec = self.handles[info["name"]], served_spec(info)
        channels = input_channels(info["input"])
        items = [model_input(ds, info["input_size_px"], channels) for ds in datasets]  # PixelDataError: study fails
        pending = [handle.remote(item) for item in items]
        replies = [p.result(timeout_s=self.timeout_s) for p in pending]
        self._fence(study_uid, info["name"])
        paths, findings = [], []
        for ds, item, reply in zip(datasets, items, replies):
            finding = finding_of(ds, reply, info, spec)
            findings.append(finding)
            inputs = image_features(item, max(int(ds.Rows), int(ds.Columns)))  # monitored: models.reference
            paths.extend(self.results.image(ds, finding, info, spec, inputs=inputs).values())
        if spec.yields("fhir"):
            self.results.fhir(findings, datasets[0])
        self.results.hl7(findings, datasets[0], info)
        return paths

    def _process_volume(self, study_uid: str, datasets: list, info: dict) -> list[Path]:
        spec = served_spec(info)
        volume, spacing, series = ct_volume(datasets)  # sorted along the normal; VolumeError if mixed
        reply = self.handles[info["name"]].remote({"volume": volume, "spacing_mm": spacing}).result(
            timeout_s=max(self.timeout_s, VOLUME_TIMEOUT_S))
        self._fence(study_uid, info["name"])
        findings = self._volume_findings(series, reply, info)
        paths, seg = [], None
        masked = [f for f in findings if f.mask is not None]
        if masked and spec.yields("seg"):
            seg = build_segmentation(masked, series, series_instance_uid=result_uid(study_uid, info["name"], "seg"),
                                     sop_instance_uid=result_uid(study_uid, info["name"], info["version"], "seg"))
            paths.append(self.results.dicom(study_uid, "SEG", seg, info, masked))
        sr = self.results.sr(findings, series, info, seed=series[0].SeriesInstanceUID, segmentation=seg)
        if spec.yields("sr"):
            inputs = volume_features(volume, (info.get("input") or {}).get("window_hu"))  # monitored: models.reference
            paths.append(self.results.dicom(study_uid, "SR", sr, info, findings, inputs=inputs))
        for f in masked[:1] if spec.yields("sc") else []:
            plane = largest_plane(f)  # the slice the SR's viewer point is on
            shown = replace(f, source=f.sources[plane], other_sources=(), mask=f.mask[plane:plane + 1])
            sc = build_overlay(series[plane], [shown], series_number=OVERLAY_SERIES_NUMBER,
                               series_instance_uid=result_uid(study_uid, info["name"], info["version"], "sc"),
                               sop_instance_uid=result_uid(series[plane].SOPInstanceUID, info["name"], "sc"))
            paths.append(self.results.dicom(study_uid, "SC", sc, info, [shown]))
        if spec.yields("fhir"):
            self.results.fhir(findings, series[0], sr.SOPInstanceUID if spec.yields("sr") else None)
        self.results.hl7(findings, series[0], info)
        return paths

    @staticmethod
    def _volume_findings(series: list, reply: dict, info: dict) -> list[Finding]:
        labels = np.asarray(reply.get("mask")) if reply.get("mask") is not None else None
        images = [source_image(ds) for ds in series]
        ood = OutOfDistribution.from_dict(reply["ood"]) if reply.get("ood") is not None else None  # the volume's
        common = dict(model=info["name"], model_version=info["version"], code=Concept(**info["finding"]),
                      threshold=info["threshold"], source=images[0], other_sources=tuple(images[1:]), ood=ood)
        findings = []
        for n, candidate in enumerate(reply.get("candidates", []), start=1):
            label = int(candidate.get("label", n))
            mask = labels == label if labels is not None and labels.shape[0] == len(series) else None
            findings.append(Finding(probability=unit(candidate["probability"]),
                                    mask=mask if mask is not None and mask.any() else None, **common))
        if not findings:  # nothing at the operating point: the study is reported as read, "absent"
            below = float(np.nextafter(info["threshold"], 0.0))
            findings.append(Finding(probability=min(unit(reply.get("max_probability", 0.0)), below), **common))
        return findings
