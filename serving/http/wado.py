"""WADO-RS: retrieve studies, series, instances and their metadata (PS3.18 10.4, Retrieve Transaction).

Routes (under :data:`serving.http.dicomweb.BASE_PATH`):

- ``/studies/{study}``, ``/studies/{study}/series/{series}``,
  ``/studies/{study}/series/{series}/instances/{instance}``: the objects as ``multipart/related;
  type="application/dicom"``, one Part 10 file per part, each in the transfer syntax it is stored in
  (named in the part's ``transfer-syntax`` parameter; PS3.18 8.7.3.5).  No transcoding: an
  ``Accept`` that names only other transfer syntaxes, or no multipart DICOM at all, is 406.
- the same paths with ``/metadata``: ``application/dicom+json`` (PS3.18 F.2), one object per
  instance, read from its file with bulk data (Pixel Data and the other binary values) left out.
- ``/studies/{study}/series/{series}/instances/{instance}/frames/{list}`` (PS3.18 10.4.1.1.3,
  8.7.4): the frames named by ``list`` (1-based, comma-separated, each 1..Number of Frames: 400 for
  one that is not a positive number, 404 for one past the last) as ``multipart/related``, one frame
  per part.  Native (uncompressed) pixel data is ``application/octet-stream`` in Explicit VR Little
  Endian (big endian data swapped, single-bit frames repacked to start on a byte); a frame stored
  compressed goes as it is stored, in its own media type (``image/jpeg``, ``image/jls``,
  ``image/jp2``, ... with the ``transfer-syntax`` parameter; PS3.18 Table 8.7.3-5) when the
  ``Accept`` allows it: that type with the stored syntax or none named, ``transfer-syntax=*``, or
  any multipart.  Frames are not transcoded: anything else is 406.

The objects are the received instances and medgate's result objects (SR, SEG, SC, GSPS) as indexed
by :mod:`serving.http.dicomweb_index`.  A study, series or instance with none: 404.
"""
from __future__ import annotations

import logging
import re
import uuid
from typing import Callable, Iterator, NamedTuple

import numpy as np

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydicom import dcmread
from pydicom.encaps import generate_frames
from starlette.concurrency import run_in_threadpool

from dicom_gateway.store import IndexedObject, Match
from serving.http import dicomweb_index
from serving.http.context import current
from serving.http.dicomweb import (BASE_PATH, HTTP_BAD_REQUEST, HTTP_NOT_ACCEPTABLE, HTTP_NOT_FOUND, DicomwebError,
                                   audit, check_uids, dicom_json_response, error_response, outcome_of, refused)
from serving.store import Store

router = APIRouter()
log = logging.getLogger("medgate.dicom")

#: Bytes read from a file per chunk of the multipart body.
CHUNK_BYTES = 1024 * 1024
#: The media type of a Part 10 file (PS3.18 8.7.3.5).
APPLICATION_DICOM = "application/dicom"
#: ``transfer-syntax=*``: any transfer syntax (PS3.18 8.7.3.5.2).
ANY_TRANSFER_SYNTAX = "*"
#: The media type of uncompressed frames, and the transfer syntax they are sent in (PS3.18 8.7.3.3.2).
OCTET_STREAM = "application/octet-stream"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: Transfer syntaxes whose pixel data is native (PS3.5 A.1-A.5; deflate is undone on reading).
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99",
                             "1.2.840.10008.1.2.2"})
BIG_ENDIAN, DEFLATED = "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"
#: Pixel Data longer than this is left in the file when a frame is read (pydicom's ``defer_size``).
DEFER_BYTES = 256 * 1024
#: The media type of a compressed frame by its transfer syntax (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: One frame number of a frame list (PS3.18 8.3.1.2: a positive integer).
FRAME_NUMBER = re.compile(r"[1-9][0-9]{0,8}")


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


class Frames(NamedTuple):
    """Frames of one instance as they are sent: their media type, transfer syntax and bytes."""

    media_type: str
    transfer_syntax_uid: str
    data: list[bytes]


def frame_numbers(frame_list: str) -> list[int]:
    """The 1-based frame numbers of the path's ``{frames}`` (PS3.18 10.4.1.1.3); 400 naming the
    first that is not a positive integer."""
    numbers = []
    for item in frame_list.split(","):
        if not FRAME_NUMBER.fullmatch(item.strip()):
            raise DicomwebError(HTTP_BAD_REQUEST, f"a frame list is positive frame numbers separated by commas "
                                                  f"(PS3.18 8.3.1.2), {item[:40]!r} is given in {frame_list[:80]!r}")
        numbers.append(int(item))
    return numbers


