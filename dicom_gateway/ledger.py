"""The gateway's durable bookkeeping: what a received instance, a refusal, a finished sender and a
completed group mean for the gateway's tables (:mod:`dicom_gateway.store`, which holds the SQL and
describes the tables).

Every function takes the :class:`dicom_gateway.store.GatewayStore` and commits its own transaction;
an instance row and its group update are one transaction.  A store that carries the gateway's as
``.gateway`` (the server's :class:`serving.store.Store`) is accepted as well.

Several nodes may share one database (PostgreSQL): a claimed dispatch is leased to the node that
claimed it (``node_id``) for ``lease_s`` seconds of the database's clock, renewed while that node
holds it (:class:`dicom_gateway.leases.DispatchLeases`) and taken over by another node once it
expires (:func:`take_over_expired`).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dicom_gateway.config import DicomConfig
from dicom_gateway.status import StoreStatus
from dicom_gateway.store import Dispatch, GatewayStore, Group, SeriesGeometry

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the functions' defaults

#: The node id of a gateway that runs alone; each of several nodes on one database has its own
#: (:data:`kernel.cluster.NODE_ID`).
LOCAL_NODE = "local"
#: Expired dispatches one takeover sweep claims at most (the rest are left to the next sweep, or
#: to the other nodes' sweeps).
TAKEOVER_BATCH = 16


def gateway_of(store) -> GatewayStore:
    """The gateway store of ``store`` (itself, or the one it carries as ``.gateway``)."""
    return store if isinstance(store, GatewayStore) else store.gateway


def check_lease(lease_s: float) -> float:
    """``lease_s`` as a float when it is positive, else :class:`ValueError` naming it."""
    if not lease_s > 0:
        raise ValueError(f"`lease_s` must be positive, {lease_s!r} is given.")
    return float(lease_s)


def database_unreachable(store, exc: BaseException) -> bool:
    """Whether ``exc`` says the store's database cannot be reached now
    (:meth:`GatewayStore.unreachable`): the work is left for later, not failed."""
    return gateway_of(store).unreachable(exc)


def clock(store) -> float:
    """Now, for the gateway's times that nodes compare with each other (arrivals, releases,
    completion, processing): on PostgreSQL the database's clock, so that a node whose clock is off
    does not see another node's study as quiet while it still arrives; on SQLite (one machine) this
    process's clock, at no cost."""
    database = gateway_of(store).database
    return database.now() if database.dialect == "postgresql" else time.time()


def ensure_schema(store) -> None:
    """The gateway's tables exist once its store is open (:class:`GatewayStore` creates them)."""
    gateway_of(store)


@dataclass(frozen=True)
class Arrival:
    """What the gateway knows about one received instance (see :func:`record_instance`)."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    path: str
    calling_ae: str
    group_uid: str
    models: tuple[str, ...]
    expected_count: int | None
    single_image: bool


def record_instance(store, arrival: Arrival) -> bool:
    """Record an instance whose file is already durable; False when it was a duplicate.

    One transaction: the store's ``instances`` and ``studies`` rows, the instance's routes, and the
    group's counters.  An instance arriving after its group completed is stored and counted, but
    the group is not dispatched again (the ``reason`` column says so).  The commit does not wait
    for the disk: the spool file is the durable record, and :func:`unrecorded_files` finds any file
    whose row a power loss took, so the gateway records it again at start.
    """
    return record_instances(store, [arrival])[0]


def record_instances(store, arrivals: list[Arrival]) -> list[bool]:
    """:func:`record_instance` for several instances in one transaction; which were new."""
    return gateway_of(store).record_arrivals(arrivals, clock(store))


#: Longest refusal text a ``refused`` study row keeps (the log line has the reason whole).
MAX_REFUSAL_CHARS = 256
#: C0 and C1 controls, DEL, and the Unicode line and paragraph separators: removed from stored text.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Refusal:
    """An instance the intake refused (see :func:`record_refusal`): its study, the sender, the status
    it was answered and why."""

    study_uid: str
    sop_instance_uid: str
    calling_ae: str
    status: StoreStatus
    reason: str

    def __post_init__(self) -> None:
        if self.status == StoreStatus.SUCCESS:
            raise ValueError(f"a refusal needs a non-success status, {self.status!r} is given")

    @property
    def detail(self) -> str:
        """The study row's text: status, sender and reason, control characters removed, at most
        :data:`MAX_REFUSAL_CHARS` characters."""
        status = StoreStatus(self.status)
        text = _CONTROLS.sub(" ", f"0x{status:04X} {status.name} from {self.calling_ae or '?'}: {self.reason}")
        return text if len(text) <= MAX_REFUSAL_CHARS else text[:MAX_REFUSAL_CHARS - 1] + "…"


def record_refusal(store, refusal: Refusal) -> None:
    """Show a refused instance's study on the worklist: a new study row ``refused`` with
    :attr:`Refusal.detail`, or the newest refusal on a study that is ``refused`` already.  A study with
    stored instances keeps its status (its instances are processed; the log names the refusal), and a
    later stored instance moves a ``refused`` study on to ``receiving`` (:func:`record_instances`)."""
    gateway_of(store).record_refusal(refusal, clock(store))


def unrecorded_files(store, spool: Path, older_than_s: float = 0.0) -> list[Path]:
    """Spool files with no ``instances`` row (their non-durable commit was lost), oldest first;
    with ``older_than_s``, only those written at least that long ago (a shared spool: a live node's
    row follows its file within moments)."""
    known = gateway_of(store).instance_paths()
    files = [path for path in Path(spool).glob("*/*.dcm") if str(path) not in known]
    cutoff = time.time() - older_than_s
    aged = []
    for path in files:
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # removed meanwhile (retention, another node's quarantine)
            continue
        if older_than_s <= 0 or mtime <= cutoff:
            aged.append((mtime, path))
    return [path for _, path in sorted(aged)]


def mark_released(store, group_uids: Iterable[str]) -> None:
    """A sender finished (association released or aborted, STOW-RS request answered)."""
    groups = list(group_uids)
    if not groups:
        return
    gateway_of(store).release_groups(groups, clock(store))


def orientation_text(orientation: Iterable[float]) -> str:
    """Image Orientation (Patient) as the geometry table keeps it (4 decimals)."""
    return "\\".join(f"{float(v):.4f}" for v in orientation)


def first_geometry(store, series_uid: str, rows: int, columns: int, orientation: str) -> SeriesGeometry:
    """Rows, Columns and orientation of the series' first slice; these, when this is its first."""
    return gateway_of(store).first_geometry(series_uid, SeriesGeometry(rows, columns, orientation))


