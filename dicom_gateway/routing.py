"""Which model deployments a received instance goes to: rules from the ``dicom.routes`` config.

A rule matches on Modality, Body Part Examined, SOP Class UID, Series Description (a regular
expression, searched case-insensitively), the calling and called AE titles, and the image size
(Rows and Columns bounds).  Every criterion left empty matches anything; an *absent* Body Part
Examined matches a rule that lists body parts (modalities often leave it empty).  Every matching
rule contributes its models, in rule order, without duplicates.  An instance that matches nothing
is stored and logged (study status ``unrouted``), never refused.

Single-image modalities (CR, DX, XC, GM, DMS: PS3.3 C.7.3.1.1.1) complete their study at association
release, see :mod:`dicom_gateway.completion`.

The default rules (:data:`DEFAULT_RULES`: ``dicom.routes``' default, written in
:mod:`dicom_gateway.config`) send chest radiographs to ``tb``, chest CT to ``nodule``, and skin photographs
to ``derm``: Modality XC (External-camera Photography) or DMS (Dermoscopy), and VL Microscopic Images
of the skin (dermatoscopes that predate the Dermoscopic Photography IOD write them; an absent Body
Part Examined matches, so a site that stores pathology as VL Microscopic Images without one narrows
or removes that rule).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from pydicom import Dataset

from dicom_gateway.config import DicomConfig

#: PS3.3 C.7.3.1.1.1 Modality defined terms that carry one image per acquisition.
SINGLE_IMAGE_MODALITIES = frozenset({"CR", "DX", "XC", "GM", "DMS"})
#: Modalities whose series are volumes of parallel slices (geometry is checked per series).
VOLUME_MODALITIES = frozenset({"CT", "MR", "PT"})


def _upper_set(name: str, values: Iterable[str] | str | None) -> frozenset[str]:
    if values is None:
        return frozenset()
    if isinstance(values, str):
        values = [values]
    out = frozenset(str(v).strip().upper() for v in values)
    if any(not v for v in out):
        raise ValueError(f"`{name}` must not contain empty values, {sorted(out)} is given.")
    return out


@dataclass(frozen=True)
class Rule:
    """Send matching instances to each deployment in ``models``.

    Parameters
    ----------
    models
        Deployment names (at least one).
    modalities, body_parts, sop_classes, calling_aes, called_aes
        Accepted values (case-insensitive); empty accepts any.
    series_description
        Regular expression searched in Series Description (0008,103E); None accepts any.
    min_rows, min_columns, max_rows, max_columns
        Image size bounds in pixels; None leaves that side open.

    Raises
    ------
    ValueError
        No model, an invalid regular expression, or a negative / inverted size bound.
    """

    models: tuple[str, ...]
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    sop_classes: frozenset[str] = frozenset()
    series_description: str | None = None
    calling_aes: frozenset[str] = frozenset()
    called_aes: frozenset[str] = frozenset()
    min_rows: int | None = None
    min_columns: int | None = None
    max_rows: int | None = None
    max_columns: int | None = None
    _pattern: re.Pattern | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
        if not models or any(not m for m in models):
            raise ValueError(f"`models` must name at least one deployment, {self.models!r} is given.")
        object.__setattr__(self, "models", models)
        for name in ("modalities", "body_parts", "sop_classes", "calling_aes", "called_aes"):
            object.__setattr__(self, name, _upper_set(name, getattr(self, name)))
        if self.series_description is not None:
            try:
                pattern = re.compile(self.series_description, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"`series_description` must be a regular expression, "
                                 f"{self.series_description!r} is given: {exc}") from None
            object.__setattr__(self, "_pattern", pattern)
        for name in ("min_rows", "min_columns", "max_rows", "max_columns"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"`{name}` must be a positive number of pixels, {value!r} is given.")
        for low, high in (("min_rows", "max_rows"), ("min_columns", "max_columns")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"`{low}` ({lo}) must not exceed `{high}` ({hi}).")

    @classmethod
    def from_config(cls, item: Mapping[str, Any]) -> "Rule":
        """Build a rule from one ``dicom.routes`` entry (``models`` or ``model`` plus criteria)."""
        data = dict(item)
        if "model" in data:
            data["models"] = (data.pop("model"),)
        renamed = {"modality": "modalities", "body_part": "body_parts", "sop_class": "sop_classes",
                   "calling_ae": "calling_aes", "called_ae": "called_aes"}
        for old, new in renamed.items():
            if old in data:
                data[new] = data.pop(old)
        return cls(**data)

    def matches(self, ds: Dataset, calling_ae: str = "", called_ae: str = "") -> bool:
        def within(value: Any, lo: int | None, hi: int | None) -> bool:
            n = int(value or 0)
            return (lo is None or n >= lo) and (hi is None or n <= hi)

        if self.modalities and str(ds.get("Modality", "")).upper() not in self.modalities:
            return False
        body_part = str(ds.get("BodyPartExamined", "")).upper()
        if self.body_parts and body_part and body_part not in self.body_parts:
            return False
        if self.sop_classes and str(ds.get("SOPClassUID", "")).upper() not in self.sop_classes:
            return False
        if self._pattern is not None and not self._pattern.search(str(ds.get("SeriesDescription", ""))):
            return False
        if self.calling_aes and calling_ae.strip().upper() not in self.calling_aes:
            return False
        if self.called_aes and called_ae.strip().upper() not in self.called_aes:
            return False
        return (within(ds.get("Rows"), self.min_rows, self.max_rows)
                and within(ds.get("Columns"), self.min_columns, self.max_columns))


def rules_from_config(items: Iterable[Mapping[str, Any]], known_models: Iterable[str] | None = None
                      ) -> tuple[Rule, ...]:
    """Validate ``dicom.routes`` entries; with ``known_models``, every named model must be one.

    Raises
    ------
    ValueError
        Naming the entry (``dicom.routes[2]``) and what is wrong with it.
    """
    known = set(known_models) if known_models is not None else None
    rules = []
    for index, item in enumerate(items):
        try:
            rule = Rule.from_config(item)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"dicom.routes[{index}]: {exc}") from None
        if known is not None:
            unknown = [m for m in rule.models if m not in known]
            if unknown:
                raise ValueError(f"dicom.routes[{index}]: model(s) {unknown} are not deployed; "
                                 f"deployed: {sorted(known)}")
        rules.append(rule)
    return tuple(rules)


#: ``dicom.routes``' default (:class:`dicom_gateway.config.DicomConfig`, written there only) as rules.
DEFAULT_RULES: tuple[Rule, ...] = rules_from_config(
    [route.model_dump(exclude_none=True) for route in DicomConfig().routes])


def routes(ds: Dataset, rules: tuple[Rule, ...] = DEFAULT_RULES, calling_ae: str = "",
           called_ae: str = "") -> tuple[str, ...]:
    """Every deployment ``ds`` goes to, in rule order; empty when no rule matches."""
    out: dict[str, None] = {}
    for rule in rules:
        if rule.matches(ds, calling_ae, called_ae):
            out.update(dict.fromkeys(rule.models))
    return tuple(out)


def route(ds: Dataset, rules: tuple[Rule, ...] = DEFAULT_RULES) -> str | None:
    """The first deployment for ``ds``, or None when no rule matches."""
    found = routes(ds, rules)
    return found[0] if found else None
