"""The ward board's data: one tile per bed, and its live stream.

``GET /v1/ward`` returns the board once; ``GET /v1/stream/ward`` is a Server-Sent Events stream
(``text/event-stream``) that polls the store every ``POLL_S`` seconds and sends the board's tiles
when they changed (event ``ward``), the wards of the census when they changed (event ``wards``),
and a comment line every ``KEEPALIVE_S`` otherwise. Both take ``?ward=``: that ward's beds alone,
as a ward's own screen shows them. The open streams share one board a poll
(:func:`polled_board`). A tile's sparklines are read from the vitals rows directly
(:func:`iomt.vital_records.readings`), newest first until each has its ``POINTS``, not from
Observations built for them: 1,000 beds of 100 messages took 7.8 s a board, now 2.2-2.6 s.

Beds come from the bed census the vitals bridge keeps (topic ``<prefix>/<ward>/<bed>/vitals``);
a patient with recent vitals and no bed appears as an unassigned tile.  Per tile: the last ``POINTS`` values of HR, RR, SpO2, BP and
temperature (sparklines), the latest NEWS2 total and band, the latest deterioration probability
(RiskAssessment) and the active alerts (Flags) of the last hour.

Audit: one row per board request and one per stream opened (not per update).
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from iomt import vital_records
from models import clinical_codes as codes
from serving.http.context import current
from serving.store import Store

POINTS = 30
WINDOW_S = 3600.0
POLL_S = 1.5
KEEPALIVE_S = 15.0
MAX_OBSERVATIONS = 1500  # whole resources (NEWS2, ECG) per patient and board refresh
MAX_MESSAGES = 500  # vitals messages per patient and board refresh (iomt.vital_records)
MAX_FLAGS = 5  # latest alerts (Flag) per patient and board refresh
VITALS = {codes.HEART_RATE: "hr", codes.RESPIRATORY_RATE: "rr", codes.OXYGEN_SATURATION: "spo2",
          codes.BODY_TEMPERATURE: "temp"}
#: The sparkline of each reading a vitals row keeps (its Observation's codes, as VITALS above).
_READINGS = {**VITALS, codes.OXYGEN_SATURATION_PULSE_OXIMETRY: "spo2", codes.SYSTOLIC_BP: "sys",
             codes.DIASTOLIC_BP: "dia"}
_BAND = re.compile(r"(low-medium|low|medium|high)")
_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
_polled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # store -> ward -> (monotonic, board)
_polled_lock = threading.Lock()
router = APIRouter()


def _instant(when: str | None) -> datetime:
    """An ``effectiveDateTime`` as the instant it names (as text, +07:00 sorts after every Z)."""
    if not when:
        return _EARLIEST
    instant = datetime.fromisoformat(when)
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=timezone.utc)


def _codes(resource: dict) -> set[str]:
    return {c.get("code") for c in (resource.get("code") or {}).get("coding", [])}


def _series(observations: list[dict], rows: list) -> tuple[dict[str, list], dict | None]:
    """Sparklines and the latest NEWS2 from whole Observations (NEWS2; vital signs of a store
    of the earlier layout) and vitals rows, newest first (:func:`iomt.vital_records.select`),
    read as their Observations would give them (:func:`iomt.vital_records.readings`)."""
    series: dict[str, list] = {name: [] for name in (*VITALS.values(), "sys", "dia")}
    news2 = None
    for obs in observations:  # oldest first (_instant)
        found = _codes(obs)
        when = obs.get("effectiveDateTime")
        if codes.NEWS2_TOTAL_SCORE in found and obs.get("valueInteger") is not None:
            text = " ".join(i.get("text", "") for i in obs.get("interpretation", []))
            band = _BAND.search(text)
            news2 = {"total": obs["valueInteger"], "band": band[1] if band else None, "time": when,
                     "complete": obs.get("status") == "final", "id": obs["id"]}
            continue
        for code, name in VITALS.items():
            if code in found and "valueQuantity" in obs:
                series[name].append([when, obs["valueQuantity"]["value"]])
        if codes.BLOOD_PRESSURE_PANEL in found:
            for comp in obs.get("component", []):
                found_part = _codes(comp)
                name = "sys" if codes.SYSTOLIC_BP in found_part else (
                    "dia" if codes.DIASTOLIC_BP in found_part else None)
                if name and "valueQuantity" in comp:
                    series[name].append([when, comp["valueQuantity"]["value"]])
    wanted = dict.fromkeys(series, POINTS)  # from the rows, newest first: the last POINTS
    for row in rows:
        if not any(wanted.get(_READINGS.get(code)) for code in row[2].split(",")):
            continue  # nothing the sparklines still want: not decoded
        when, values = vital_records.readings(row)
        for loinc, value in values:
            name = _READINGS.get(loinc)
            if name is not None and wanted[name]:
                wanted[name] -= 1
                series[name].append([when, value])
    return {k: sorted(v, key=lambda p: (_instant(p[0]), p[1]))[-POINTS:]
            for k, v in series.items()}, news2


def _tile(store: Store, patient_ref: str, since: float, since_at: datetime,
          waiting: dict[str, list]) -> dict[str, Any]:
    observations = store.latest_resources("Observation", patient_ref, MAX_OBSERVATIONS, updated_after=since)
    observations.sort(key=lambda o: _instant(o.get("effectiveDateTime")))
    series, news2 = _series(observations, vital_records.select(store.vitals, patient_ref, since_at,
                                                               MAX_MESSAGES, waiting))
    risk = store.latest_resources("RiskAssessment", patient_ref, 1)
    flags = store.latest_resources("Flag", patient_ref, MAX_FLAGS, updated_after=since)
    deterioration = None
    if risk:
        prediction = (risk[0].get("prediction") or [{}])[0]
        deterioration = {"probability": prediction.get("probabilityDecimal"),
                         "time": risk[0].get("occurrenceDateTime"), "id": risk[0]["id"]}
    return {"patient": patient_ref, "vitals": series, "news2": news2, "deterioration": deterioration,
            "alerts": [{"id": f["id"], "text": f["code"].get("text"), "time": f.get("period", {}).get("start")}
                       for f in flags if f.get("status") == "active"]}


def ward_board(store: Store, now: float | None = None, window_s: float = WINDOW_S,
               ward: str | None = None) -> dict[str, Any]:
    """The board: ``{"beds": [tile, ...], "wards": [...], "ward": ward, "generated": epoch}``
    (see the module docstring); with ``ward``, that ward's beds alone (no unassigned tiles)."""
    now = time.time() if now is None else now
    since = now - window_s
    census = store.vitals.beds(since)
    wards = sorted({b.ward for b in census})
    beds = census if ward is None else [b for b in census if b.ward == ward]
    since_at = datetime.fromtimestamp(since, timezone.utc)
    loose: set[str] = set()
    if ward is None:
        loose = store.resource_subjects("Observation", since)
        loose |= vital_records.subjects(store.vitals, since_at)
        loose -= {b.patient_ref for b in census}
    waiting = vital_records.waiting_rows(  # the patient index's log, read once for every tile
        store.vitals, since_at, None if ward is None else [b.patient_ref for b in beds])
    tiles = []
    for bed in beds:
        tiles.append({"ward": bed.ward, "bed": bed.bed, "site": bed.site, "device": bed.device,
                      **_tile(store, bed.patient_ref, since, since_at, waiting)})
    for patient_ref in sorted(loose):
        tiles.append({"ward": None, "bed": None, "site": None, "device": None,
                      **_tile(store, patient_ref, since, since_at, waiting)})
    return {"beds": tiles, "wards": wards, "ward": ward, "generated": now}


