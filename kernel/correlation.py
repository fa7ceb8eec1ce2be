"""The correlation id of the work in hand, carried with :mod:`contextvars`.

A study's log lines share its Study Instance UID from intake to delivery; an MQTT message's lines
share its id (:mod:`iomt.message_id`).  Entry points set the id once
(:func:`bound`), every log line emitted meanwhile carries it (:mod:`kernel.logs`), and the outbox
stores it with each item so that delivery lines carry it too, in another thread or after a
restart.

The value may be a string or any object whose ``str()`` is the id: such an object is only turned
into a string when something asks for it (:func:`current_id`), so a hot path pays for setting it
and nothing else.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Iterator

#: The id (or an object whose ``str()`` is the id) of what this thread is working on; None: none.
CORRELATION_ID: ContextVar[object | None] = ContextVar("medgate_correlation_id", default=None)


def current_id() -> str | None:
    """The correlation id in effect, or None."""
    value = CORRELATION_ID.get()
    if value is None or isinstance(value, str):
        return value
    return str(value) or None


def bind(value: object | None) -> Token:
    """Set the id (None clears it); returns the token for :func:`reset`."""
    return CORRELATION_ID.set(value or None)


def reset(token: Token) -> None:
    """Restore the id that was in effect before the :func:`bind` that returned ``token``."""
    CORRELATION_ID.reset(token)


@contextmanager
def bound(value: object | None) -> Iterator[None]:
    """``with bound(study_uid): ...``: the id for the block, the previous one after it."""
    token = CORRELATION_ID.set(value or None)
    try:
        yield
    finally:
        CORRELATION_ID.reset(token)
