"""The HTTP ingress (Ray Serve + FastAPI; the OpenAPI document at ``/openapi.json``).

- ``GET /healthz`` — the HTTP path works.
- ``GET /readyz`` — 200 only when every model deployment answers and the server's other
  components (DICOM SCP, MQTT bridge, outbox) report ready through ``state_dir/components.json``;
  where the nodes run some roles each, when every role recorded in the cluster table has a node
  heartbeating within ``node.lease_s`` (:meth:`serving.http.context.WebContext.server_status`).
- ``GET /v1/models`` — name, version, engine, device of each deployment.
- ``POST /v1/infer/{model}`` — multipart field ``file`` (DICOM, PNG or JPEG; a model whose input is
  a window of vital signs takes a JSON body ``{"window": ...}``; what each model takes is its
  serving spec's ``uploads``, :mod:`models.spec`): findings JSON, and for a DICOM upload by a
  clinician or an admin the result objects its spec lists (TID 1500 SR, DiagnosticReport),
  written, recorded and queued to the destinations and the FHIR server as a DICOM study's are
  (:mod:`serving.imaging.results`); other roles get the findings only, and ``results_not_written``
  says why.  Every call is one audit row, whatever its end (an exception
  included).  An upload naming a study already received for another patient (Patient ID or its
  issuer differ) is refused with 409: no result of one patient is filed under another's study.
- ``GET /v1/results/{study_uid}/{name}`` — a produced result object, only one recorded in the
  results table (the path is never taken from the request alone).
- ``GET /metrics`` — Prometheus text format.
- ``POST /dicomweb/studies`` — STOW-RS into the DICOM gateway (:mod:`serving.http.stow`).
- ``/`` (dashboard), ``/v1/ward``, ``/v1/stream/ward``, ``/v1/worklist``, ``/v1/overlay/...``,
  ``/v1/system``, ``/v1/session`` and the FHIR read API ``/fhir/...``: :mod:`serving.http.routes`.

Every path except ``/healthz``, ``/readyz`` and the dashboard's static files needs a bearer token
(:mod:`serving.http.auth` has the role matrix); reads of patient data are audited (:mod:`serving.governance.audit`).

Limits: bodies over ``max_upload_bytes`` get 413 as soon as their bytes, counted as they stream,
pass it (:mod:`serving.http.request_body`); a model whose queue is full gets 429 with ``Retry-After``;
a model that does not answer within ``timeout_s`` gets 504; a model that fails gets 500 without its
internals (they are logged).
"""
# No `from __future__ import annotations`: FastAPI must see real types on the ingress methods.

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from ray import serve
from ray.exceptions import RayError, RayTaskError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from dicom_gateway.uids import is_uid
from serving.config import AuthConfig, Hl7Section, HttpConfig
from kernel.delivery_errors import TransientDeliveryError
from models.reference import image_features
from models.registry import registered
from serving.delivery.outbox import Outbox
from serving.fhir.report import PatientIdentity
from serving.http import request_body, stow
from serving.http.auth import CLINICAL
from serving.http.context import current, install as install_context
from serving.http.metrics import IngressMetrics
from serving.http.routes import install_routes
from serving.http.uploads import (UploadError, check_upload_kind, decode, model_item, sample_shape, takes_images,
                                  vitals_window)
from serving.imaging.findings import finding_of, findings_json, recorded_result
from serving.imaging.results import DICOM_KIND, FHIR_KIND, HL7_KIND, ResultWriter

log = logging.getLogger("medgate.http")

RETRY_AFTER_S = 1
#: How long the ingress reuses a model's info (version, input size, threshold) between requests.
INFO_TTL_S = 2.0
_RESULT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
#: Audit action of an inference call (FHIR AuditEvent action E, a function performed on the
#: caller's upload); the row's detail says which results were written.
INFER_AUDIT_ACTION = "execute"
#: RFC 9110 15.5.10: the upload conflicts with the study the store holds under its UID.
CONFLICT = 409

api = FastAPI(title="medgate", version="0.1.0",
              description="AI clinical decision support server. Results are NOT FOR CLINICAL USE.")
