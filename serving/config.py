"""medgate configuration: one YAML file, every key overridable from the environment.

``MEDGATE_CONFIG`` names the YAML file (see ``medgate.example.yaml``).  Any key can be overridden
by an environment variable ``MEDGATE_<KEY>``, with ``__`` between nesting levels, e.g.
``MEDGATE_DICOM__PORT=11112`` or ``MEDGATE_DESTINATIONS__PACS__HOST=10.0.0.5``.

Precedence, highest first: explicit arguments, environment, YAML file, defaults.

Each default is written once, in its section's model: the ``dicom`` section in
:mod:`dicom_gateway.config`, ``mqtt`` and ``iomt`` in :mod:`iomt.config` (those layers import no
``serving``), the others here; :class:`Settings` composes them.
Validation happens once at start; :func:`load_config` raises :class:`ConfigError` whose message
names every offending key.
"""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from dicom_gateway.config import DicomConfig, check_ae_title
from iomt.config import Hl7Config, IomtConfig, MqttConfig
from kernel.cluster import check_node_id
from kernel.config import Section
from kernel.database import database_path, store_location
from serving.roles import ALL, Role, is_all, parse_roles

ENV_PREFIX = "MEDGATE_"
CONFIG_ENV = "MEDGATE_CONFIG"

#: Keys whose values are secrets: never echoed in error messages or ``check-config``.
SECRET_KEYS = ("token", "password")


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending keys."""


#: A Ray custom resource name as ``ray start --resources`` takes it (no CPU/GPU/memory: Ray's own).
_RAY_RESOURCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,63}$")


#: Result objects a DICOM destination can receive: TID 1500 SR, SEG, Secondary Capture overlay,
#: Grayscale Softcopy Presentation State (the overlay a viewer can toggle).
RESULT_OBJECTS = ("sr", "seg", "sc", "gsps")


class DicomDestination(Section):
    ae_title: str
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    objects: list[Literal["sr", "seg", "sc", "gsps"]] = list(RESULT_OBJECTS)  # what this destination gets
    _check_ae = field_validator("ae_title")(check_ae_title)


class Destinations(Section):
    """DICOM destinations of results: ``pacs`` plus any other name (``viewer: {...}``)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, DicomDestination] = Field(init=False)
    pacs: DicomDestination | None = None

    def named(self) -> dict[str, DicomDestination]:
        """Every configured destination by name."""
        out = {"pacs": self.pacs} if self.pacs is not None else {}
        return {**out, **{k: v for k, v in (self.__pydantic_extra__ or {}).items() if v is not None}}


class HttpConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # /v1/infer bodies, counted as they stream
    # /v1/infer images: width x height (x frames of a DICOM) read from the header before decoding;
    # over it 422.  Above the largest radiograph (18.5 MP) and a 48 MP phone photograph.
    max_image_pixels: int = Field(50_000_000, ge=64 * 64)
    # STOW-RS bodies (POST /dicomweb/studies), counted as they stream: 413 as soon as one passes
    # this; the parts wait in an anonymous file beside the spool, so this bounds disk, not memory
    stow_max_bytes: int = Field(2 * 1024**3, ge=1024)
    # STOW-RS parts per request: 413 at the next part (each costs bookkeeping and a store attempt)
    stow_max_parts: int = Field(10_000, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    # The URL clients reach the server at (https://medgate.hospital.local): the base of FHIR
    # Bundle links and fullUrls, never taken from a request's Host header.  null: links relative
    # to the server (/fhir/...).
    public_base_url: str | None = None
    # Reverse proxies (addresses or CIDR networks) whose X-Forwarded-For / Forwarded headers name
    # the client; from any other peer, loopback included, those headers are ignored.
    trusted_proxies: list[str] = []
    # Ray Serve's HTTP proxy (uvicorn) closes a connection idle this long after a response.
    keep_alive_timeout_s: int = Field(5, ge=1)
    # End-to-end limit of one request in Ray Serve's proxy; null = none (the ward board's event
    # stream is one long request).  Slow header senders: docs/security.md.
    request_timeout_s: float | None = Field(None, gt=0)
    # What answers on host:port (serving/http/proxy.py; docs/serving.md "Performance"):
    # `direct`, the node's one ingress replica itself (Ray Serve's direct ingress: no proxy hop, the
    # caller's address audited, handles over gRPC); `ray`, Ray Serve's proxy (uvicorn, one actor hop
    # to the ingress); `haproxy`, Ray Serve's HAProxy mode (haproxy_binary; several ingress replicas,
    # but the audit records haproxy's address and more ports open: docs/security.md).
    # `auto`: direct on a Ray of medgate's own (ray.address null), ray on a joined cluster, whose
    # nodes' `ray start` environments would need direct's switches (docs/deployment.md).
    proxy: Literal["auto", "direct", "ray", "haproxy"] = "auto"
    haproxy_binary: Path | None = None
    # The ingress deployment (FastAPI behind Ray Serve's proxy): replicas, requests each replica
    # takes at once (Ray Serve's default of 5 made the proxy queue and back off the rest: 16
    # callers got ~13 requests/s), and CPUs reserved per replica (its work is mostly waiting).
    ingress_replicas: int = Field(1, ge=1)
    ingress_max_ongoing_requests: int = Field(256, ge=1)
    ingress_num_cpus: float = Field(0.0, ge=0)
    # A Ray custom resource the ingress replicas need (e.g. medgate_ingress): they then run only on
    # the Ray nodes that offer it (`ray start --resources '{"medgate_ingress": 1}'`, the ingress
    # role's nodes, with the shared spool and results).  null: anywhere in the Ray cluster.
    ingress_resource: str | None = None

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(f"must be an http(s) URL without query or fragment, {value!r} is given")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _one_ingress_replica_when_direct(self) -> "HttpConfig":
        if self.proxy == "direct" and self.port == 0:
            raise ValueError("http.proxy direct needs a fixed http.port (the ingress replica binds exactly it), "
                             "0 is given")
        if self.proxy == "direct" and self.ingress_replicas != 1:
            raise ValueError(f"http.proxy direct serves http.port from the ingress replica itself, so a node "
                             f"runs one (http.ingress_replicas 1); {self.ingress_replicas} are given: use "
                             f"http.proxy haproxy or ray to spread requests over several")
        return self

    @field_validator("ingress_resource")
    @classmethod
    def _check_resource(cls, value: str | None) -> str | None:
        if value is not None and not _RAY_RESOURCE.match(value):
            raise ValueError(f"must be a Ray custom resource name (letters, digits, '_', '-', '.', '/'), "
                             f"{value!r} is given")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"each entry must be an IP address or CIDR network, {entry!r} is given") \
                    from None
        return value


class FhirConfig(Section):
    base_url: str | None = None
    send_reports: bool = True  # imaging DiagnosticReport + Observations (when base_url is set)
    # Issuer of Patient ID (0010,0021) -> identifier system: a key of iomt.identifiers or a URI.
    patient_issuers: dict[str, str] = {"CCCD": "citizen_id", "BHYT": "social_insurance",
                                       "BHXH": "social_insurance"}
    unqualified_patient_id: str | None = "citizen_id"  # Patient ID without issuer; null = no system


class StoreConfig(Section):
    # null (or sqlite:) = the stores and the outbox in the SQLite file under state_dir;
    # postgresql://user@host:port/db = every owner store (instances, studies, dispatches, results,
    # FHIR resources, vitals, dead letters, feedback) and the outbox in that PostgreSQL database,
    # shared by every node (kernel.database_pg; schema migrations: kernel.migrations, docs/deployment.md).
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _check_store_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(postgres(ql)?://|sqlite:)", value):
            raise ValueError(f"must be null, sqlite: or postgresql://..., {value!r} is given")
        return value


class OutboxConfig(Section):
    # A failed delivery is retried after a delay that doubles from backoff_base_s up to
    # backoff_max_s; after max_attempts failures the item is dead until `medgate outbox retry`.
    # The defaults ride out a destination that is down for about an hour and a half; they are
    # written here only (serving.delivery.outbox.Outbox reads them).  A refusal (FHIR 4xx but 408/429, a
    # DICOM rejection or error status: kernel.delivery_errors) is dead at once, not retried.
    max_attempts: int = Field(100, ge=1)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)
    # PostgreSQL (several nodes): an item a node claimed for an attempt is not claimed by another for
    # this long (database clock), so it also is how long a node that died leaves its claimed items
    # waiting; keep it above one pass's attempts (up to 100 items, each up to its sender's timeout)
    claim_lease_s: float = Field(120.0, gt=0)