def polled_board(store, ward: str | None = None) -> dict[str, Any]:
    """The board for the streams: computed at most once every ``POLL_S`` for all of them (per
    ward), so that each screen open on the ward board does not add a board's work (with 1,000
    beds, seconds of CPU in the bridge's process) every ``POLL_S``."""
    with _polled_lock:
        boards = _polled.setdefault(store, {})
        at, board = boards.get(ward, (None, None))
        if at is None or time.monotonic() - at >= POLL_S:
            board = ward_board(store, ward=ward)
            boards[ward] = (time.monotonic(), board)
        return board


@router.get("/v1/ward")
async def ward(request: Request, ward: str | None = None) -> dict:
    ctx = current()
    board = await run_in_threadpool(ward_board, ctx.store(), ward=ward or None)
    ctx.record(request, "search", resource_type="Observation", query="ward board",
               detail=f"{len(board['beds'])} beds" + (f" of ward {ward}" if ward else ""))
    return board


@router.get("/v1/stream/ward")
async def stream_ward(request: Request, ward: str | None = None) -> StreamingResponse:
    ctx = current()
    ctx.record(request, "stream", resource_type="Observation", query="ward board stream",
               detail=f"ward {ward}" if ward else None)

    async def events():
        last, last_wards, last_sent = None, None, time.monotonic()
        yield "retry: 3000\n\n"
        while not await request.is_disconnected():
            if not await run_in_threadpool(ctx.still_signed_in, request):
                return  # signed out (or the session expired) while streaming: end the stream
            board = await run_in_threadpool(polled_board, ctx.store(), ward or None)
            if board["wards"] != last_wards:
                last_wards = board["wards"]
                yield f"event: wards\ndata: {json.dumps(last_wards)}\n\n"
            data = json.dumps(board["beds"], separators=(",", ":"))
            if data != last:
                last, last_sent = data, time.monotonic()
                yield f"event: ward\ndata: {data}\n\n"
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keepalive\n\n"
            await asyncio.sleep(POLL_S)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
