"""QIDO-RS: search for studies, series and instances (PS3.18 10.6, Search Transaction).

Routes (under :data:`serving.http.dicomweb.BASE_PATH`): ``/studies``, ``/studies/{study}/series``,
``/series``, ``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances`` and
``/instances``.  The objects searched are the received instances and medgate's result objects
(:mod:`serving.http.dicomweb_index`), matched in the gateway store's object index.

Query parameters (PS3.18 8.3.4):

- ``{attribute}={value}``: the attribute as a keyword (``PatientID``) or a tag (``00100020``); the
  matching keys are :data:`MATCH_KEYS` (PS3.18 Table 10.6.1-5 and a few more), each at its level or
  below.  Matching per PS3.4 C.2.2.2: single value; wildcard ``*`` ``?`` (Person Names ignore case);
  UID lists separated by ``,`` or ``\\``; a date or time range ``A-B``, ``A-``, ``-B``; an empty value
  is universal matching (the attribute is returned).  An attribute that is not a DICOM keyword or
  tag, not a matching key, or below the level searched: 400 naming it.
- ``includefield``: attributes to return beside the required ones (PS3.18 Tables 10.6.3-3, -4 and
  -5), comma-separated or repeated; ``all`` returns every indexed attribute of the levels answered.
- ``limit``, ``offset``: paging; without ``limit`` at most :data:`MAX_RESULTS` are returned, and a
  response cut short says so in a ``Warning: 299`` header (PS3.18 8.3.4.4).
- ``fuzzymatching``: ``false``; ``true`` is answered with literal matching and a ``Warning``.

Responses: 200 ``application/dicom+json`` (PS3.18 F.2), 204 when nothing matches, 400 for a bad query.
"""
from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from starlette.concurrency import run_in_threadpool

from dicom_gateway.store import Match
from serving.http import dicomweb_index
from serving.http.context import current
from serving.http.dicomweb import (BASE_PATH, HTTP_BAD_REQUEST, HTTP_NO_CONTENT, DicomwebError, audit,
                                   check_uids, dicom_json_response, error_response, outcome_of, refused,
                                   retrieve_path)
from serving.store import Store

router = APIRouter()

#: Results of one search without ``limit`` (and the most one ``limit`` may ask for).
MAX_RESULTS = 1000
#: Levels of the Query/Retrieve information model (PS3.4 C.6.1.1), top first.
LEVELS = ("STUDY", "SERIES", "IMAGE")
#: Instance Availability (0008,0056) of every indexed object (PS3.4 C.4.23.1.1): on disk here.
ONLINE = "ONLINE"
#: Warning header values (PS3.18 8.3.4.4 and 10.6.3.2).
FUZZY_WARNING = '299 medgate: The fuzzymatching parameter is not supported. Only literal matching has been performed.'
MORE_WARNING = '299 medgate: There are additional results that can be requested.'
#: Received instances are still being indexed (a database of before the index, a large backlog).
PENDING_WARNING = '299 medgate: Objects received are still being indexed; the results may be incomplete.'


class Key(NamedTuple):
    """A matching key: the index column, the level it belongs to and how its values are read."""

    column: str
    level: str
    kind: str  # uid | date | time | text | name | integer | modalities


#: Matching keys (PS3.18 Table 10.6.1-5, plus Patient's Birth Date, Sex and the descriptions).
MATCH_KEYS: dict[str, Key] = {
    "StudyDate": Key("study_date", "STUDY", "date"), "StudyTime": Key("study_time", "STUDY", "time"),
    "AccessionNumber": Key("accession_number", "STUDY", "text"),
    "ModalitiesInStudy": Key("modality", "STUDY", "modalities"),
    "ReferringPhysicianName": Key("referring_physician_name", "STUDY", "name"),
    "PatientName": Key("patient_name", "STUDY", "name"), "PatientID": Key("patient_id", "STUDY", "text"),
    "PatientBirthDate": Key("patient_birth_date", "STUDY", "date"), "PatientSex": Key("patient_sex", "STUDY", "text"),
    "StudyInstanceUID": Key("study_uid", "STUDY", "uid"), "StudyID": Key("study_id", "STUDY", "text"),
    "StudyDescription": Key("study_description", "STUDY", "text"),
    "Modality": Key("modality", "SERIES", "text"), "SeriesInstanceUID": Key("series_uid", "SERIES", "uid"),
    "SeriesNumber": Key("series_number", "SERIES", "integer"),
    "SeriesDescription": Key("series_description", "SERIES", "text"),
    "PerformedProcedureStepStartDate": Key("pps_start_date", "SERIES", "date"),
    "PerformedProcedureStepStartTime": Key("pps_start_time", "SERIES", "time"),
    "SOPClassUID": Key("sop_class_uid", "IMAGE", "uid"), "SOPInstanceUID": Key("sop_instance_uid", "IMAGE", "uid"),
    "InstanceNumber": Key("instance_number", "IMAGE", "integer"),
}


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(tag_for_keyword(k) for k in keywords)


