"""medgate's private coding scheme ``99MEDGATE``: one identity for DICOM and FHIR.

A few concepts have no standard code yet (derm classes ``bkl``, ``df`` and ``vasc`` keep local
codes until a licensed SNOMED CT browser confirms a concept; a site maps them in configuration,
``class_codes``, applied by :func:`map_classes`).  They are written in the private scheme
described here:

* DICOM: Coding Scheme Designator ``99MEDGATE`` (PS3.3 8.2.1.1: private designators start
  with ``99``), identified in every SR that uses it by a Coding Scheme Identification Sequence
  (0008,0110) item (PS3.3 C.12.1.1.3) with the UID, name and responsible organization below;
* FHIR: ``Coding.system`` is the same UID as ``urn:oid:`` (FHIR R4 terminologies: an OID is
  a valid code system URI where no URL is defined).

The UID is an ISO/IEC 9834-8 (ITU-T X.667) UUID-derived OID, ``2.25.<UUID as an integer>``:
anyone may create one without registration, and the UUID below was generated for this scheme
only, so medgate owns it without owning a domain name.  It must never change: codes stored
with it would lose their meaning.
"""
from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

#: PS3.3 8.2.1.1 Coding Scheme Designator of medgate's private codes.
DESIGNATOR = "99MEDGATE"
#: The UUID generated once for this scheme (never change it).
_SCHEME_UUID = uuid.UUID("faed3034-192c-4d27-a1fe-d2e61df6a950")
#: Coding Scheme UID (0008,010C): ISO/IEC 9834-8 UUID-derived OID.
UID = f"2.25.{_SCHEME_UUID.int}"
#: FHIR ``Coding.system`` of the scheme.
SYSTEM_URI = f"urn:oid:{UID}"
#: Coding Scheme Name (0008,0115) and Coding Scheme Responsible Organization (0008,0116).
NAME = "medgate local codes"
RESPONSIBLE_ORGANIZATION = "medgate contributors"


def is_private(designator: str) -> bool:
    """True for a private Coding Scheme Designator (PS3.3 8.2.1.1: it starts with ``99``)."""
    return designator.startswith("99")


def map_classes(classes: Sequence[Mapping[str, Any]],
                codes: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """A multi-class model's ``classes`` (its metadata: ``name``, ``value``, ``scheme``, ``meaning``)
    with the site's codes in place of the card's, e.g. derm's ``bkl`` mapped to a SNOMED CT concept.

    Parameters
    ----------
    classes
        The model card's classes, in output order.
    codes
        Class name -> ``{"value", "scheme", "meaning"}`` (configuration ``class_codes.<model>``).

    Returns
    -------
    list[dict]
        Copies of ``classes``; a mapped class gets the configured code, ``mapped_by:
        "configuration"`` and the card's code under ``card_code``, and loses ``snomed_ct:
        "UNVERIFIED"``.

    Raises
    ------
    ValueError
        A configured class name the model does not have, or a code without value, scheme or meaning.
    """
    names = [str(c["name"]) for c in classes]
    unknown = sorted(set(codes) - set(names))
    if unknown:
        raise ValueError(f"class_codes name classes the model does not have: {', '.join(unknown)}; "
                         f"its classes are {', '.join(names)}.")
    mapped = []
    for card in classes:
        entry = dict(card)
        code = codes.get(str(card["name"]))
        if code is not None:
            missing = [k for k in ("value", "scheme", "meaning") if not str(code.get(k) or "").strip()]
            if missing:
                raise ValueError(f"class_codes.{card['name']} lacks {', '.join(missing)}, {dict(code)!r} is given.")
            entry.pop("snomed_ct", None)
            entry.update(value=str(code["value"]), scheme=str(code["scheme"]), meaning=str(code["meaning"]),
                         mapped_by="configuration",
                         card_code={k: card.get(k) for k in ("value", "scheme", "meaning")})
        mapped.append(entry)
    return mapped