#: An HL7 v2 HD namespace (MSH-3..6): no delimiter of MSH-1/MSH-2 (``|^~\&``), no control character,
#: at most 20 characters (HL7 v2.5.1 2.A.33 HD.1 IS).
_HL7_NAMESPACE = re.compile(r"^[^|^~\\&\x00-\x1f\x7f]{0,20}$")
#: A destination's name: it becomes an outbox destination and part of the idempotency key.
_HL7_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_hl7_namespace(value: str) -> str:
    if not _HL7_NAMESPACE.match(value):
        raise ValueError(f"must be at most 20 characters without | ^ ~ \\ & or control characters, "
                         f"{value!r} is given")
    return value.strip()


class Hl7Tls(Section):
    """TLS to a RIS/HIS MLLP port: the server is verified against ``ca_file`` (else the system's
    CAs); ``cert_file`` + ``key_file`` present a client certificate when the receiver asks."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_hostname: str | None = None  # the name in the receiver's certificate; default: host


class Hl7Destination(Section):
    """A RIS/HIS receiving imaging results as ORU^R01 over MLLP (serving.delivery.hl7_sender)."""

    name: str
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    tls: Hl7Tls | None = None
    models: list[str] | None = None  # the models whose results go here; null = every imaging model
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)  # waiting for the ACK; none in time = retried
    _check_namespaces = field_validator("receiving_application", "receiving_facility")(check_hl7_namespace)

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _HL7_DESTINATION_NAME.match(value):
            raise ValueError(f"must be 1-64 letters, digits, '_', '.' or '-', {value!r} is given")
        return value


class Hl7Section(Hl7Config):
    # The listener's keys (port, host, TLS, allow-lists, application/facility: MSH-3/MSH-4 of what
    # medgate sends, ACKs included) are iomt.config.Hl7Config's (docs/hl7.md).  Imaging results as
    # HL7 v2.5.1 ORU^R01 to each destination, through the outbox (docs/hl7-results.md); MSH-11
    # (HL7 table 0103) P, T or D.
    processing_id: Literal["P", "T", "D"] = "P"
    # PID-3 identifier type (CX.5, HL7 table 0203) by Issuer of Patient ID, when the image's Issuer
    # of Patient ID Qualifiers carry none: NI national identifier (CCCD), HC health card (BHYT/BHXH).
    issuer_identifier_types: dict[str, str] = {"CCCD": "NI", "BHYT": "HC", "BHXH": "HC"}
    destinations: list[Hl7Destination] = []
    _check_namespaces = field_validator("application", "facility")(check_hl7_namespace)

    @field_validator("issuer_identifier_types")
    @classmethod
    def _check_types(cls, value: dict[str, str]) -> dict[str, str]:
        for issuer, kind in value.items():
            if not re.match(r"^[A-Za-z0-9]{1,5}$", kind):
                raise ValueError(f"each type must be an HL7 table 0203 code (1-5 letters or digits), "
                                 f"{issuer}: {kind!r} is given")
        return value

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, value: list[Hl7Destination]) -> list[Hl7Destination]:
        names = [d.name for d in value]
        if len(set(names)) != len(names):
            raise ValueError(f"each destination name must be unique, {names} are given")
        return value

    def named(self) -> dict[str, Hl7Destination]:
        """Every destination by name."""
        return {d.name: d for d in self.destinations}


class TokenEntry(Section):
    token: str = Field(min_length=16, repr=False)  # never shown by repr or logs
    role: Literal["clinician", "radiologist", "nurse", "engineer", "admin"]
    name: str = Field(min_length=1)


class AuthConfig(Section):
    # Static bearer tokens (docs/security.md has the role matrix). None configured: `medgate serve`
    # generates an admin token at first start, keeps it in state_dir/auth/admin.token (0600) and
    # prints it once.
    tokens: list[TokenEntry] = []
    cookie_max_age_s: int = Field(8 * 3600, ge=60)  # dashboard session lifetime, enforced server-side

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, value: list[TokenEntry]) -> list[TokenEntry]:
        if len({t.token for t in value}) != len(value):
            raise ValueError("each token must be unique")
        return value


class CdsIssuer(Section):
    """A CDS Client (an EHR) trusted to call the CDS Hooks service (CDS Hooks 2.0, "Trusting CDS
    Clients"): its JWT ``iss`` and where its public keys are, one of ``jwks_url`` (fetched, cached),
    ``jwks_file`` (a JWK Set) or ``public_key_file`` (PEM)."""

    iss: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks_file: Path | None = None
    public_key_file: Path | None = None

    @field_validator("jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+", value):
            raise ValueError(f"must be an http(s) URL, {value!r} is given")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> "CdsIssuer":
        given = [k for k in ("jwks_url", "jwks_file", "public_key_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"issuer {self.iss!r} needs exactly one of jwks_url, jwks_file, public_key_file; "
                             f"{given or 'none'} given")
        return self


class CdsConfig(Section):
    # CDS Hooks 2.0 service (/cds-services, docs/cds-hooks.md).  Only the issuers listed here may
    # call it; none listed: every call gets 401.
    issuers: list[CdsIssuer] = []
    # Longest a client's JWT may live (exp - iat); the specification asks for a short lifetime (5 min).
    max_token_lifetime_s: int = Field(300, ge=1)
    # Reads of the EHR's FHIR server (fhirServer + fhirAuthorization) when prefetch is absent.
    fhir_timeout_s: float = Field(5.0, gt=0)
    # A SMART app launch URL shown as a card link (type "smart"); null: no SMART link.
    smart_app_url: str | None = None


class MonitoringConfig(Section):
    # Live model monitoring (serving.monitoring, docs/monitoring.md): the window read, and the lines
    # that raise an alert (a WARNING log line, /v1/models/monitoring, medgate_model_alert).
    window_days: float = Field(7.0, gt=0)  # results and verdicts of the last window_days ...
    max_results: int = Field(5000, ge=1)   # ... at most the newest max_results results
    min_results: int = Field(100, ge=1)    # fewer results at a site: figures shown, no drift alert (noise)
    min_feedback: int = Field(10, ge=1)    # fewer verdicts: agreement shown, no alert
    # PSI over which drift is alerted (0.1-0.25 moderate, > 0.25 significant: serving.monitoring.drift).
    score_psi_alert: float = Field(0.25, gt=0)
    input_psi_alert: float = Field(0.25, gt=0)
    min_agreement: float = Field(0.7, ge=0, le=1)  # agreement with clinicians under which it is alerted
    cache_s: float = Field(30.0, ge=0)  # figures reused for this long (scrapes and page reloads)


class LoggingConfig(Section):
    format: Literal["text", "json"] = "text"  # json: one object per line (docs/observability.md)


def host_node_id(host: str | None = None) -> str:
    """``host`` (this machine's host name by default) as a node id (:data:`kernel.cluster.NODE_ID`):
    each character outside the grammar becomes ``-``, leading ``.``, ``_``, ``-`` are dropped, at
    most 64 are kept; ``medgate`` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname() if host is None else host)
    return re.sub(r"^[._-]+", "", name)[:64] or "medgate"


class NodeConfig(Section):
    """This node among several sharing ``store.url`` (docs/deployment.md, "Roles and several nodes")."""

    # Unique among the nodes: a second process started with a live node's id refuses to start.
    # null (the default): this machine's host name, sanitised (host_node_id).
    id: str = Field(default_factory=host_node_id)
    # all (every part, one machine) or a comma list of gateway, bridge, ingress, models
    # (serving.roles); `medgate serve --role` overrides it.
    role: str = ALL
    # A node whose heartbeat is older than this is gone: its id is free, its leases can be taken.
    lease_s: float = Field(20.0, gt=0)

    _check_id = field_validator("id")(check_node_id)

    @field_validator("id", mode="before")
    @classmethod
    def _host_name_when_null(cls, value: str | None) -> str:
        return host_node_id() if value is None else value

    @field_validator("role")
    @classmethod
    def _check_role(cls, value: str) -> str:
        roles = parse_roles(value)
        return ALL if is_all(roles) else ",".join(r.value for r in sorted(roles, key=list(Role).index))

    @property
    def roles(self) -> frozenset[Role]:
        return parse_roles(self.role)


#: ``ray.address``: host (name, IPv4 or [IPv6]) and port of the head's GCS.
_RAY_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):(\d{1,5})$")


