"""The ``dicom:`` section of the configuration: the gateway's own typed settings and their defaults.

:class:`serving.config.Settings` composes it; :mod:`dicom_gateway.wiring` builds the Storage SCP from
it, and :data:`dicom_gateway.routing.DEFAULT_RULES` are its default ``routes``.  Every default is
written here only: a constructor whose parameter is a key of this section reads its default from a
module-level ``_DICOM = DicomConfig()`` (``max_associations: int = _DICOM.max_associations``);
``tests/serving/test_config.py`` checks it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kernel.config import Section

#: PS3.5 6.2: an AE title is 1-16 characters of the default repertoire, no backslash or controls.
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"must be 1-16 printable characters without backslash, {value!r} is given")
    return value.strip()


class DicomPeer(Section):
    """One allowed association requestor: its calling AE title and source address."""

    ae_title: str
    host: str  # IP address the association must come from; "*" = any
    _check_ae = field_validator("ae_title")(check_ae_title)


class DicomTls(Section):
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


class DicomCompletion(Section):
    group_by: Literal["study", "series"] = "study"
    quiet_period_s: float = Field(2.0, gt=0)  # after the last instance, when no count is known
    poll_interval_s: float = Field(0.1, gt=0)  # how often the store is checked (STOW-RS, restarts)
    # a node's hold on each dispatch it claimed (database clock), renewed every lease_s / 3 while
    # the dispatch is queued or processed there; once expired another node takes it over. A long
    # model call (a CT on a CPU) is covered by the renewals, not by a long lease: this is the time a
    # dead node's work waits before another node picks it up
    lease_s: float = Field(30.0, gt=0)


class DicomStorage(Section):
    retention_days: float | None = Field(None, gt=0)  # processed studies older than this are deleted
    min_free_bytes: int = Field(1024**3, ge=0)  # below this, associations/instances are refused
    # fsync each instance before success; false only where the disk's write cache survives power loss
    fsync: bool = True
    # pre-written slot files kept ready per instance size (one data flush per instance instead of a
    # new file's journal commits; see dicom_gateway/slots.py); 0 writes each instance as a new file
    slot_pool_bytes: int = Field(256 * 1024**2, ge=0)
    # instances committed at the same moment on several associations share one flush (syncfs of the
    # spool's file system; see dicom_gateway/group_flush.py). Off: on the 2-core VM four associations
    # ran 454-578 instances/s slower with it on (docs/dicom-gateway.md); for disks whose flush is dear
    group_commit: bool = False


class DicomRoute(Section):
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


class DicomConfig(Section):
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
    _check_ae = field_validator("ae_title")(check_ae_title)