api.include_router(stow.router)  # POST /dicomweb/studies (STOW-RS), see serving/http/stow.py
install_routes(api)  # guard (bearer tokens, roles), dashboard, ward, worklist, system, /fhir


def _prepare(manifest, data: bytes, max_pixels: int):
    """Decode and preprocess an upload (run in a worker thread: it is CPU work)."""
    decoded = decode(data, max_pixels)
    return decoded, model_item(manifest, decoded)


def _delivered_by_the_server(destination: str, payload: dict) -> None:
    """The ingress only queues deliveries; the server process's outbox worker sends them."""
    raise TransientDeliveryError(f"delivery to {destination} is the medgate server process's outbox's work")


def _check_same_patient(ds) -> None:
    """:class:`UploadError` (409) when the store holds the upload's study for another patient:
    its first stored instance has another Patient ID or Issuer of Patient ID (PS3.3 C.7.1.1)."""
    stored = current().store().study_patient(str(ds.StudyInstanceUID))
    if stored is None:
        return
    given = (str(ds.get("PatientID", "") or "").strip(), str(ds.get("IssuerOfPatientID", "") or "").strip())
    if given != tuple(stored):
        raise UploadError(CONFLICT, f"study {ds.StudyInstanceUID} is already held for another patient "
                                    f"(Patient ID or Issuer of Patient ID differ from the upload's); "
                                    f"no result was written")


def _error(status: int, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers or None)