#: Study-level attributes besides the Patient group (0010,xxxx): PS3.3 C.7.2.1 General Study and
#: C.7.2.2 Patient Study.
STUDY_ATTRIBUTES = _tags(
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence", "ReferencedStudySequence", "AdmittingDiagnosesDescription",
    "TimezoneOffsetFromUTC")
#: Series-level attributes: PS3.3 C.7.3.1 General Series, C.7.5.1 General Equipment, C.7.4.1 Frame of Reference.
SERIES_ATTRIBUTES = _tags(
    "Modality", "SeriesInstanceUID", "SeriesNumber", "Laterality", "SeriesDate", "SeriesTime",
    "PerformingPhysicianName", "ProtocolName", "SeriesDescription", "OperatorsName", "BodyPartExamined",
    "PatientPosition", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "RequestAttributesSequence",
    "Manufacturer", "InstitutionName", "StationName", "ManufacturerModelName", "FrameOfReferenceUID")
#: Required return attributes per level: PS3.18 Tables 10.6.3-3 (study), -4 (series), -5 (instance);
#: those computed here (counts, Modalities in Study, Retrieve URL, Instance Availability) are added apart.
REQUIRED = {
    "STUDY": _tags("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
                   "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID"),
    "SERIES": _tags("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "StudyInstanceUID"),
    "IMAGE": _tags("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "BitsAllocated",
                   "NumberOfFrames", "StudyInstanceUID", "SeriesInstanceUID"),
}
#: Returned when present only (PS3.18 Table 10.6.3-3 note: "if present").
IF_PRESENT = _tags("TimezoneOffsetFromUTC")
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")


def level_of(tag: int) -> str:
    """The level an attribute belongs to: the Patient group and :data:`STUDY_ATTRIBUTES` are the
    study's, :data:`SERIES_ATTRIBUTES` the series', everything else the instance's."""
    if tag >> 16 == 0x0010 or tag in STUDY_ATTRIBUTES:
        return "STUDY"
    return "SERIES" if tag in SERIES_ATTRIBUTES else "IMAGE"


def attribute_tag(name: str) -> int:
    """The tag of ``name`` (a keyword or eight hex digits); :class:`DicomwebError` (400) naming it
    when it is neither."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = int(name, 16)
        if keyword_for_tag(tag) or tag >> 16 & 1:  # a dictionary attribute, or a private one
            return tag
    elif (tag := tag_for_keyword(name)) is not None:
        return tag
    raise DicomwebError(HTTP_BAD_REQUEST, f"unknown query attribute {name[:80]!r}: give a DICOM keyword "
                                          "(PatientID) or a tag (00100020)")


class Search(NamedTuple):
    """A parsed query: matches, attributes to return (``None``: all), paging, warnings."""

    matches: list[Match]
    include: frozenset[int] | None
    limit: int
    offset: int
    warnings: list[str]


def _count(name: str, text: str) -> int:
    if not text.isdigit():
        raise DicomwebError(HTTP_BAD_REQUEST, f"{name} must be a whole number of at least 0, {text[:40]!r} is given")
    return int(text)


def _range(keyword: str, value: str, grammar: re.Pattern, form: str) -> tuple:
    """The bounds of a date or time ``value`` (one value, or a range ``A-B``, ``A-``, ``-B``)."""
    low, dash, high = value.partition("-")
    for bound in (low, high):
        if bound and not grammar.fullmatch(bound):
            raise DicomwebError(HTTP_BAD_REQUEST, f"{keyword} must be {form} or a range of them (A-B, A-, -B), "
                                                  f"{value[:80]!r} is given")
    if not dash:
        return (low,)
    if not low and not high:
        raise DicomwebError(HTTP_BAD_REQUEST, f"{keyword}: a range needs at least one end, {value!r} is given")
    return (low or None, high or None)


def key_match(keyword: str, key: Key, value: str) -> Match:
    """The :class:`Match` of ``keyword`` = ``value`` (PS3.4 C.2.2.2); 400 for a value its VR cannot hold."""
    if key.kind in ("uid", "modalities"):
        values = tuple(v for v in re.split(r"[,\\]", value) if v)
        if key.kind == "uid":
            for uid in values:
                check_uids(**{keyword: uid})
        kind = "in_study" if key.kind == "modalities" else "single" if len(values) == 1 else "list"
        return Match(key.column, kind, values)
    if key.kind in ("date", "time"):
        bounds = _range(keyword, value, _DATE if key.kind == "date" else _TIME,
                        "a date YYYYMMDD" if key.kind == "date" else "a time HHMMSS.FFFFFF")
        return Match(key.column, "single" if len(bounds) == 1 else "range", bounds)
    if key.kind == "integer":
        if not re.fullmatch(r"[+-]?[0-9]{1,12}", value.strip()):
            raise DicomwebError(HTTP_BAD_REQUEST, f"{keyword} must be an integer (IS), {value[:80]!r} is given")
        return Match(key.column, "single", (int(value),))
    ignore_case = key.kind == "name"
    if "*" in value or "?" in value:
        return Match(key.column, "wildcard", (value,), ignore_case)
    if "\\" in value and not ignore_case:
        return Match(key.column, "list", tuple(value.split("\\")))
    return Match(key.column, "single", (value,), ignore_case)


def parse_search(params: list[tuple[str, str]], level: str) -> Search:
    """The :class:`Search` of the query parameters ``params`` at ``level``; :class:`DicomwebError`
    (400) naming the first parameter that is not understood."""
    allowed = LEVELS[:LEVELS.index(level) + 1]
    matches: list[Match] = []
    include: set[int] | None = set()
    limit, offset, warnings, seen = MAX_RESULTS, 0, [], set()
    for name, value in params:
        if name == "includefield":
            for field in filter(None, value.split(",")):
                if field == "all":
                    include = None
                elif include is not None:
                    include.add(attribute_tag(field))
            continue
        if name in ("limit", "offset"):
            number = _count(name, value)
            limit, offset = (min(number, MAX_RESULTS), offset) if name == "limit" else (limit, number)
            continue
        if name == "fuzzymatching":
            if value not in ("true", "false"):
                raise DicomwebError(HTTP_BAD_REQUEST, f"fuzzymatching must be true or false, {value[:40]!r} is given")
            if value == "true":
                warnings.append(FUZZY_WARNING)
            continue
        if "." in name:
            raise DicomwebError(HTTP_BAD_REQUEST, f"query attribute {name[:80]!r}: matching on sequence items is "
                                                  "not supported")
        tag = attribute_tag(name)
        keyword = keyword_for_tag(tag) or name
        key = MATCH_KEYS.get(keyword)
        if key is None:
            raise DicomwebError(HTTP_BAD_REQUEST, f"query attribute {name[:80]!r} is not a matching key; "
                                                  f"supported: {', '.join(MATCH_KEYS)}")
        if key.level not in allowed:
            raise DicomwebError(HTTP_BAD_REQUEST, f"query attribute {name[:80]!r} is a {key.level.lower()}-level "
                                                  f"key, not one of a {level.lower()} search")
        if keyword in seen:
            raise DicomwebError(HTTP_BAD_REQUEST, f"query attribute {name[:80]!r} is given twice")
        seen.add(keyword)
        if include is not None:
            include.add(tag)  # a matching key is returned (PS3.18 10.6.3.3)
        if value.strip("*") != "":  # empty or only "*": universal matching (PS3.4 C.2.2.2.3, C.2.2.2.4)
            matches.append(key_match(keyword, key, value))
    return Search(matches, None if include is None else frozenset(include), limit, offset, warnings)


def _returned(header: dict[str, Any], levels: tuple[str, ...], include: frozenset[int] | None) -> dict[str, Any]:
    """The attributes of ``header`` (DICOM JSON) that are required at ``levels`` or asked for at
    them (``include``, None: all), and the required or asked-for ones it lacks, empty (PS3.18 F.2.5)."""
    required = frozenset().union(*(REQUIRED[level] for level in levels))
    asked = frozenset(t for t in include if level_of(t) in levels) if include is not None else None
    out = {}
    for key, value in header.items():
        tag = int(key, 16)
        if tag in required or (level_of(tag) in levels and (asked is None or tag in asked)):
            out[key] = value
    for tag in required | (asked or frozenset()):
        key = f"{tag:08X}"
        if key not in out and tag not in IF_PRESENT and keyword_for_tag(tag):
            out[key] = {"vr": dictionary_VR(tag).split(" ")[0]}
    return out


def _element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def _with(body: dict[str, Any], **computed: dict[str, Any]) -> dict[str, Any]:
    for keyword, element in computed.items():
        body[f"{tag_for_keyword(keyword):08X}"] = element
    return dict(sorted(body.items()))


def study_results(store: Store, search: Search, base: str) -> list[dict[str, Any]]:
    """Study search (PS3.18 10.6.1.3.1)."""
    out = []
    for study in store.gateway.query_studies(search.matches, search.limit + 1, search.offset):
        body = _returned(json.loads(study.header), ("STUDY",), search.include)
        out.append(_with(body, ModalitiesInStudy=_element("CS", *study.modalities),
                         NumberOfStudyRelatedSeries=_element("IS", study.series_count),
                         NumberOfStudyRelatedInstances=_element("IS", study.instance_count),
                         RetrieveURL=_element("UR", base + retrieve_path(study.study_uid)),
                         InstanceAvailability=_element("CS", ONLINE)))
    return out


def series_results(store: Store, search: Search, base: str, levels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Series search (PS3.18 10.6.1.3.2); ``levels``: the study's attributes too when unscoped."""
    out = []
    for series in store.gateway.query_series(search.matches, search.limit + 1, search.offset):
        body = _returned(json.loads(series.header), levels, search.include)
        out.append(_with(body, NumberOfSeriesRelatedInstances=_element("IS", series.instance_count),
                         RetrieveURL=_element("UR", base + retrieve_path(series.study_uid, series.series_uid))))
    return out


def instance_results(store: Store, search: Search, base: str, levels: tuple[str, ...]) -> list[dict[str, Any]]:
    """Instance search (PS3.18 10.6.1.3.3); ``levels``: the series' and study's attributes too when
    the search is not scoped to them."""
    out = []
    for obj in store.gateway.query_objects(search.matches, search.limit + 1, search.offset):
        body = _returned(json.loads(obj.header), levels, search.include)
        out.append(_with(body, RetrieveURL=_element("UR", base + retrieve_path(
            obj.study_uid, obj.series_uid, obj.sop_instance_uid)), InstanceAvailability=_element("CS", ONLINE)))
    return out


def _search(store: Store, level: str, levels: tuple[str, ...], params: list[tuple[str, str]],
            scope: list[Match], base: str) -> tuple[list[dict[str, Any]], list[str]]:
    search = parse_search(params, level)
    search = search._replace(matches=scope + search.matches)
    refreshed = dicomweb_index.refresh(store)
    if level == "STUDY":
        found = study_results(store, search, base)
    elif level == "SERIES":
        found = series_results(store, search, base, levels)
    else:
        found = instance_results(store, search, base, levels)
    warnings = list(search.warnings) + ([PENDING_WARNING] if refreshed.pending else [])
    if len(found) > search.limit:
        found, warnings = found[:search.limit], warnings + [MORE_WARNING]
    return found, warnings


def _studies_of(found: list[dict[str, Any]]) -> list[str]:
    key = f"{tag_for_keyword('StudyInstanceUID'):08X}"
    return list(dict.fromkeys(v for d in found for v in d.get(key, {}).get("Value", [])))


async def _answer(request: Request, level: str, levels: tuple[str, ...], study_uid: str | None = None,
                  series_uid: str | None = None) -> Response:
    ctx = current()
    if (refusal := refused(ctx, request, study_uid, "search")) is not None:
        return refusal
    try:
        check_uids(StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
        scope = [Match("study_uid", "single", (study_uid,))] if study_uid else []
        scope += [Match("series_uid", "single", (series_uid,))] if series_uid else []
        found, warnings = await run_in_threadpool(_search, ctx.store(), level, levels,
                                                  request.query_params.multi_items(), scope, ctx.link_base())
    except DicomwebError as exc:
        await audit(ctx, request, "search", outcome_of(exc.status), study_uid, f"HTTP {exc.status}: {exc.reason[:200]}")
        return error_response(exc)
    studies = [study_uid] if study_uid else _studies_of(found)
    await audit(ctx, request, "search", "success", study_uid or (studies[0] if len(studies) == 1 else None),
                f"{len(found)} {level.lower()} results of {len(studies)} studies: {' '.join(studies)}")
    headers = {"Warning": ", ".join(warnings)} if warnings else None
    if not found:
        return Response(status_code=HTTP_NO_CONTENT, headers=headers)
    return dicom_json_response(found, headers)


@router.get(f"{BASE_PATH}/studies")
async def search_studies(request: Request) -> Response:
    return await _answer(request, "STUDY", ("STUDY",))


@router.get(f"{BASE_PATH}/series")
async def search_all_series(request: Request) -> Response:
    return await _answer(request, "SERIES", ("STUDY", "SERIES"))


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series")
async def search_series(study_uid: str, request: Request) -> Response:
    return await _answer(request, "SERIES", ("SERIES",), study_uid)


@router.get(f"{BASE_PATH}/instances")
async def search_all_instances(request: Request) -> Response:
    return await _answer(request, "IMAGE", LEVELS)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/instances")
async def search_study_instances(study_uid: str, request: Request) -> Response:
    return await _answer(request, "IMAGE", ("SERIES", "IMAGE"), study_uid)


@router.get(f"{BASE_PATH}/studies/{{study_uid}}/series/{{series_uid}}/instances")
async def search_instances(study_uid: str, series_uid: str, request: Request) -> Response:
    return await _answer(request, "IMAGE", ("IMAGE",), study_uid, series_uid)
