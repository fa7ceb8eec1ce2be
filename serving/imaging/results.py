"""The one writer of result objects, for both ways findings arrive: a DICOM study the imaging
pipeline processed (:mod:`serving.imaging.pipeline`) and a DICOM image uploaded to ``POST
/v1/infer/<model>`` (:mod:`serving.http.ingress`).

For one model's findings about a study, :class:`ResultWriter`:

* builds the TID 1500 SR (PS3.16) and, for a 2D image, the Secondary Capture overlay and the
  Grayscale Softcopy Presentation State (:mod:`dicom_gateway.gsps`; a grayscale image only), when
  the model's serving spec lists them (``results``: :mod:`models.spec`);
* writes each DICOM object durably at ``<results_dir>/<StudyInstanceUID>/<KIND>-<SOPInstanceUID>.dcm``
  (the study UID must be a UID, PS3.5 9.1, and the file stays inside ``results_dir``, else
  :class:`ValueError` and nothing is written) and records it in the store's results
  (``store.add_result``), so ``GET /v1/results/...`` serves it;
* queues it through the outbox for each destination whose ``objects`` list names its kind
  (idempotency key ``dicom:<SOPInstanceUID>:<destination>``);
* sends the FHIR DiagnosticReport and its Observations as one transaction Bundle to
  ``fhir.base_url`` through the outbox (key ``fhir:bundle:<id>``) when it is set, else keeps them in
  the local store (``store.put_resources``);
* queues an HL7 v2.5.1 ORU^R01 of the study's findings (:mod:`serving.delivery.hl7_message`) for
  each ``hl7.destinations`` entry that takes the model (key ``hl7:<destination>:<MSH-10>``).

The UID rule: every UID derives from the source and the model name and version (:func:`result_uid`,
:func:`sr_uid`), so processing a study again, or uploading an image the gateway already received,
replaces its results instead of adding more.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Protocol

from pydicom.uid import generate_uid

from dicom_gateway.gsps import build_presentation_state
from dicom_gateway.overlay import build_overlay
from dicom_gateway.sr import build_measurement_report
from dicom_gateway.storage import write_durably
from dicom_gateway.uids import check_uid, inside
from kernel.fhir_bundle import transaction_bundle
from models.finding import Finding
from models.spec import ServingSpec
from serving.config import Hl7Section
from serving.delivery.hl7_message import MessageHeader, build_oru, control_id, now
from serving.fhir.report import PatientIdentity, build_report_resources

#: Series Number of the Secondary Capture overlays and of the presentation states (the SR's is
#: 9901, the SEG's 9902).
OVERLAY_SERIES_NUMBER = 9903
PRESENTATION_SERIES_NUMBER = 9904
#: The 2D objects written per image of a study, and per uploaded image: an upload's reply carries
#: the finding's location itself, so no overlay is made for it (the model's spec still decides).
STUDY_IMAGE_OBJECTS = ("sr", "sc", "gsps")
UPLOAD_OBJECTS = ("sr",)
#: Outbox kinds of the deliveries queued here.
DICOM_KIND, FHIR_KIND, HL7_KIND = "dicom", "fhir", "hl7"


class Enqueue(Protocol):
    """The outbox port (:meth:`serving.delivery.outbox.Outbox.enqueue`)."""

    def enqueue(self, key: str, kind: str, destination: str, payload: dict[str, Any]) -> bool: ...


def result_uid(*parts: str) -> str:
    """A result UID derived from ``parts`` (source UIDs, model name and version, object kind)."""
    return generate_uid(entropy_srcs=["medgate result", *map(str, parts)])


def sr_uid(seed: str, info: dict[str, Any]) -> str:
    """The SR's SOP Instance UID: from its source (``seed``, an image's SOP Instance UID or a
    series' Instance UID) and the model version."""
    return generate_uid(entropy_srcs=[str(seed), info["name"], info["version"]])


def summary_of(findings: list[Finding]) -> list[dict[str, Any]]:
    """The findings as a results row records them."""
    return [{"probability": f.probability, "positive": f.positive, "location": f.location, "point": f.point,
             "source": f.source.sop_instance_uid, "ood": f.ood.as_dict() if f.ood else None} for f in findings]


