"""Accepting one received instance, whatever brought it (C-STORE or STOW-RS): check, store, record.

:meth:`Intake.accept` is the single path from a decoded dataset to a durable, recorded instance:
SOP class, UIDs, free-space watermark, routing, whether each routed model can read the instance
(:class:`dicom_gateway.pixels.ImageInput`, from the model's metadata: a colour model is not sent a
MONOCHROME image, a 2D model not a multi-frame one), a pixel decode check for routed instances (with
the palette tables checked against their descriptors, :func:`dicom_gateway.header.palette_problem`), the
series geometry check for volume modalities, then the durable spool write and one store
transaction.  It returns a named status (PS3.4 B.2.3) and the reason, never raises for bad input.
Its log lines carry the Study Instance UID as correlation id (:mod:`kernel.correlation`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from pydicom import Dataset, dcmread
from pydicom import uid as sop
from pynetdicom import sop_class as sc

from dicom_gateway import ledger
from dicom_gateway.config import DicomConfig
from dicom_gateway.header import palette_problem
from dicom_gateway.pixels import ImageInput, PixelDataError, check_decodable
from dicom_gateway.retention import below_watermark
from dicom_gateway.routing import SINGLE_IMAGE_MODALITIES, VOLUME_MODALITIES, Rule, routes
from dicom_gateway.status import StoreStatus
from dicom_gateway.storage import PRIVATE_DIR_MODE, DirectWriter, instance_path
from dicom_gateway.uids import check_uid
from kernel.correlation import bind, reset
from models.registry import ModelNotFoundError, ModelRegistry

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the constructor's defaults

log = logging.getLogger("medgate.dicom")

#: Storage SOP classes a medgate model can use (PS3.4 Annex B.5).
STORAGE_SOP_CLASSES = (
    sc.ComputedRadiographyImageStorage,
    sc.DigitalXRayImageStorageForPresentation,
    sc.DigitalXRayImageStorageForProcessing,
    sc.CTImageStorage,
    sc.EnhancedCTImageStorage,
    sc.MRImageStorage,
    sc.EnhancedMRImageStorage,
    sc.VLPhotographicImageStorage,
    sop.VideoPhotographicImageStorage,
    sop.DermoscopicPhotographyImageStorage,
    sop.VLMicroscopicImageStorage,
    sc.VLWholeSlideMicroscopyImageStorage,
    sc.SecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    sc.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    sc.MultiFrameTrueColorSecondaryCaptureImageStorage,
)
SUPPORTED_SOP_CLASSES = frozenset(str(uid) for uid in STORAGE_SOP_CLASSES)
#: Refusals the sender is expected to retry (PS3.4 B.2.3 Refused: Out of Resources); not shown as
#: ``refused`` studies.
TRANSIENT_STATUSES = frozenset({StoreStatus.OUT_OF_RESOURCES})
GROUP_BY = ("study", "series")


def expected_count(ds: Dataset, group_by: str) -> int | None:
    """The number of instances the group announces, if any (see :mod:`dicom_gateway.completion`)."""
    keywords = (("NumberOfStudyRelatedInstances",) if group_by == "study"
                else ("NumberOfSeriesRelatedInstances", "ImagesInAcquisition"))
    for keyword in keywords:
        try:
            value = int(ds.get(keyword) or 0)
        except (TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


@lru_cache(maxsize=64)
def registered_image_input(model: str) -> ImageInput | None:
    """The image input of the newest registered version of ``model`` (:class:`models.registry.ModelRegistry`);
    None when the registry has no such model or its input is not an image.  The versions of one model
    read the same kind of image: a change of channels or dimensions is a new model."""
    try:
        manifest = ModelRegistry().get(model)
    except (ModelNotFoundError, ValueError):
        return None
    spec = next(iter(manifest.raw["network_data_format"]["inputs"].values()))
    return ImageInput.from_spec(spec)


def _study_uid(ds: Dataset) -> str | None:
    """The Study Instance UID as the correlation id, or None when it cannot be read."""
    try:
        return str(ds.StudyInstanceUID).strip() or None
    except Exception:  # noqa: BLE001 - a broken dataset is refused later, with its reason
        return None


class PendingWrite(Protocol):
    """An instance's bytes on their way to disk (:class:`dicom_gateway.storage.DirectWrite`,
    :class:`dicom_gateway.slots.SlotWrite`)."""

    def commit(self, path: Path) -> None:
        """Make the instance durable at ``path``; raises OSError when it cannot."""

    def abandon(self) -> None:
        """The instance was refused; a no-op after :meth:`commit`."""


@dataclass(frozen=True)
class Accepted:
    """The outcome of :meth:`Intake.accept`: status, group, whether a new instance announced a count,
    reason; with ``defer_record``, the ``arrival`` whose row the caller commits (and ``counted`` is
    unknown until then; see :meth:`Intake.accept`)."""

    status: StoreStatus
    group_uid: str | None = None
    counted: bool = False
    reason: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    arrival: ledger.Arrival | None = None


class Intake:
    """Checks and stores received instances into ``spool`` and ``store``.  ``writer.begin(buffers,
    transfer_syntax)`` starts an instance's write (default: :class:`DirectWriter`, the classic
    temp file, fsync, rename; the SCP uses :class:`dicom_gateway.slots.SlotPool`).  What each
    routed model reads is its registered metadata's (:func:`registered_image_input`)."""

    def __init__(self, store, spool: Path, rules: tuple[Rule, ...], *, group_by: str = _DICOM.completion.group_by,
                 min_free_bytes: int = _DICOM.storage.min_free_bytes, writer=None) -> None:
        if group_by not in GROUP_BY:
            raise ValueError(f"`group_by` must be one of {GROUP_BY}, {group_by!r} is given.")
        self.store, self.spool, self.rules = store, Path(spool), rules
        self.group_by = group_by
        self.min_free_bytes = int(min_free_bytes)
        self.writer = writer or DirectWriter()
        self._first_geometry: dict[str, tuple[int, int, str]] = {}
        ledger.ensure_schema(store)

    def accept(self, ds: Dataset, write: PendingWrite, calling_ae: str, called_ae: str,
               context_sop_class: str | None = None, defer_record: bool = False) -> Accepted:
        """Check ``ds``, then commit ``write`` (its Part 10 bytes, begun by :attr:`writer`) before
        returning success; a refused instance's write is abandoned.

        The instance's row is committed before returning, or, with ``defer_record``, left to the
        caller (``Accepted.arrival``, for :meth:`record`): the spool file is already the durable
        record, and a row lost to a crash is made again from it at start (:meth:`recover`)."""
        token = bind(_study_uid(ds))
        try:
            return self._accept(ds, write, calling_ae, called_ae, context_sop_class, defer_record)
        finally:
            write.abandon()
            reset(token)

    def _accept(self, ds: Dataset, write: PendingWrite, calling_ae: str, called_ae: str,
                context_sop_class: str | None, defer_record: bool) -> Accepted:
        try:
            sop_class = check_uid("SOPClassUID", ds.SOPClassUID)
            sop_instance = check_uid("SOPInstanceUID", ds.SOPInstanceUID)
            study = check_uid("StudyInstanceUID", ds.StudyInstanceUID)
            series = check_uid("SeriesInstanceUID", ds.SeriesInstanceUID)
            modality = str(ds.get("Modality", "")).upper()
            rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
            orientation = [float(v) for v in ds.get("ImageOrientationPatient") or ()]
        except Exception as exc:  # noqa: BLE001 - any decode failure is "cannot understand"
            return self._refuse(StoreStatus.CANNOT_UNDERSTAND, f"cannot decode dataset: {exc}", calling_ae)
        ids = {"sop_class_uid": sop_class, "sop_instance_uid": sop_instance}
        if sop_class not in SUPPORTED_SOP_CLASSES:
            return self._refuse(StoreStatus.SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not supported",
                                calling_ae, study, **ids)
        if context_sop_class is not None and sop_class != context_sop_class:
            return self._refuse(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                f"SOP class {sop_class} differs from the context's {context_sop_class}",
                                calling_ae, study, **ids)
        full = below_watermark(self.spool, self.min_free_bytes)
        if full is not None:
            return self._refuse(StoreStatus.OUT_OF_RESOURCES, full, calling_ae, study, **ids)
        models = routes(ds, self.rules, calling_ae, called_ae)
        if models:
            unreadable = self._unreadable(ds, models)
            if unreadable is not None:
                return self._refuse(StoreStatus.NOT_READABLE_BY_MODEL, unreadable, calling_ae, study, **ids)
            try:
                check_decodable(ds)
            except PixelDataError as exc:
                return self._refuse(StoreStatus.CANNOT_UNDERSTAND, str(exc), calling_ae, study, **ids)
            palette = palette_problem(ds)  # the C-STORE header too, which check_decodable cannot apply
            if palette is not None:
                return self._refuse(StoreStatus.CANNOT_UNDERSTAND, palette, calling_ae, study, **ids)
        if modality in VOLUME_MODALITIES and rows and len(orientation) == 6:
            try:
                mismatch = self._geometry_mismatch(series, rows, columns, orientation)
            except Exception as exc:  # noqa: BLE001 - the database: refused, the sender sends it again
                return self._refuse(StoreStatus.OUT_OF_RESOURCES, f"database unavailable: {exc}", calling_ae,
                                    study, **ids)
            if mismatch is not None:
                return self._refuse(StoreStatus.CANNOT_UNDERSTAND, mismatch, calling_ae, study, **ids)
        try:
            path = instance_path(self.spool, study, sop_instance)
            write.commit(path)
        except Exception as exc:  # noqa: BLE001 - disk: nothing was acknowledged
            log.error("instance %s (study %s): cannot persist: %s", sop_instance, study, exc)
            return Accepted(StoreStatus.OUT_OF_RESOURCES, reason=f"cannot persist: {exc}", **ids)
        arrival = self._arrival(ds, path, calling_ae, models)
        if defer_record:
            return Accepted(StoreStatus.SUCCESS, group_uid=arrival.group_uid, arrival=arrival, **ids)
        try:
            new, = self.record([arrival])
        except Exception as exc:  # noqa: BLE001 - database: the file is recorded again at start
            return Accepted(StoreStatus.OUT_OF_RESOURCES, reason=f"cannot record: {exc}", **ids)
        return Accepted(StoreStatus.SUCCESS, group_uid=arrival.group_uid,
                        counted=bool(new and arrival.expected_count), **ids)

    @staticmethod
    def _unreadable(ds: Dataset, models: tuple[str, ...]) -> str | None:
        """Why one of the routed ``models`` cannot read ``ds`` (the first that cannot, named), or None."""
        for model in models:
            image_input = registered_image_input(model)
            problem = image_input.problem(ds) if image_input is not None else None
            if problem is not None:
                return f"routed to {model}, which cannot read it: {problem}"
        return None

    def _geometry_mismatch(self, series: str, rows: int, columns: int, orientation: list[float]) -> str | None:
        """The series geometry check; the first slice's geometry, once read, is kept in memory
        (it never changes: the first slice defines it)."""
        shown = ledger.orientation_text(orientation)
        first = self._first_geometry.get(series)
        if first is None:
            if len(self._first_geometry) >= 4096:
                self._first_geometry.clear()
            first = self._first_geometry[series] = ledger.first_geometry(self.store, series, rows, columns, shown)
        return ledger.geometry_mismatch(first, rows, columns, shown)

    def _arrival(self, ds: Dataset, path: Path, calling_ae: str, models: tuple[str, ...]) -> ledger.Arrival:
        """The row of the durable file ``path`` of ``ds``."""
        modality = str(ds.get("Modality", "")).upper()
        return ledger.Arrival(
            sop_instance_uid=str(ds.SOPInstanceUID), study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID), sop_class_uid=str(ds.SOPClassUID), modality=modality,
            path=str(path), calling_ae=calling_ae,
            group_uid=str(ds.StudyInstanceUID if self.group_by == "study" else ds.SeriesInstanceUID),
            models=models, expected_count=expected_count(ds, self.group_by),
            single_image=modality in SINGLE_IMAGE_MODALITIES)

    def record(self, arrivals: list[ledger.Arrival]) -> list[bool]:
        """Commit the rows of durable instances, in one transaction; which were new (False: a
        duplicate)."""
        try:
            news = ledger.record_instances(self.store, arrivals)
        except Exception as exc:
            log.error("%d instance(s) stored, but their rows cannot be committed now (kept by the SCP and "
                      "committed when the database answers; recorded from the spool files at the next start "
                      "otherwise): %s", len(arrivals), exc)
            raise
        for arrival, new in zip(arrivals, news) if log.isEnabledFor(logging.DEBUG) else ():
            token = bind(arrival.study_uid)
            log.debug("stored %s%s (study %s, %s) from %s -> %s", arrival.sop_instance_uid,
                      "" if new else " (duplicate)", arrival.study_uid, arrival.modality or "?",
                      arrival.calling_ae, ", ".join(arrival.models) or "no model")
            reset(token)
        return news

    @property
    def quarantine(self) -> Path:
        """Where :meth:`recover` moves spool files it will not record: ``<spool>-quarantine``, next
        to the spool (``state_dir/spool-quarantine`` for the server)."""
        return self.spool.with_name(f"{self.spool.name}-quarantine")

    def recover(self, called_ae: str, older_than_s: float = 0.0) -> list[str]:
        """Record again the spool files whose rows were lost (see :func:`ledger.unrecorded_files`);
        returns their groups.  The sender is the file's Source Application Entity Title (0002,0016),
        which the SCP sets to the calling AE title.

        A file is recorded only when its Study, Series and SOP Instance and SOP Class UIDs are UIDs
        (PS3.5 9.1) and it lies where its own UIDs put it (:func:`dicom_gateway.storage.instance_path`):
        one planted in the spool under another study's folder, or holding a UID that is not one, is
        moved to :attr:`quarantine` with a log line, never recorded as a study."""
        groups = []
        for path in ledger.unrecorded_files(self.store, self.spool, older_than_s):
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception as exc:  # noqa: BLE001 - keep the file, say why, go on with the others
                log.error("spool file %s cannot be recorded again: %s", path, exc)
                continue
            misplaced = self._misplaced(ds, path)
            if misplaced is not None:
                self._quarantine(path, misplaced)
                continue
            try:
                calling_ae = str(ds.file_meta.get("SourceApplicationEntityTitle", "")).strip()
                arrival = self._arrival(ds, path, calling_ae, routes(ds, self.rules, calling_ae, called_ae))
                self.record([arrival])
                group = arrival.group_uid
            except Exception as exc:  # noqa: BLE001 - keep the file, say why, go on with the others
                log.error("spool file %s cannot be recorded again: %s", path, exc)
                continue
            groups.append(group)
        if groups:
            log.warning("recorded %d spool file(s) whose database rows were lost", len(groups))
        return sorted(set(groups))

    def _misplaced(self, ds: Dataset, path: Path) -> str | None:
        """Why the spool file ``path`` holding ``ds`` is not where the gateway would have written it, or None."""
        try:
            for keyword in ("SOPClassUID", "SeriesInstanceUID"):
                check_uid(keyword, ds.get(keyword, ""))
            expected = instance_path(self.spool, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
        except (AttributeError, ValueError) as exc:  # a UID that is not one (uids.PathOutsideFolder too)
            return str(exc)
        if expected.resolve() != path.resolve():
            return f"its UIDs place it at {expected}, not at {path}"
        return None

    def _quarantine(self, path: Path, why: str) -> None:
        """Move the spool file ``path`` into :attr:`quarantine` (kept, for an operator), with a log line."""
        target = self.quarantine / path.parent.name / path.name
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
            os.replace(path, target)
        except OSError as exc:
            log.error("spool file %s is not recorded (%s) and cannot be moved to %s: %s", path, why,
                      self.quarantine, exc)
            return
        log.error("spool file %s is not recorded, moved to %s: %s", path, target, why)

    def _refuse(self, status: StoreStatus, reason: str, calling_ae: str, study: str | None = None,
                **ids: str) -> Accepted:
        """Log the refusal; with a checked ``study`` UID, show it on the worklist
        (:func:`ledger.record_refusal`), unless it is transient (Out of Resources: the sender retries)."""
        log.warning("instance %s from %s refused (0x%04X %s): %s", ids.get("sop_instance_uid", "?"),
                    calling_ae, status, status.name, reason)
        if study is not None and status not in TRANSIENT_STATUSES:
            try:
                ledger.record_refusal(self.store, ledger.Refusal(
                    study, ids.get("sop_instance_uid", ""), calling_ae, status, reason))
            except Exception as exc:  # noqa: BLE001 - the sender is still told; the log has it
                log.error("refusal of instance %s (study %s) not recorded on the worklist: %s",
                          ids.get("sop_instance_uid", "?"), study, exc)
        return Accepted(status, reason=reason, **ids)
