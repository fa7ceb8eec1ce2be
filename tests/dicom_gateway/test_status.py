"""Named statuses and A-ASSOCIATE-RJ reasons (PS3.8 9.3.4, Table 9-21)."""
from __future__ import annotations

import pytest

from dicom_gateway.acceptor import Rejection
from dicom_gateway.status import (REASONS_OF_SOURCE, AcseReason, PresentationReason, RejectResult, RejectSource,
                                  ServiceUserReason)


def test_every_reason_has_its_own_name():
    # One IntEnum for all sources aliased equal values: LOCAL_LIMIT_EXCEEDED.name was
    # "PROTOCOL_VERSION_NOT_SUPPORTED" and the log named the wrong reason.
    assert PresentationReason.LOCAL_LIMIT_EXCEEDED.name == "LOCAL_LIMIT_EXCEEDED"
    assert AcseReason.PROTOCOL_VERSION_NOT_SUPPORTED.name == "PROTOCOL_VERSION_NOT_SUPPORTED"
    assert ServiceUserReason.APPLICATION_CONTEXT_NOT_SUPPORTED.name == "APPLICATION_CONTEXT_NOT_SUPPORTED"
    for reasons in REASONS_OF_SOURCE.values():
        assert len({m.value for m in reasons}) == len(list(reasons)), f"{reasons.__name__} aliases a value"


def test_table_9_21_values():
    assert [int(m) for m in ServiceUserReason] == [1, 2, 3, 7]
    assert [int(m) for m in AcseReason] == [1, 2]
    assert [int(m) for m in PresentationReason] == [1, 2]
    assert set(REASONS_OF_SOURCE) == set(RejectSource)


def test_a_rejection_gives_a_reason_of_its_source():
    Rejection(RejectResult.TRANSIENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
              PresentationReason.LOCAL_LIMIT_EXCEEDED, "spool full")
    with pytest.raises(ValueError, match="PresentationReason"):
        Rejection(RejectResult.PERMANENT, RejectSource.SERVICE_PROVIDER_PRESENTATION,
                  AcseReason.PROTOCOL_VERSION_NOT_SUPPORTED, "wrong source")