@serve.deployment(name="ingress", ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class Ingress:
    def __init__(self, models: dict[str, DeploymentHandle], state_dir: str,
                 limits: dict[str, Any] | None = None, auth: list | None = None) -> None:
        self.models = models
        self.state_dir = Path(state_dir)
        limits = limits or {}
        http, auth_defaults = HttpConfig(), AuthConfig()  # the configuration's defaults, for limits left out
        # auth: (sha256 digest, role, name) per token; never the tokens themselves.
        install_context(self.state_dir, [tuple(a) for a in auth or []], models,
                        int(limits.get("cookie_max_age_s", auth_defaults.cookie_max_age_s)),
                        store_url=limits.get("store_url"), cluster_lease_s=limits.get("cluster_lease_s"),
                        **(limits.get("web") or {}))
        self.max_upload_bytes = int(limits.get("max_upload_bytes", http.max_upload_bytes))
        self.max_image_pixels = int(limits.get("max_image_pixels", http.max_image_pixels))
        self.timeout_s = float(limits.get("timeout_s", http.timeout_s))
        self.metrics = IngressMetrics()
        self.patient_identity = limits.get("patient_identity") or {}
        self.destinations = dict(limits.get("destinations") or {})  # name -> result kinds it receives
        self.fhir_base_url = limits.get("fhir_base_url")  # reports go there through the outbox when set
        self.hl7 = Hl7Section(**(limits.get("hl7") or {}))  # ORU^R01 destinations of an upload's findings
        self._results: ResultWriter | None = None
        self._info_cache: dict[str, tuple[float, dict]] = {}
        self._manifests: dict[tuple[str, str], Any] = {}
        stow.configure(api, self.state_dir, limits.get("dicom"), limits.get("store_url"))

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        checks: dict[str, str] = {}
        for name, handle in self.models.items():
            try:
                await handle.info.remote()
                checks[f"model:{name}"] = "ok"
            except Exception as exc:  # noqa: BLE001 - report, don't raise
                checks[f"model:{name}"] = f"error: {exc}"
        checks.update((await asyncio.to_thread(current().server_status))["checks"])
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @api.get("/v1/models")
    async def list_models(self) -> list[dict]:
        return [await h.info.remote() for h in self.models.values()]

    @api.post("/v1/infer/{model}")
    async def infer(self, model: str, request: Request) -> JSONResponse:
        start = time.perf_counter()
        audit = {"query": f"model={model[:64]}"}
        status = 500  # unless a response or a known exception says otherwise
        try:
            response = await self._infer(model, request, audit)
            status = response.status_code
            return response
        except HTTPException as exc:  # Starlette's own refusals (a form over its field limits: 400)
            status, audit["detail"] = exc.status_code, str(exc.detail)[:300]
            raise
        except Exception as exc:  # answered 500 by serving.http.headers.server_error
            audit["detail"] = f"unhandled {type(exc).__name__}"
            raise
        finally:
            self.metrics.observe(model, status, time.perf_counter() - start)
            outcome = "success" if status < 400 else "not-found" if status == 404 else "error"
            audit["detail"] = f"HTTP {status}" + (f": {audit['detail']}" if "detail" in audit else "")
            await asyncio.to_thread(current().record, request, INFER_AUDIT_ACTION, outcome, **audit)

    async def _infer(self, model: str, request: Request, audit: dict[str, str]) -> JSONResponse:
        """The reply; what the audit row should say goes into ``audit``."""
        if model not in self.models:
            return _error(404, f"no model {model!r}; served: {sorted(self.models)}")
        handle = self.models[model]
        try:
            info = await self._model_info(model)
            manifest = await self._manifest(info["name"], info["version"])
            spec = manifest.serving
            if spec.accepts("json"):
                body = await request_body.read(request, self.max_upload_bytes)
                item, decoded, context = vitals_window(body, sample_shape(manifest)), None, {}
            elif not takes_images(manifest):
                check_upload_kind(manifest, "dicom")  # UploadError naming what the model takes instead
            else:
                data, context = await self._read_file(request)
                decoded, item = await asyncio.to_thread(_prepare, manifest, data, self.max_image_pixels)
                if decoded.dataset is not None:
                    audit["study_uid"] = str(decoded.dataset.StudyInstanceUID)
                    if spec.results and self._role(request) in CLINICAL:  # results will be written
                        await asyncio.to_thread(_check_same_patient, decoded.dataset)
            reply = await asyncio.wait_for(handle.remote(item), timeout=self.timeout_s)
            if reply["version"] != info["version"]:  # deployed meanwhile: describe the version that answered
                self._info_cache.pop(model, None)
                info = await self._model_info(model)
        except UploadError as exc:
            audit["detail"] = exc.reason[:300]
            return _error(exc.status, exc.reason)
        except BackPressureError:
            return _error(429, f"model {model!r} is at capacity; retry later", **{"Retry-After": str(RETRY_AFTER_S)})
        except asyncio.TimeoutError:
            return _error(504, f"model {model!r} did not answer within {self.timeout_s} s")
        except RayTaskError as exc:  # the model raised: a JSON error naming no internals, never a bare 500
            log.error("model %r failed on an upload: %s: %s", model, type(exc.cause).__name__, exc.cause)
            return _error(500, f"model {model!r} failed on this input; the server log has the details")
        except RayError as exc:  # its replica died or is restarting
            return _error(503, f"model {model!r} is unavailable ({type(exc).__name__}); retry later",
                          **{"Retry-After": str(RETRY_AFTER_S)})
        if reply["version"] != manifest.version:
            manifest = await self._manifest(info["name"], info["version"])
            spec = manifest.serving
        body = {"model": model, "version": reply["version"], "findings": findings_json(reply, info, spec),
                "context": context, "links": {}, "intended_use": info.get("intended_use")}
        audit["detail"] = f"{model} {reply['version']}: findings"
        if decoded is not None and decoded.dataset is not None and spec.results:
            role = self._role(request)
            if role in CLINICAL:
                body["links"] = await asyncio.to_thread(self._write_results, decoded.dataset, reply, info, spec,
                                                        item)
                if "fhir" in body["links"]:
                    audit["resource_type"] = "DiagnosticReport"
                    audit["resource_id"] = body["links"]["fhir"].rsplit("/", 1)[1]
                written = [k.upper() for k in body["links"] if k != "fhir"]
                written += ["DiagnosticReport"] if "fhir" in body["links"] else []
                audit["detail"] += f", {' and '.join(written)} written ({body['links'].get('sr', '')})"
            else:
                body["results_not_written"] = (f"writing patient results (SR, DiagnosticReport) needs a clinical "
                                               f"role ({', '.join(sorted(CLINICAL))}); the caller's role is {role}")
                audit["detail"] += ", results not written (role)"
        return JSONResponse(body)

    def _write_results(self, ds, reply: dict, info: dict, spec, item) -> dict[str, str]:
        """Write the upload's results with the one result writer (run in a worker thread), with the
        model input's features for monitoring (:func:`models.reference.image_features`)."""
        inputs = image_features(item, max(int(ds.Rows), int(ds.Columns)))
        return self._result_writer().upload(ds, finding_of(ds, reply, info, spec), info, spec, inputs=inputs)

    def _result_writer(self) -> ResultWriter:
        """The result writer of uploads: the results and FHIR resources in this replica's store, the
        deliveries queued in the configured outbox backend, sent by the server process's worker."""
        if self._results is None:
            store = current().store()
            outbox = Outbox(current().outbox_db(), {DICOM_KIND: _delivered_by_the_server,
                                                    FHIR_KIND: _delivered_by_the_server,
                                                    HL7_KIND: _delivered_by_the_server})
            self._results = ResultWriter(store, outbox, self.state_dir / "results", destinations=self.destinations,
                                         fhir_base_url=self.fhir_base_url,
                                         identity=PatientIdentity(**self.patient_identity), hl7=self.hl7)
        return self._results

    @staticmethod
    def _role(request: Request) -> str | None:
        principal = getattr(request.state, "principal", None)
        return principal.role if principal else None

    async def _manifest(self, name: str, version: str):
        """The registry's manifest of ``name`` ``version``: read from disk once (in a worker thread),
        then from this replica's memory (a version folder does not change once written)."""
        manifest = self._manifests.get((name, version))
        if manifest is None:
            manifest = self._manifests[(name, version)] = await asyncio.to_thread(registered, name, version)
        return manifest

    async def _model_info(self, model: str) -> dict:
        """A deployment's info, cached for ``INFO_TTL_S`` (it changes only when a version is deployed)."""
        cached = self._info_cache.get(model)
        if cached is None or time.monotonic() - cached[0] > INFO_TTL_S:
            cached = (time.monotonic(), await self.models[model].info.remote())
            self._info_cache[model] = cached
        return cached[1]

    async def _read_file(self, request: Request) -> tuple[bytes, dict[str, str]]:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise UploadError(415, "send the image as multipart/form-data field `file`")
        form = await request_body.limited(request, self.max_upload_bytes).form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise UploadError(422, "multipart field `file` is missing")
        data = await upload.read()
        if len(data) > self.max_upload_bytes:
            raise UploadError(413, f"`file` exceeds the {self.max_upload_bytes}-byte limit")
        context = {k: str(v) for k, v in form.items() if k != "file" and isinstance(v, str)}
        return data, context

    @api.get("/v1/results/{study_uid}/{name}")
    def result_file(self, study_uid: str, name: str, request: Request):
        """A result file recorded for the study (results table), inside ``state_dir/results``."""
        ctx = current()
        if not is_uid(study_uid) or not _RESULT_NAME.fullmatch(name):
            ctx.record(request, "read", "error", query=f"{study_uid[:80]}/{name[:130]}",
                       detail="not a study UID (PS3.5 9.1) and a result file name")
            return _error(400, "the study must be a UID (PS3.5 9.1) and the name a result file name, "
                               f"{study_uid[:80]!r} and {name[:130]!r} are given")
        path = recorded_result(ctx.store(), self.state_dir / "results", study_uid, name)
        if path is None:
            ctx.record(request, "read", "not-found", study_uid=study_uid, detail=name)
            return _error(404, "no such result")
        ctx.record(request, "read", study_uid=study_uid, detail=name)
        return FileResponse(path, media_type="application/dicom")

    @api.get("/metrics")
    async def metrics(self) -> PlainTextResponse:
        stats = []
        for handle in self.models.values():
            try:
                stats.append(await handle.stats.remote())
            except Exception:  # noqa: BLE001 - a model that is down reports nothing
                continue
        # the outbox counts and the monitoring figures read the stores: off the event loop
        text = await asyncio.to_thread(lambda: self.metrics.render(stats, self._outbox_counts()))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    def _outbox_counts(self) -> dict:
        """Outbox items by (kind, status) from the configured backend; empty when it cannot be read."""
        try:
            return current().outbox_db().counts()
        except Exception:  # noqa: BLE001 - the gauges are left out; reconnect at the next scrape
            current().forget_outbox_db()
            return {}
