"""WADO-RS: retrieve studies, series, instances and their metadata (PS3.18 10.4, Retrieve Transaction).

Routes (under :data:`serving.http.dicomweb.BASE_PATH`):

- ``/studies/{study}``, ``/studies/{study}/series/{series}``,
  ``/studies/{study}/series/{series}/instances/{instance}``: the objects as ``multipart/related;
  type="application/dicom"``, one Part 10 file per part, each in the transfer syntax it is stored in
  (named in the part's ``transfer-syntax`` parameter; PS3.18 8.7.3.5).  No transcoding: an
  ``Accept`` that names only other transfer syntaxes, or no multipart DICOM at all, is 406.
- the same paths with ``/metadata``: ``application/dicom+json`` (PS3.18 F.2), one object per
  instance, read from its file with bulk data (Pixel Data and the other binary values) left out.

The objects are the received instances and medgate's result objects (SR, SEG, SC, GSPS) as indexed
by :mod:`serving.http.dicomweb_index`.  A study, series or instance with none: 404.
"""
from __future__ import annotations

import logging
import uuid
from typing import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from starlette.concurrency import run_in_threadpool

from dicom_gateway.store import IndexedObject, Match
from serving.http import dicomweb_index
from serving.http.context import current
from serving.http.dicomweb import (BASE_PATH, HTTP_NOT_ACCEPTABLE, HTTP_NOT_FOUND, DicomwebError, audit,
                                   check_uids, dicom_json_response, error_response, outcome_of, refused)
from serving.store import Store

router = APIRouter()
log = logging.getLogger("medgate.dicom")

#: Bytes read from a file per chunk of the multipart body.
CHUNK_BYTES = 1024 * 1024
#: The media type of a Part 10 file (PS3.18 8.7.3.5).
APPLICATION_DICOM = "application/dicom"
#: ``transfer-syntax=*``: any transfer syntax (PS3.18 8.7.3.5.2).
ANY_TRANSFER_SYNTAX = "*"


def acceptable_syntaxes(accept: str | None) -> frozenset[str] | None:
    """The transfer syntaxes the ``Accept`` header allows for multipart DICOM: None for any;
    :class:`DicomwebError` (406) when it accepts no ``multipart/related; type="application/dicom"``."""
    if not accept:
        return None
    syntaxes: set[str] = set()
    for entry in accept.split(","):
        media, *parameters = [p.strip() for p in entry.split(";")]
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parameters)}
        media = media.lower()
        if media in ("*/*", "multipart/*") or (
                media == "multipart/related" and params.get("type", APPLICATION_DICOM).lower() == APPLICATION_DICOM):
            syntax = params.get("transfer-syntax", ANY_TRANSFER_SYNTAX)
            if syntax == ANY_TRANSFER_SYNTAX:
                return None
            syntaxes.add(syntax)
    if not syntaxes:
        raise DicomwebError(HTTP_NOT_ACCEPTABLE, f'only multipart/related; type="application/dicom" is served, '
                                                 f"Accept {accept[:200]!r} is given")
    return frozenset(syntaxes)


def objects_of(store: Store, study_uid: str, series_uid: str | None,
               sop_instance_uid: str | None) -> list[IndexedObject]:
    """The indexed objects of the study (series, instance), with a readable header, in index order."""
    dicomweb_index.refresh(store)
    matches = [Match("study_uid", "single", (study_uid,))]
    if series_uid:
        matches.append(Match("series_uid", "single", (series_uid,)))
    if sop_instance_uid:
        matches.append(Match("sop_instance_uid", "single", (sop_instance_uid,)))
    return store.gateway.query_objects(matches)


