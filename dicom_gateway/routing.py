"""Which model deployment a received instance goes to.

A rule matches on Modality and Body Part Examined; the first matching rule wins.  An instance
that matches nothing is stored and logged (status ``unrouted``), never refused.
Single-image modalities (CR, DX, VL photos) complete their study at association release.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom import Dataset

#: PS3.3 C.7.3.1.1.1 Modality defined terms that carry one image per acquisition.
SINGLE_IMAGE_MODALITIES = frozenset({"CR", "DX", "XC", "GM"})


@dataclass(frozen=True)
class Rule:
    """Send instances whose Modality is in ``modalities`` (and body part in ``body_parts``,
    when given; an absent Body Part Examined matches) to deployment ``model``."""

    model: str
    modalities: frozenset[str]
    body_parts: frozenset[str] = frozenset()

    def matches(self, ds: Dataset) -> bool:
        if str(ds.get("Modality", "")).upper() not in self.modalities:
            return False
        body_part = str(ds.get("BodyPartExamined", "")).upper()
        return not self.body_parts or not body_part or body_part in self.body_parts


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule(model="tb", modalities=frozenset({"CR", "DX"}), body_parts=frozenset({"CHEST"})),
)


def route(ds: Dataset, rules: tuple[Rule, ...] = DEFAULT_RULES) -> str | None:
    """The deployment name for ``ds``, or None when no rule matches."""
    for rule in rules:
        if rule.matches(ds):
            return rule.model
    return None
