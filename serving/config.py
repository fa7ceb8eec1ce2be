"""medgate configuration: one YAML file, every key overridable from the environment.

``MEDGATE_CONFIG`` names the YAML file (see ``medgate.example.yaml``).  Any key can be overridden
by an environment variable ``MEDGATE_<KEY>``, with ``__`` between nesting levels, e.g.
``MEDGATE_DICOM__PORT=11112`` or ``MEDGATE_DESTINATIONS__PACS__HOST=10.0.0.5``.

Precedence, highest first: explicit arguments, environment, YAML file, defaults.
Validation happens once at start; :func:`load_config` raises :class:`ConfigError` whose message
names every offending key.
"""
from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "MEDGATE_"
CONFIG_ENV = "MEDGATE_CONFIG"

#: PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or controls.
#: Keys whose values are secrets: never echoed in error messages or ``check-config``.
SECRET_KEYS = ("token", "password")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending keys."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"must be 1-16 printable characters without backslash, {value!r} is given")
    return value.strip()


class DicomPeer(_Section):
    """One allowed association requestor: its calling AE title and source address."""

    ae_title: str
    host: str  # IP address the association must come from; "*" = any
    _check_ae = field_validator("ae_title")(_ae_title)


class DicomTls(_Section):
    """DICOM Secure Transport Connection Profile (PS3.15 B.1) on a second port."""

    port: int = Field(2762, ge=0, le=65535)  # 2762: IANA "dicom-tls"
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None  # set = client certificates signed by it are required
    only: bool = False  # true: no plain port (dicom.port is not opened); associations over TLS only
    # true: a TLS association's calling AE title must be the client certificate's subject CN or one
    # of its DNS subjectAltNames (exact match), else A-ASSOCIATE-RJ calling-AE-title-not-recognized
    match_calling_ae: bool = False

    @model_validator(mode="after")
    def _certificates_required(self) -> "DicomTls":
        if self.match_calling_ae and self.ca_file is None:
            raise ValueError("match_calling_ae needs ca_file: without it no client certificate is asked for")
        return self


class DicomCompletion(_Section):
    group_by: Literal["study", "series"] = "study"
    quiet_period_s: float = Field(2.0, gt=0)  # after the last instance, when no count is known
    poll_interval_s: float = Field(0.1, gt=0)  # how often the store is checked (STOW-RS, restarts)


class DicomStorage(_Section):
    retention_days: float | None = Field(None, gt=0)  # processed studies older than this are deleted
    min_free_bytes: int = Field(1024**3, ge=0)  # below this, associations/instances are refused
    # fsync each instance before success; false only where the disk's write cache survives power loss
    fsync: bool = True
    # pre-written slot files kept ready per instance size (one data flush per instance instead of a
    # new file's journal commits; see dicom_gateway/slots.py); 0 writes each instance as a new file
    slot_pool_bytes: int = Field(256 * 1024**2, ge=0)


class DicomRoute(_Section):
    """One routing rule (see dicom_gateway.routing.Rule); empty criteria match anything."""

    models: list[str] = Field(min_length=1)
    modality: list[str] = []
    body_part: list[str] = []
    sop_class: list[str] = []
    series_description: str | None = None  # regular expression, case-insensitive search
    calling_ae: list[str] = []
    called_ae: list[str] = []
    min_rows: int | None = Field(None, ge=1)
    min_columns: int | None = Field(None, ge=1)
    max_rows: int | None = Field(None, ge=1)
    max_columns: int | None = Field(None, ge=1)

    @field_validator("series_description")
    @classmethod
    def _check_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"must be a regular expression ({exc}), {value!r} is given") from None
        return value


class DicomConfig(_Section):
    ae_title: str = "MEDGATE"
    host: str = "127.0.0.1"
    port: int = Field(11112, ge=0, le=65535)
    max_associations: int = Field(10, ge=1)
    max_pdu_bytes: int = Field(1024 * 1024, ge=0)  # our maximum receive PDU (0 = unlimited)
    allow: list[DicomPeer] = []  # empty = any calling AE from any address
    tls: DicomTls | None = None
    completion: DicomCompletion = DicomCompletion()
    storage: DicomStorage = DicomStorage()
    routes: list[DicomRoute] = [  # chest X-ray -> TB, chest CT -> lung nodules, skin photos -> derm
        DicomRoute(models=["tb"], modality=["CR", "DX"], body_part=["CHEST"]),
        DicomRoute(models=["nodule"], modality=["CT"], body_part=["CHEST", "LUNG"]),
        DicomRoute(models=["derm"], modality=["XC", "DMS"]),  # External-camera Photography, Dermoscopy
        DicomRoute(models=["derm"], sop_class=["1.2.840.10008.5.1.4.1.1.77.1.2"], body_part=["SKIN"]),  # VL Microscopic
    ]
    _check_ae = field_validator("ae_title")(_ae_title)