def _multipart(paths: list[tuple[str, str | None]], boundary: str) -> Iterator[bytes]:
    """The multipart/related body of the files ``(path, transfer syntax)``; a file gone meanwhile
    is left out (logged)."""
    for path, syntax in paths:
        try:
            handle = open(path, "rb")
        except OSError as exc:
            log.warning("WADO-RS: %s left out: %s", path, exc)
            continue
        with handle:
            media = APPLICATION_DICOM + (f"; transfer-syntax={syntax}" if syntax else "")
            yield f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode("ascii")
            while chunk := handle.read(CHUNK_BYTES):
                yield chunk
            yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _metadata(objects: list[IndexedObject]) -> list[dict]:
    found = []
    for obj in objects:
        try:
            found.append(dicomweb_index.dicom_json(dcmread(obj.path, stop_before_pixels=True)))
        except Exception as exc:  # noqa: BLE001 - gone or unreadable: left out, logged
            log.warning("WADO-RS metadata: %s left out: %s: %s", obj.path, type(exc).__name__, exc)
    return found


async def _retrieve(request: Request, study_uid: str, series_uid: str | None = None,
                    sop_instance_uid: str | None = None, metadata: bool = False) -> Response:
    ctx = current()
    if (refusal := refused(ctx, request, study_uid, "read")) is not None:
        return refusal
    what = "metadata" if metadata else "instances"
    try:
        check_uids(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=sop_instance_uid)
        syntaxes = None if metadata else acceptable_syntaxes(request.headers.get("accept"))
        objects = await run_in_threadpool(objects_of, ctx.store(), study_uid, series_uid, sop_instance_uid)
        if not objects:
            raise DicomwebError(HTTP_NOT_FOUND, f"no DICOM object is held for {request.url.path[:200]}")
        stored = {obj.transfer_syntax_uid for obj in objects}
        if syntaxes is not None and not stored <= syntaxes:
            raise DicomwebError(HTTP_NOT_ACCEPTABLE, f"the objects are stored in {sorted(map(str, stored))} and "
                                                     f"are not transcoded; Accept names {sorted(syntaxes)}")
        body = await run_in_threadpool(_metadata, objects) if metadata else None
    except DicomwebError as exc:
        await audit(ctx, request, "read", outcome_of(exc.status), study_uid,
                    f"{what}: HTTP {exc.status}: {exc.reason[:200]}")
        return error_response(exc)
    await audit(ctx, request, "read", "success", study_uid, f"{what} of {len(objects)} objects")
    if body is not None:
        return dicom_json_response(body)
    boundary = uuid.uuid4().hex
    paths = [(obj.path, obj.transfer_syntax_uid) for obj in objects]
    return StreamingResponse(_multipart(paths, boundary), media_type=(
        f'multipart/related; type="{APPLICATION_DICOM}"; boundary={boundary}'))


@router.get(f"{BASE_PATH}/studies/{{study_uid}}")
async def retrieve_study(study_uid: str, request: Request) -> Response:
    return await _retrieve(request, study_uid)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/metadata")
async def retrieve_study_metadata(study_uid: str, request: Request) -> Response:
    return await _retrieve(request, study_uid, metadata=True)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series/{{series_uid}}")
async def retrieve_series(study_uid: str, series_uid: str, request: Request) -> Response:
    return await _retrieve(request, study_uid, series_uid)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series/{{series_uid}}/metadata")
async def retrieve_series_metadata(study_uid: str, series_uid: str, request: Request) -> Response:
    return await _retrieve(request, study_uid, series_uid, metadata=True)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series/{{series_uid}}/instances/{{sop_instance_uid}}")
async def retrieve_instance(study_uid: str, series_uid: str, sop_instance_uid: str, request: Request) -> Response:
    return await _retrieve(request, study_uid, series_uid, sop_instance_uid)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series/{{series_uid}}/instances/{{sop_instance_uid}}/metadata")
async def retrieve_instance_metadata(study_uid: str, series_uid: str, sop_instance_uid: str,
                                     request: Request) -> Response:
    return await _retrieve(request, study_uid, series_uid, sop_instance_uid, metadata=True)