class ResultWriter:
    """Write, record and queue result objects (see the module docstring).

    Parameters
    ----------
    store
        The results and FHIR resources store (``add_result``, ``put_resources``).
    outbox
        Where deliveries are queued (:class:`Enqueue`); may be None when there is no destination
        and no ``fhir_base_url``.
    results_dir
        Folder of the result files, one subfolder per study.
    destinations
        Destination name -> the object kinds (``sr``, ``seg``, ``sc``) it receives.
    fhir_base_url
        The FHIR server the reports go to; None keeps them in the store.
    identity
        Patient identifier systems of the FHIR resources.
    hl7
        The ``hl7`` section: where ORU^R01 messages go (its ``destinations``) and how MSH names medgate.
    """

    def __init__(self, store, outbox: Enqueue | None, results_dir: Path, *,
                 destinations: dict[str, list[str]] | None = None, fhir_base_url: str | None = None,
                 identity: PatientIdentity | None = None, hl7: Hl7Section | None = None) -> None:
        self.store, self.outbox = store, outbox
        self.results_dir = Path(results_dir)
        self.destinations = {name: tuple(kinds) for name, kinds in (destinations or {}).items()}
        self.fhir_base_url = fhir_base_url
        self.identity = identity or PatientIdentity()
        self.hl7_config = hl7 or Hl7Section()
        if outbox is None and (self.destinations or fhir_base_url or self.hl7_config.destinations):
            raise ValueError(f"an outbox is required to deliver to destinations {sorted(self.destinations)}, "
                             f"the FHIR server {fhir_base_url!r} or HL7 destinations "
                             f"{sorted(self.hl7_config.named())}; none is given.")

    # -- building ------------------------------------------------------------------------------
    @staticmethod
    def sr(findings: list[Finding], source, info: dict[str, Any], seed: str, segmentation=None):
        """The TID 1500 SR of ``findings`` about ``source`` (a dataset, or a series' datasets)."""
        return build_measurement_report(
            findings, source, algorithm_name=f"medgate-{info['name']}", algorithm_version=info["version"],
            series_instance_uid=result_uid(findings[0].source.study_uid, info["name"], info["version"], "sr"),
            sop_instance_uid=sr_uid(seed, info), segmentation=segmentation)

    # -- writing -------------------------------------------------------------------------------
    def dicom(self, study_uid: str, kind: str, obj, info: dict[str, Any], findings: list[Finding],
              **summary: Any) -> Path:
        """Write ``obj`` (result kind ``kind``: SR, SEG, SC), record it, queue it for each destination
        that takes ``kind``; ``summary``: more keys of its results row (e.g. ``source="upload"``;
        ``inputs``: the input features live monitoring compares, :mod:`models.reference`)."""
        path = inside(self.results_dir, check_uid("StudyInstanceUID", study_uid),
                      f"{kind.upper()}-{check_uid('SOPInstanceUID', obj.SOPInstanceUID)}.dcm")
        buffer = io.BytesIO()
        obj.save_as(buffer, enforce_file_format=True)
        write_durably(path, buffer.getvalue())
        self.store.add_result(study_uid, kind.lower(), str(path), {
            "model": info["name"], "version": info["version"], "sop_instance_uid": obj.SOPInstanceUID,
            **summary, "findings": summary_of(findings)})
        for destination, kinds in self.destinations.items():
            if kind.lower() in kinds:
                self.outbox.enqueue(f"dicom:{obj.SOPInstanceUID}:{destination}", DICOM_KIND, destination,
                                    {"paths": [str(path)]})
        return path

    def fhir(self, findings: list[Finding], source, sr_sop_instance_uid: str | None = None) -> str:
        """The DiagnosticReport and Observations of ``findings``, to the FHIR server through the
        outbox or into the store; returns the report's URL (absolute on the FHIR server, else the
        path of the local FHIR API)."""
        resources = build_report_resources(findings, source, self.identity, sr_sop_instance_uid=sr_sop_instance_uid)
        report = f"{resources[0]['resourceType']}/{resources[0]['id']}"
        if self.fhir_base_url is None:
            self.store.put_resources(resources)
            return f"/fhir/{report}"
        bundle = transaction_bundle(resources, self.fhir_base_url)
        self.outbox.enqueue(f"fhir:bundle:{bundle['id']}", FHIR_KIND, self.fhir_base_url, bundle)
        return f"{self.fhir_base_url.rstrip('/')}/{report}"

    def hl7(self, findings: list[Finding], source, info: dict[str, Any]) -> list[str]:
        """Queue the ORU^R01 of ``findings`` (one model version about the study of ``source``) for
        each HL7 destination that takes the model; returns the MSH-10 of each message queued."""
        cfg, queued = self.hl7_config, []
        made = now()  # MSH-7 of every copy; a message queued once is never rebuilt
        sources = sorted({s.sop_instance_uid for f in findings for s in f.sources})
        for dest in cfg.destinations:
            if dest.models is not None and info["name"] not in dest.models:
                continue
            header = MessageHeader(cfg.application, cfg.facility, dest.receiving_application,
                                   dest.receiving_facility, cfg.processing_id)
            message_id = control_id(findings[0].source.study_uid, info["name"], info["version"], dest.name,
                                    sources)
            message = build_oru(findings, source, header, message_id, made, cfg.issuer_identifier_types)
            self.outbox.enqueue(f"hl7:{dest.name}:{message_id}", HL7_KIND, dest.name,
                                {"message": message, "control_id": message_id})
            queued.append(message_id)
        return queued

    def image(self, ds, finding: Finding, info: dict[str, Any], spec: ServingSpec,
              objects: tuple[str, ...] = STUDY_IMAGE_OBJECTS, **summary: Any) -> dict[str, Path]:
        """The DICOM objects among ``objects`` that ``spec`` yields for one finding about 2D image
        ``ds`` (its SR, its overlay); result kind (``sr``, ``sc``) -> path."""
        study_uid = check_uid("StudyInstanceUID", ds.StudyInstanceUID)
        paths = {}
        if spec.yields("sr") and "sr" in objects:
            paths["sr"] = self.dicom(study_uid, "SR", self.sr([finding], ds, info, seed=ds.SOPInstanceUID),
                                     info, [finding], **summary)
        if spec.yields("sc") and "sc" in objects:
            sc = build_overlay(ds, [finding], series_number=OVERLAY_SERIES_NUMBER,
                               series_instance_uid=result_uid(study_uid, info["name"], info["version"], "sc"),
                               sop_instance_uid=result_uid(ds.SOPInstanceUID, info["name"], info["version"], "sc"))
            paths["sc"] = self.dicom(study_uid, "SC", sc, info, [finding], **summary)
        if spec.yields("gsps") and "gsps" in objects:
            gsps = build_presentation_state(  # None for a colour image, which a GSPS cannot present
                [finding], ds, series_number=PRESENTATION_SERIES_NUMBER,
                series_instance_uid=result_uid(study_uid, info["name"], info["version"], "gsps"),
                sop_instance_uid=result_uid(ds.SOPInstanceUID, info["name"], info["version"], "gsps"))
            if gsps is not None:
                paths["gsps"] = self.dicom(study_uid, "GSPS", gsps, info, [finding], **summary)
        return paths

    def upload(self, ds, finding: Finding, info: dict[str, Any], spec: ServingSpec,
               inputs: dict[str, float] | None = None) -> dict[str, str]:
        """The results of an uploaded DICOM image (:data:`UPLOAD_OBJECTS` and the FHIR report),
        written, recorded and queued as a pipeline study's are; returns links: each DICOM object's
        ``/v1/results/<study>/<file>`` and the DiagnosticReport's URL (``fhir``).  ``inputs``: the
        model input's features (:func:`models.reference.image_features`), recorded for monitoring."""
        study_uid = check_uid("StudyInstanceUID", ds.StudyInstanceUID)
        extra = {"inputs": inputs} if inputs else {}
        paths = self.image(ds, finding, info, spec, UPLOAD_OBJECTS, source="upload", **extra)
        links = {kind: f"/v1/results/{study_uid}/{path.name}" for kind, path in paths.items()}
        if spec.yields("fhir"):
            links["fhir"] = self.fhir([finding], ds, sr_uid(ds.SOPInstanceUID, info) if "sr" in paths else None)
        self.hl7([finding], ds, info)
        return links
