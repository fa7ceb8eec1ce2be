"""The base class of every layer's configuration section (``dicom:``, ``mqtt:``, ``iomt:``, ...).

Each layer declares its own section next to its code (:mod:`dicom_gateway.config`,
:mod:`iomt.config`, :mod:`serving.config`); :class:`serving.config.Settings` composes them.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A configuration section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