def _native_frames(read: Callable[[int, int], bytes], ds, numbers: list[int], big_endian: bool) -> list[bytes]:
    """Frames ``numbers`` (1-based) of native pixel data, little endian, each starting on a byte;
    ``read(offset, length)`` reads the Pixel Data value."""
    samples = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.BitsAllocated)
    frames = []
    for number in numbers:
        if bits == 1:  # PS3.5 8.1.1: frames of single bits follow each other without padding
            first_bit = (number - 1) * samples
            chunk = read(first_bit // 8, (first_bit + samples + 7) // 8 - first_bit // 8)
            bits_of = np.unpackbits(np.frombuffer(chunk, np.uint8), bitorder="little")
            frames.append(np.packbits(bits_of[first_bit % 8:first_bit % 8 + samples], bitorder="little").tobytes())
            continue
        size = samples * bits // 8
        frame = read((number - 1) * size, size)
        if big_endian and bits > 8:
            frame = np.frombuffer(frame, f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
        frames.append(frame)
    return frames


def read_frames(path: str, numbers: list[int]) -> Frames:
    """The frames ``numbers`` (1-based) of the instance at ``path`` as they are sent; 404 when it
    holds no pixel data or one number is past its Number of Frames (0028,0008).  Native Pixel Data
    over :data:`DEFER_BYTES` is not read whole: each frame is read at its offset in the file (a
    viewer asks for a multi-frame image's frames one request each)."""
    ds = dcmread(path, defer_size=DEFER_BYTES)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    if syntax == DEFLATED:  # offsets are in the inflated stream, not in the file
        ds = dcmread(path)
    element = ds.get_item("PixelData", keep_deferred=True)
    if element is None:
        raise DicomwebError(HTTP_NOT_FOUND, f"instance {ds.SOPInstanceUID} holds no Pixel Data (7FE0,0010), "
                                            f"so no frames (a {ds.get('Modality', '')} object)")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if past := [n for n in numbers if n > count]:
        raise DicomwebError(HTTP_NOT_FOUND, f"instance {ds.SOPInstanceUID} has {count} frames (Number of Frames, "
                                            f"0028,0008), frames {past[:10]} are asked for")
    if syntax in NATIVE_SYNTAXES:
        if element.value is not None:  # read with the header (small, or inflated)
            value = element.value
            return Frames(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN, _native_frames(
                lambda offset, length: value[offset:offset + length], ds, numbers, syntax == BIG_ENDIAN))
        with open(path, "rb") as handle:
            def read(offset: int, length: int) -> bytes:
                handle.seek(element.value_tell + offset)
                return handle.read(length)
            return Frames(OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN,
                          _native_frames(read, ds, numbers, syntax == BIG_ENDIAN))
    media = FRAME_MEDIA_TYPES.get(syntax)
    if media is None:
        raise DicomwebError(HTTP_NOT_ACCEPTABLE, f"instance {ds.SOPInstanceUID} is stored in transfer syntax "
                                                 f"{syntax or '(none)'}, which has no frame media type "
                                                 f"(PS3.18 Table 8.7.3-5)")
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    return Frames(media, syntax, [stored[n - 1] for n in numbers])


def frames_acceptable(accept: str | None, media_type: str, transfer_syntax_uid: str) -> bool:
    """Whether ``Accept`` allows frames of ``media_type`` in ``transfer_syntax_uid`` (PS3.18 8.7.3.5):
    no header, ``*/*``, any multipart, that multipart type with the syntax or none named, or
    ``transfer-syntax=*``."""
    if not accept:
        return True
    for entry in accept.split(","):
        media, *parameters = [p.strip() for p in entry.split(";")]
        params = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in parameters)}
        media, kind = media.lower(), params.get("type", "").lower()
        syntax = params.get("transfer-syntax")
        if media in ("*/*", "multipart/*") or (media == "multipart/related" and not kind):
            return True
        if media == "multipart/related" and (syntax == ANY_TRANSFER_SYNTAX or (
                kind == media_type and syntax in (None, transfer_syntax_uid))):
            return True
    return False


def _frame_parts(frames: Frames, boundary: str) -> Iterator[bytes]:
    media = f"{frames.media_type}; transfer-syntax={frames.transfer_syntax_uid}"
    for data in frames.data:
        yield f"--{boundary}\r\nContent-Type: {media}\r\n\r\n".encode("ascii")
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series/{{series_uid}}/instances/{{sop_instance_uid}}/frames/"
            f"{{frame_list}}")
async def retrieve_frames(study_uid: str, series_uid: str, sop_instance_uid: str, frame_list: str,
                          request: Request) -> Response:
    """WADO-RS Retrieve Frames (PS3.18 10.4.1.1.3): see the module docstring."""
    ctx = current()
    if (refusal := refused(ctx, request, study_uid, "read")) is not None:
        return refusal
    accept = request.headers.get("accept")
    try:
        check_uids(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID=sop_instance_uid)
        numbers = frame_numbers(frame_list)
        objects = await run_in_threadpool(objects_of, ctx.store(), study_uid, series_uid, sop_instance_uid)
        if not objects:
            raise DicomwebError(HTTP_NOT_FOUND, f"no DICOM object is held for {request.url.path[:200]}")
        frames = await run_in_threadpool(read_frames, objects[0].path, numbers)
        if not frames_acceptable(accept, frames.media_type, frames.transfer_syntax_uid):
            raise DicomwebError(HTTP_NOT_ACCEPTABLE, f"the frames are {frames.media_type} in transfer syntax "
                                                     f"{frames.transfer_syntax_uid} and are not transcoded; "
                                                     f"Accept {(accept or '')[:200]!r} is given")
    except DicomwebError as exc:
        await audit(ctx, request, "read", outcome_of(exc.status), study_uid,
                    f"frames: HTTP {exc.status}: {exc.reason[:200]}")
        return error_response(exc)
    except Exception as exc:  # noqa: BLE001 - gone since it was indexed, or unreadable: as if not held
        log.warning("WADO-RS frames: %s cannot be read: %s: %s", objects[0].path, type(exc).__name__, exc)
        await audit(ctx, request, "read", "not-found", study_uid,
                    f"frames: HTTP 404: the file cannot be read ({type(exc).__name__})")
        return error_response(DicomwebError(HTTP_NOT_FOUND, f"no readable DICOM object is held for "
                                                            f"{request.url.path[:200]}"))
    await audit(ctx, request, "read", "success", study_uid,
                f"frames {frame_list[:100]} of {sop_instance_uid} ({frames.media_type})")
    boundary = uuid.uuid4().hex
    return StreamingResponse(_frame_parts(frames, boundary), media_type=(
        f'multipart/related; type="{frames.media_type}"; boundary={boundary}'))


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