#: Result objects a DICOM destination can receive: TID 1500 SR, SEG, Secondary Capture overlay.
RESULT_OBJECTS = ("sr", "seg", "sc")


class DicomDestination(_Section):
    ae_title: str
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    objects: list[Literal["sr", "seg", "sc"]] = list(RESULT_OBJECTS)  # what this destination gets
    _check_ae = field_validator("ae_title")(_ae_title)


class Destinations(_Section):
    """DICOM destinations of results: ``pacs`` plus any other name (``viewer: {...}``)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, DicomDestination] = Field(init=False)
    pacs: DicomDestination | None = None

    def named(self) -> dict[str, DicomDestination]:
        """Every configured destination by name."""
        out = {"pacs": self.pacs} if self.pacs is not None else {}
        return {**out, **{k: v for k, v in (self.__pydantic_extra__ or {}).items() if v is not None}}


class HttpConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # /v1/infer bodies, counted as they stream
    # STOW-RS bodies (POST /dicomweb/studies), counted as they stream: 413 as soon as one passes
    # this; the parts wait in an anonymous file beside the spool, so this bounds disk, not memory
    stow_max_bytes: int = Field(2 * 1024**3, ge=1024)
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

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError(f"must be an http(s) URL without query or fragment, {value!r} is given")
        return value.rstrip("/") if value else value

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MqttConfig(_Section):
    url: str | None = None
    # The embedded broker (url: null) is demo only, without authentication, ACL or TLS: it binds
    # a loopback address or refuses to start (docs/security.md, "MQTT broker").
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(1883, ge=0, le=65535)
    topic_prefix: str = "medgate"
    client_id: str = "medgate-bridge"
    protocol: Literal["3.1.1", "5"] = "3.1.1"  # MQTT 3.1.1 (OASIS 2014) or MQTT 5.0 (OASIS 2019)
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None  # PEM CA bundle for mqtts://; None = the system trust store
    cert_file: Path | None = None  # PEM client certificate (TLS client authentication)
    key_file: Path | None = None  # PEM private key of cert_file
    shared_group: str | None = None  # subscribe as $share/<group>/... so bridges split the load
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)  # MQTT 5 Session Expiry Interval
    keepalive_s: int = Field(30, ge=5, le=65535)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    queue_size: int = Field(20_000, ge=1)  # bounded hand-off queue; full = stop reading

    @field_validator("shared_group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(c in value for c in "/#+")):
            raise ValueError(f"must be one topic level without '/', '+' or '#', {value!r} is given")
        return value

    @field_validator("embedded_host")
    @classmethod
    def _check_embedded_host(cls, value: str) -> str:
        if not is_loopback(value):
            raise ValueError(f"must be a loopback address (127.0.0.1, ::1 or localhost): the embedded "
                             f"broker is demo only, with no authentication, ACL or TLS; set mqtt.url "
                             f"to the hospital's broker to receive from other machines")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^mqtts?://[^/:]+(:\d+)?/?$", value):
            raise ValueError(f"must look like mqtt://host:port or mqtts://host:port, {value!r} is given")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or any(c in value for c in "#+") or value.startswith("/") or value.endswith("/"):
            raise ValueError(f"must be a plain topic level path without wildcards, {value!r} is given")
        return value


class FhirConfig(_Section):
    base_url: str | None = None
    send_reports: bool = True  # imaging DiagnosticReport + Observations (when base_url is set)
    # Issuer of Patient ID (0010,0021) -> identifier system: a key of iomt.identifiers or a URI.
    patient_issuers: dict[str, str] = {"CCCD": "citizen_id", "BHYT": "social_insurance",
                                       "BHXH": "social_insurance"}
    unqualified_patient_id: str | None = "citizen_id"  # Patient ID without issuer; null = no system


class StoreConfig(_Section):
    # null = the outbox in the SQLite store under state_dir; postgresql://user@host:port/db = the
    # outbox in PostgreSQL, shared by every node (serving.outbox_db).
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _check_store_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(postgres(ql)?://|sqlite:)", value):
            raise ValueError(f"must be null, sqlite: or postgresql://..., {value!r} is given")
        return value


class OutboxConfig(_Section):
    # A failed delivery is retried after a delay that doubles from backoff_base_s up to
    # backoff_max_s; after max_attempts failures the item is dead until `medgate outbox retry`.
    # The defaults ride out a destination that is down for about an hour and a half; they are
    # written here only (serving.outbox.Outbox reads them).  A refusal (FHIR 4xx but 408/429, a
    # DICOM rejection or error status: serving.delivery_errors) is dead at once, not retried.
    max_attempts: int = Field(100, ge=1)
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(60.0, gt=0)


class AlertsConfig(_Section):
    min_band: Literal["low-medium", "medium", "high"] = "low-medium"  # RCP NEWS2 table 2 bands
    repeat_after_s: float = Field(3600.0, ge=0)  # same band re-alerted at most this often


class IdentifierSystems(_Section):
    # VN Core FHIR IG (HL7 Vietnam, draft): NamingSystem vn-cccd-ns and vn-bhyt-ns.
    citizen_id: str = "http://fhir.hl7.org.vn/core/sid/cccd"
    social_insurance: str = "http://fhir.hl7.org.vn/core/sid/bhyt"
    device: str = "urn:medgate:device-serial"  # local serial numbers, no national system


class RiskConfig(_Section):
    enabled: bool = True  # used when a `vitals` model is registered and deployed
    flush_interval_s: float = Field(1.0, gt=0)
    max_batch: int = Field(256, ge=1)
    min_interval_s: float = Field(60.0, ge=0)  # per patient, in message time


class IomtConfig(_Section):
    staleness_s: float = Field(3600.0, gt=0)  # NEWS2 uses values no older than this
    news2_interval_s: float = Field(60.0, ge=0)  # unchanged score re-written at most this often
    # vitals resources are kept this long in the local store (iomt/retention.py); None keeps them all
    retention_hours: float | None = Field(72.0, gt=0)
    batch_max_messages: int = Field(1000, ge=1)  # messages per store transaction
    workers: int = Field(1, ge=1)  # bridge worker processes; each owns the beds hashed to it
    bundle_max_entries: int = Field(2000, ge=1)  # resources per FHIR transaction Bundle
    alerts: AlertsConfig = AlertsConfig()
    identifiers: IdentifierSystems = IdentifierSystems()
    risk: RiskConfig = RiskConfig()


class TokenEntry(_Section):
    token: str = Field(min_length=16, repr=False)  # never shown by repr or logs
    role: Literal["clinician", "engineer", "admin"]
    name: str = Field(min_length=1)


class AuthConfig(_Section):
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


class LoggingConfig(_Section):
    format: Literal["text", "json"] = "text"  # json: one object per line (docs/observability.md)


class ClassCode(_Section):
    """The site's code for one class of a multi-class model, in place of its model card's
    (models.coding_scheme.map_classes): e.g. derm's bkl, df, vasc once a licensed SNOMED CT
    browser confirms a concept."""

    value: str = Field(min_length=1, max_length=64)
    scheme: str = Field(min_length=1, max_length=16)  # DICOM Coding Scheme Designator: SCT, LN, ...
    meaning: str = Field(min_length=1, max_length=64)  # Code Meaning (LO)


class ServingConfig(_Section):
    engine: Literal["auto", "onnxruntime", "torch"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    precision: Literal["fp32", "fp16"] = "fp32"
    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    replicas: int = Field(1, ge=1)
    max_ongoing_requests: int = Field(64, ge=1)
    max_queued_requests: int = Field(256, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class Settings(BaseSettings):
    """The validated configuration of one medgate server."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    state_dir: Path = Path("./var")
    dicom: DicomConfig = DicomConfig()
    destinations: Destinations = Destinations()
    http: HttpConfig = HttpConfig()
    mqtt: MqttConfig = MqttConfig()
    fhir: FhirConfig = FhirConfig()
    store: StoreConfig = StoreConfig()
    outbox: OutboxConfig = OutboxConfig()
    iomt: IomtConfig = IomtConfig()
    serving: ServingConfig = ServingConfig()
    auth: AuthConfig = AuthConfig()
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
        # The YAML file arrives through init kwargs (see load_config), so it must rank below env:
        # init_settings here holds only the YAML content and explicit overrides are merged first.
        return env_settings, init_settings

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
        return self.state_dir / "medgate.sqlite3"


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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


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
    data = _merge(data, overrides)
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
    return settings
