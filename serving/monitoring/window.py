"""The served results monitoring reads: one per SR written in a window, with its sending site.

A model version writes one TID 1500 SR per image (a 2D model) or per study (a volume model) and
records it in the server's ``results`` table (:meth:`serving.store.Store.add_result`) with the
findings' probabilities and, where the pipeline measured them, the input features
(``summary["inputs"]``, :mod:`models.reference`).  The other result kinds of the same image (SC,
GSPS, SEG) repeat its findings and are not read.

The site is the sending AE title of the study's instances (the gateway's ``instances.calling_ae``,
read with the results by :meth:`serving.store.Store.results_since`),
or :data:`UPLOAD_SITE` for an image uploaded over HTTP (``summary["source"] == "upload"``);
:data:`UNKNOWN_SITE` when neither is known.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


UPLOAD_SITE = "upload"
UNKNOWN_SITE = "unknown"
#: The result kind read: one per image or volume the model judged.
SR_KIND = "sr"


@dataclass(frozen=True)
class ServedResult:
    """One judged image (or volume): its score (the largest finding probability), whether any
    finding was positive, and its input features."""

    study_uid: str
    model: str
    version: str
    site: str
    created_at: float
    score: float
    positive: bool
    inputs: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, study_uid: str, summary: dict[str, Any], created_at: float, calling_ae: str | None) -> ServedResult | None:
        """The row's reading, or None for a row without model, version or findings."""
        findings = summary.get("findings") or []
        if not (summary.get("model") and summary.get("version") and findings):
            return None
        site = UPLOAD_SITE if summary.get("source") == "upload" else (calling_ae or "").strip() or UNKNOWN_SITE
        inputs = summary.get("inputs") or {}
        return cls(study_uid, str(summary["model"]), str(summary["version"]), site, float(created_at),
                   max(float(f.get("probability") or 0.0) for f in findings),
                   any(bool(f.get("positive")) for f in findings),
                   {str(k): float(v) for k, v in inputs.items() if isinstance(v, (int, float))})


class ResultWindow:
    """The results of a window, read from the server's store (:meth:`serving.store.Store.results_since`)."""

    def __init__(self, store) -> None:
        self.store = store

    def since(self, since: float, limit: int) -> list[ServedResult]:
        """The SRs written after ``since`` (epoch seconds), the newest ``limit`` of them, oldest first."""
        if limit < 1:
            raise ValueError(f"`limit` must be at least 1, {limit} is given.")
        found = (ServedResult.of(r.study_uid, r.summary, r.created_at, ae)
                 for r, ae in self.store.results_since(SR_KIND, since, limit))
        return [r for r in found if r is not None]