def geometry_mismatch(first: tuple[int, int, str], rows: int, columns: int, orientation: str) -> str | None:
    """None when a slice fits its series' first slice ``first`` (see :func:`first_geometry`), else why."""
    if first[:2] != (rows, columns):
        return (f"slice size {rows}x{columns} differs from the series' {first[0]}x{first[1]}"
                " (slices of one series must agree in size)")
    if first[2] != orientation:
        return (f"Image Orientation (Patient) {orientation} differs from the series' {first[2]}"
                " (slices of one series must be parallel)")
    return None


def receiving_groups(store) -> list[Group]:
    return gateway_of(store).receiving_groups()


def complete_group(store, group_uid: str, reason: str, *, node_id: str = LOCAL_NODE,
                   lease_s: float = _DICOM.completion.lease_s) -> tuple[str, list[str]] | None:
    """Mark the group complete and claim its dispatches for ``node_id``, atomically, each leased
    for ``lease_s`` (database clock).

    Returns ``(study_uid, models newly claimed)``, or None when another thread, process or node
    completed it first.  The caller hands the study to each returned model; the claim is durable,
    so no model gets the group twice while the claiming node keeps its lease.
    """
    return gateway_of(store).complete_group(group_uid, reason, clock(store), owner=node_id, lease_s=lease_s)


def routed_instances(store, study_uid: str, model: str) -> set[str] | None:
    """SOP Instance UIDs of the study routed to ``model``; None when the gateway recorded none
    (instances added otherwise)."""
    routes = gateway_of(store).instance_routes(study_uid)
    if not routes:
        return None
    return {uid for uid, models in routes.items() if model in models}


def mark_processed(store, study_uid: str, model: str) -> None:
    """``model`` has produced (or failed) its results for the study: its lease ends, and it is
    neither resubmitted at restart nor taken over."""
    gateway_of(store).mark_processed(study_uid, model, clock(store))


def unprocessed_dispatches(store) -> list[tuple[str, str]] | None:
    """``(study_uid, model)`` of every claimed dispatch not yet processed, by any node, oldest
    first; None when the gateway never dispatched anything (studies were marked complete otherwise)."""
    gateway = gateway_of(store)
    return gateway.unprocessed_dispatches() if gateway.has_dispatches() else None


def resume_dispatches(store, node_id: str = LOCAL_NODE,
                      lease_s: float = _DICOM.completion.lease_s) -> list[tuple[str, str]] | None:
    """At a node's start: claim (lease to ``node_id``) its own unprocessed dispatches and those whose
    lease expired; ``(study_uid, model)`` of each, oldest first.  A dispatch another node holds
    under a live lease is left to it.  None when the gateway never dispatched anything."""
    gateway = gateway_of(store)
    return gateway.claim_dispatches(node_id, lease_s, own=True) if gateway.has_dispatches() else None


def take_over_expired(store, node_id: str = LOCAL_NODE, lease_s: float = _DICOM.completion.lease_s,
                      limit: int = TAKEOVER_BATCH) -> list[tuple[str, str]]:
    """Claim for ``node_id`` (at most ``limit``) unprocessed dispatches whose lease expired on the
    database's clock (their node died, or lost the database, or stopped); ``(study_uid, model)`` of
    each.  Of several nodes sweeping at once, one wins each dispatch."""
    return gateway_of(store).claim_dispatches(node_id, lease_s, limit=limit)


def renew_leases(store, node_id: str, keys: Iterable[tuple[str, str]],
                 lease_s: float) -> dict[tuple[str, str], bool | None]:
    """Renew ``node_id``'s leases on the dispatches ``keys`` (``(study_uid, model)``): per key True
    (held), False (another node's now, or processed), None (no such dispatch: work that did not come
    through the gateway, e.g. an upload)."""
    return gateway_of(store).renew_leases(node_id, keys, lease_s)


def dispatches(store, study_uid: str) -> list[Dispatch]:
    return gateway_of(store).dispatches(study_uid)
