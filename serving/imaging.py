"""The imaging path after study completion: model inference, findings, SR, delivery.

One worker thread takes complete studies from a queue, sends each routed image to its model
deployment (all images of a study concurrently, so the deployment can batch them), turns the
replies into :class:`~models.finding.Finding` objects, writes a TID 1500 SR to the result store
and queues it for the PACS destination through the outbox.  Studies left ``complete`` by a crash
are resubmitted at start.  Each SR's UIDs derive from its source image and the model version, so
reprocessing a study replaces its SRs instead of adding more.
"""
from __future__ import annotations

import io
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_gateway.pixels import model_input
from dicom_gateway.routing import DEFAULT_RULES, route
from dicom_gateway.sr import build_measurement_report
from dicom_gateway.storage import write_durably
from models.finding import Concept, Finding, SourceImage
from models.transforms import heatmap_peak

log = logging.getLogger("medgate.imaging")


class ImagingPipeline:
    """Process complete studies.

    Parameters
    ----------
    store, outbox
        Local store and delivery outbox.
    handles
        Model name -> Ray Serve deployment handle (``.remote(image)`` and ``.info.remote()``).
    results_dir
        Where result objects are written (``<results_dir>/<study>/...``).
    pacs_destination
        Outbox destination name for results, or None to keep them locally only.
    """

    def __init__(self, store, outbox, handles: dict[str, Any], results_dir: Path,
                 pacs_destination: str | None = None, timeout_s: float = 60.0) -> None:
        self.store, self.outbox, self.handles = store, outbox, handles
        self.results_dir = Path(results_dir)
        self.pacs_destination = pacs_destination
        self.timeout_s = timeout_s
        self._info: dict[str, dict] = {}
        self._queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="medgate-imaging", daemon=True)

    def start(self) -> None:
        for model in self.handles:
            self.model_info(model)  # fail fast at start, and no first-study penalty
        self._thread.start()
        for study in self.store.studies_with_status("complete"):
            row = self.store.study(study)
            log.info("study %s: resuming after restart", study)
            self.submit(study, row["route"])

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s)

    def submit(self, study_uid: str, model: str) -> None:
        self._queue.put((study_uid, model))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            study, model = item
            try:
                self.process(study, model)
            except Exception as exc:  # noqa: BLE001 - the study fails, the pipeline goes on
                log.exception("study %s: processing failed", study)
                self.store.set_study_status(study, "failed", detail=f"{type(exc).__name__}: {exc}")

    def model_info(self, model: str) -> dict:
        if model not in self._info:
            self._info[model] = self.handles[model].info.remote().result(timeout_s=self.timeout_s)
        return self._info[model]

    def process(self, study_uid: str, model: str) -> list[Path]:
        """Run ``model`` on every routed image of the study; returns the paths of the SRs."""
        start = time.perf_counter()
        info = self.model_info(model)
        datasets = [dcmread(row["path"]) for row in self.store.instances_of(study_uid)]
        datasets = [ds for ds in datasets if route(ds, DEFAULT_RULES) == model]
        if not datasets:
            raise ValueError(f"study {study_uid} has no image routed to {model!r}")
        handle = self.handles[model]
        pending = [handle.remote(model_input(ds, info["input_size_px"])) for ds in datasets]
        replies = [p.result(timeout_s=self.timeout_s) for p in pending]
        paths = []
        for ds, reply in zip(datasets, replies):
            finding = self._finding(ds, reply, info)
            paths.append(self._write_sr(study_uid, ds, finding, info))
        elapsed_ms = (time.perf_counter() - start) * 1000
        self.store.set_study_status(study_uid, "done", detail=f"{len(paths)} SR")
        log.info("study %s: %s@%s p=%s in %.0f ms", study_uid, info["name"], info["version"],
                 [round(r["probability"], 3) for r in replies], elapsed_ms)
        return paths

    def _write_sr(self, study_uid: str, ds, finding: Finding, info: dict) -> Path:
        """Write, record and queue for delivery the SR of one finding about image ``ds``."""
        seed = [ds.SOPInstanceUID, info["name"], info["version"]]
        sr = build_measurement_report(
            [finding], ds, algorithm_name=f"medgate-{info['name']}", algorithm_version=info["version"],
            series_instance_uid=generate_uid(entropy_srcs=[study_uid, info["name"], info["version"]]),
            sop_instance_uid=generate_uid(entropy_srcs=seed))
        path = self.results_dir / study_uid / f"SR-{sr.SOPInstanceUID}.dcm"
        buffer = io.BytesIO()
        sr.save_as(buffer, enforce_file_format=True)
        write_durably(path, buffer.getvalue())
        summary = {"model": info["name"], "version": info["version"], "sop_instance_uid": sr.SOPInstanceUID,
                   "findings": [{"probability": finding.probability, "positive": finding.positive,
                                 "point": finding.point, "source": finding.source.sop_instance_uid}]}
        self.store.add_result(study_uid, "sr", str(path), summary)
        if self.pacs_destination:
            self.outbox.enqueue(f"dicom:{sr.SOPInstanceUID}:{self.pacs_destination}", "dicom",
                                self.pacs_destination, {"paths": [str(path)]})
        return path

    @staticmethod
    def _finding(ds, reply: dict, info: dict) -> Finding:
        source = SourceImage(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                             sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                             rows=int(ds.Rows), columns=int(ds.Columns))
        point = heatmap_peak(reply["heatmap"], source.rows, source.columns)
        return Finding(model=info["name"], model_version=info["version"], code=Concept(**info["finding"]),
                       probability=min(max(reply["probability"], 0.0), 1.0),
                       threshold=info["threshold"], source=source, point=point)
