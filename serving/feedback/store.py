"""The feedback store: clinicians' verdicts and the CDS Hooks cards they answer, in the shared database.

Tables (created by :class:`FeedbackStore`; the server owns them):

``clinician_feedback``
    One row per verdict (:class:`serving.feedback.records.Feedback`): kind, verdict, model and
    version, target, patient, study, site, who, role, reason, comment, missed point, time.
    Append-only for the monitoring and retraining readers: a later verdict on the same target
    by the same person is a new row; the newest counts.
``cds_cards``
    Each CDS Hooks card issued (uuid, service, patient, the model version it speaks for), so that
    the EHR's feedback on a card can be checked and filed under that model version.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Iterable

from kernel.database import Database, Record, open_database
from kernel.migrations import Migration, migrate
from serving.feedback.records import Feedback

SCHEMA = """
CREATE TABLE IF NOT EXISTS clinician_feedback (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- finding | alert | card
    verdict TEXT NOT NULL,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    target TEXT NOT NULL,          -- Observation/<id> | Flag/<id> | Card/<uuid>
    who TEXT NOT NULL,
    role TEXT,
    recorded_at REAL NOT NULL,
    patient TEXT,
    study_uid TEXT,
    site TEXT,
    reason TEXT,
    comment TEXT,
    point_x REAL,
    point_y REAL
);
CREATE INDEX IF NOT EXISTS clinician_feedback_model ON clinician_feedback(model, model_version, recorded_at);
CREATE INDEX IF NOT EXISTS clinician_feedback_study ON clinician_feedback(study_uid);
CREATE INDEX IF NOT EXISTS clinician_feedback_target ON clinician_feedback(target);
CREATE TABLE IF NOT EXISTS cds_cards (
    uuid TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    patient TEXT,
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    summary TEXT NOT NULL,
    client TEXT,
    issued_at REAL NOT NULL
);
"""
#: The feedback tables' schema steps (:mod:`kernel.migrations`); 1: the schema when versions began.
MIGRATIONS = (Migration(1, "clinician feedback and issued cards", SCHEMA),)
_COLUMNS = tuple(f.name for f in fields(Feedback))
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM clinician_feedback"
_INSERT = f"INSERT OR IGNORE INTO clinician_feedback({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"


@dataclass(frozen=True)
class IssuedCard(Record):
    """A CDS Hooks card as issued (a row of ``cds_cards``)."""

    uuid: str
    service: str
    patient: str | None
    model: str
    model_version: str
    summary: str
    client: str | None
    issued_at: float

_CARD_COLUMNS = ", ".join(f.name for f in fields(IssuedCard))


class FeedbackStore:
    """The feedback tables on ``database`` (a :class:`kernel.database.Database`, its path or its
    ``postgresql://`` URL: :func:`kernel.database.open_database`)."""

    def __init__(self, database: Database | str | os.PathLike) -> None:
        self.database = database if isinstance(database, Database) else open_database(database)
        migrate(self.database, "feedback", MIGRATIONS)

    def add(self, items: Iterable[Feedback]) -> int:
        """Record verdicts, all or none (one transaction); one whose id is stored already (the same
        verdict sent again: :func:`serving.feedback.records.feedback_id`) is kept once.  Returns how
        many rows were added."""
        rows = [tuple(getattr(f, c) for c in _COLUMNS) for f in items]
        with self.database.transaction() as db:
            return sum(db.execute(_INSERT, row).rowcount for row in rows)

    def of_study(self, study_uid: str) -> list[Feedback]:
        """A study's finding verdicts, oldest first."""
        return self._select(" WHERE study_uid=? ORDER BY recorded_at", (study_uid,))

    def of_target(self, target: str) -> list[Feedback]:
        return self._select(" WHERE target=? ORDER BY recorded_at", (target,))

    def of_model(self, model: str, version: str | None = None, since: float = 0.0) -> list[Feedback]:
        """Verdicts on one model (one version), recorded after ``since``, oldest first: what the
        monitoring page and ``--from-feedback`` training read."""
        sql, params = " WHERE model=? AND recorded_at>?", [model, since]
        if version is not None:
            sql, params = sql + " AND model_version=?", params + [version]
        return self._select(sql + " ORDER BY recorded_at", params)

    def _select(self, where: str, params) -> list[Feedback]:
        return [Feedback(*row) for row in self.database.rows(_SELECT + where, params)]

    # -- CDS Hooks cards ---------------------------------------------------------------------------
    def add_cards(self, cards: Iterable[IssuedCard]) -> None:
        rows = [tuple(getattr(c, f.name) for f in fields(IssuedCard)) for c in cards]
        with self.database.transaction() as db:
            db.executemany(f"INSERT OR IGNORE INTO cds_cards({_CARD_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)

    def cards(self, uuids: Iterable[str]) -> dict[str, IssuedCard]:
        """The issued cards among ``uuids``, by uuid (unknown ones are absent)."""
        wanted = list(dict.fromkeys(uuids))
        found: dict[str, IssuedCard] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            for row in self.database.rows(f"SELECT {_CARD_COLUMNS} FROM cds_cards WHERE uuid IN ({','.join('?' * len(chunk))})",
                                          chunk):
                found[row["uuid"]] = IssuedCard(*row)
        return found