class RayConfig(Section):
    # null: `medgate serve` starts a Ray of its own on this machine (one node).  auto: join the Ray
    # cluster of this machine's Ray node (`ray start --head` or `ray start --address=<head>:6379`
    # ran here first); host:port: the same, naming the head's GCS.  Model replicas are then placed
    # by Ray on whichever nodes offer their num_cpus / num_gpus.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        if value.startswith("ray://"):
            raise ValueError(f"Ray Client addresses (ray://) are not supported: start a Ray node on this "
                             f"machine (ray start --address=<head>:6379) and give auto or the head's "
                             f"host:port, {value!r} is given")
        match = _RAY_ADDRESS.match(value)
        if match is None or not 1 <= int(match[2]) <= 65535:
            raise ValueError(f"must be null, auto or host:port of the Ray head (e.g. ray-head:6379), "
                             f"{value!r} is given")
        return value


class ClassCode(Section):
    """The site's code for one class of a multi-class model, in place of its model card's
    (models.coding_scheme.map_classes): e.g. derm's bkl, df, vasc once a licensed SNOMED CT
    browser confirms a concept."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16)  # DICOM Coding Scheme Designator: SCT, LN, ...
    meaning: str = Field(min_length=1, max_length=64)  # Code Meaning (LO)


class ServingConfig(Section):
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["fp32", "fp16"] = "fp32"
    max_batch_size: int = Field(16, ge=1)
    #: Most a batch that is not full waits for more requests (0: a request that finds the model idle
    #: runs at once; batches form from what queued while it was busy): serving.inference.batcher.
    batch_wait_timeout_s: float = Field(0.0, ge=0)
    replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    #: onnxruntime threads of a replica on the CPU (and torch's, for a volume model's pre- and
    #: post-processing); None: every CPU the process may run on.  ``num_cpus`` only places replicas.
    intra_op_threads: int | None = Field(None, ge=1)
    #: Model name -> engine variant of its model card (``engine_variants`` in the version's
    #: metadata, e.g. ``{nodule: int8}``); a model not named runs its own ``file``.
    variants: dict[str, str] = Field(default_factory=dict)


#: Overrides given to :func:`load_config` for the call in progress: they rank above the environment.
_EXPLICIT: ContextVar[dict[str, Any]] = ContextVar("medgate_explicit_settings", default={})


def is_postgresql(url: str | None) -> bool:
    """Whether ``store.url`` = ``url`` puts the stores in PostgreSQL (:func:`kernel.database.store_location`)."""
    return isinstance(store_location(url, "."), str)


class Settings(BaseSettings):
    """The validated configuration of one medgate server."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    state_dir: Path = Path("./var")
    # The model registry (<name>/serving.json, <name>/<version>/metadata.json): null is the models
    # package folder.  Read as MEDGATE_MODELS_ROOT (models.registry.ROOT_ENV) by every process.
    models_root: Path | None = None
    dicom: DicomConfig = DicomConfig()
    destinations: Destinations = Destinations()
    http: HttpConfig = HttpConfig()
    mqtt: MqttConfig = MqttConfig()
    fhir: FhirConfig = FhirConfig()
    store: StoreConfig = StoreConfig()
    outbox: OutboxConfig = OutboxConfig()
    hl7: Hl7Section = Hl7Section()
    iomt: IomtConfig = IomtConfig()
    serving: ServingConfig = ServingConfig()
    auth: AuthConfig = AuthConfig()
    cds: CdsConfig = CdsConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    node: NodeConfig = NodeConfig()
    ray: RayConfig = RayConfig()
    log_level: str = "INFO"
    logging: LoggingConfig = LoggingConfig()
    class_codes: dict[str, dict[str, ClassCode]] = {}  # model -> class name -> the site's code

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives through init kwargs (see load_config), so it ranks below the
        # environment; load_config's explicit overrides (`medgate serve --role`) rank above both.
        return InitSettingsSource(settings_cls, init_kwargs=_EXPLICIT.get()), env_settings, init_settings

    @model_validator(mode="after")
    def _resolve_http_proxy(self) -> "Settings":
        """``http.proxy: auto``: ``direct`` on a Ray of medgate's own with one ingress replica, else ``ray``."""
        if self.http.proxy == "auto":
            alone = self.ray.address is None and self.http.ingress_replicas == 1 and self.http.port != 0
            self.http.proxy = "direct" if alone else "ray"
        if self.http.proxy == "direct" and self.ray.address is not None:
            raise ValueError("http.proxy direct is for a Ray of medgate's own (ray.address null): on a joined "
                             "cluster use ray or haproxy (docs/deployment.md)")
        return self

    @model_validator(mode="after")
    def _check_roles(self) -> "Settings":
        """A node that runs only some roles shares its state and its models with other nodes."""
        roles = self.node.roles
        if is_all(roles):
            return self
        role = self.node.role
        if not is_postgresql(self.store.url) and roles != {Role.MODELS}:
            raise ValueError(f"node.role {role} needs store.url to be a postgresql:// URL: nodes with "
                             f"some of the roles share their state in PostgreSQL (docs/deployment.md); "
                             f"only a models node may keep SQLite")
        if Role.MODELS not in roles and self.ray.address is None:
            raise ValueError(f"node.role {role} needs ray.address (auto, or the Ray head's host:port): the "
                             f"models run on the Ray cluster a models node deployed them to")
        if Role.BRIDGE in roles and self.mqtt.url is None:
            raise ValueError(f"node.role {role} needs mqtt.url: the embedded broker listens on this "
                             f"machine's loopback only, and the bridges of several nodes share one broker")
        return self

    def public_json(self) -> str:
        """The configuration as JSON with every secret masked (for ``check-config``)."""
        data = self.model_dump(mode="json")
        for entry in data["auth"]["tokens"]:
            entry["token"] = "***"
        if data["mqtt"].get("password"):
            data["mqtt"]["password"] = "***"
        import json

        return json.dumps(data, indent=2)

    @property
    def db_path(self) -> Path:
        return database_path(self.state_dir)

    @property
    def store_location(self) -> str | Path:
        """Where the owner stores live: ``store.url`` when PostgreSQL, else :attr:`db_path`."""
        return store_location(self.store.url, self.state_dir)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{CONFIG_ENV}: file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, {type(data).__name__} is given")
    return data


def load_config(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate the configuration.

    ``path`` defaults to ``$MEDGATE_CONFIG``; with neither, built-in defaults apply.

    Raises
    ------
    ConfigError
        The file is missing or not YAML, or a key is unknown or has a bad value; the message
        names each offending key in dotted form (``dicom.port``).
    """
    path = path or os.environ.get(CONFIG_ENV) or None
    data = _read_yaml(Path(path)) if path else {}
    explicit = _EXPLICIT.set(overrides)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            given = err.get("input")
            secret = any(word in key for word in SECRET_KEYS)
            shown = "" if isinstance(given, (dict, list)) or secret else f" ({given!r} is given)"
            problems.append(f"  {key}: {err['msg']}{shown}")
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}:\n" + "\n".join(problems)) from None
    finally:
        _EXPLICIT.reset(explicit)
    return settings
