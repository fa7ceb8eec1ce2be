"""Study completion: decide when a group of instances is complete and hand it to its models once.

Rules, checked in this order for every group still ``receiving`` (see ``docs/dicom-gateway.md``):

1. **Known count.**  The group holds at least the number of instances the data announces:
   Number of Study Related Instances (0020,1208) when grouping by study, Number of Series Related
   Instances (0020,1209) or else Images in Acquisition (0020,1002) when grouping by series.  The
   largest value seen in the group counts.  Complete at once.
2. **Single-image release.**  Every instance is of a single-image modality (CR, DX, XC, GM) and
   the sender that delivered the last one has finished (A-RELEASE, A-ABORT, or the end of the
   STOW-RS request).  Complete at once: such a sender sends each image of the exam in one go.
3. **Quiet period.**  Otherwise, ``quiet_period_s`` (``dicom.completion``) after the last instance, or
   after the assembler started when that is later: a sender cut off by our restart gets the
   same quiet period to come back and finish.

The decision reads the store, not memory, so it covers instances written by the STOW-RS route in
the HTTP ingress process and survives restarts: after ``kill -9`` the groups left ``receiving``
are picked up with their counts and arrival times.  Completing claims a durable dispatch marker
per model (:func:`dicom_gateway.ledger.complete_group`) before the pipeline is called.  Completion
and hand-off run under the Study Instance UID as correlation id (:mod:`kernel.correlation`).

Several nodes may run an assembler on one database: each group completes once, on whichever node
gets there first, and its dispatches are leased to that node (``node_id``, ``lease_s``; see
:mod:`dicom_gateway.leases`).  Every ``lease_s / 3`` the assembler also sweeps for dispatches whose
lease expired (a node died, or lost the database) and hands those it claims to
``on_study_complete`` as if their groups had completed here.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from dicom_gateway import ledger
from dicom_gateway.config import DicomConfig
from kernel.cluster import check_node_id
from kernel.correlation import bound

log = logging.getLogger("medgate.dicom")

_DICOM = DicomConfig()  # the ``dicom:`` section's defaults, the constructor's defaults

#: Called with ``(study_uid, model)`` once per complete, routed group and model.
StudyCallback = Callable[[str, str], None]
#: Called with ``(group_uid, seconds from the last instance to completion)``, for measurements.
CompletionListener = Callable[[str, float], None]


class StudyAssembler:
    """Completes groups and dispatches them; one background thread.

    Parameters
    ----------
    store
        The medgate store (see :mod:`dicom_gateway.ledger` for the tables it uses).
    on_study_complete
        Called with ``(study_uid, model)`` for each newly claimed dispatch.
    quiet_period_s
        Rule 3's wait after the last instance (default ``dicom.completion.quiet_period_s``).
    poll_interval_s
        How often the store is read when nothing nudges the assembler (default
        ``dicom.completion.poll_interval_s``).
    node_id
        This node's id: the owner of the dispatches it claims (``local`` for a gateway alone;
        each of several nodes on one database needs its own, the same its pipeline is given).
    lease_s
        Length of a dispatch lease (default ``dicom.completion.lease_s``); expired leases are
        swept for every ``lease_s / 3``.
    """

    def __init__(self, store, on_study_complete: StudyCallback, *,
                 quiet_period_s: float = _DICOM.completion.quiet_period_s,
                 poll_interval_s: float = _DICOM.completion.poll_interval_s,
                 node_id: str = ledger.LOCAL_NODE, lease_s: float = _DICOM.completion.lease_s) -> None:
        if quiet_period_s <= 0:
            raise ValueError(f"`quiet_period_s` must be positive, {quiet_period_s!r} is given.")
        if poll_interval_s <= 0:
            raise ValueError(f"`poll_interval_s` must be positive, {poll_interval_s!r} is given.")
        self.store = store
        self.on_study_complete = on_study_complete
        self.quiet_period_s = float(quiet_period_s)
        self.poll_interval_s = float(poll_interval_s)
        self.node_id = check_node_id(node_id)
        self.lease_s = ledger.check_lease(lease_s)
        self._next_sweep = 0.0  # time.monotonic() of the next takeover sweep
        self.listeners: list[CompletionListener] = []
        self._nudge = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = time.time()  # set again by start(), on ledger.clock
        ledger.ensure_schema(store)

    def start(self) -> None:
        self.started_at = ledger.clock(self.store)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="medgate-assembler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._nudge.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def nudge(self) -> None:
        """Check now (an association ended, or a count may have been reached)."""
        self._nudge.set()

    def _run(self) -> None:
        failing = False  # the database did not answer the last round: logged once, not every poll
        while not self._stop.is_set():
            self._nudge.wait(self.poll_interval_s)
            self._nudge.clear()
            try:
                self.check()
                if time.monotonic() >= self._next_sweep:
                    self._next_sweep = time.monotonic() + self.lease_s / 3
                    self.take_over()
            except Exception as exc:  # noqa: BLE001 - keep assembling; the next round retries
                if not failing:
                    log.exception("study completion check failed; retried every %g s", self.poll_interval_s)
                elif not ledger.database_unreachable(self.store, exc):
                    log.exception("study completion check failed")
                failing = True
                continue
            if failing:
                log.info("study completion checks succeed again")
            failing = False

    def take_over(self) -> list[tuple[str, str]]:
        """Claim for this node the dispatches whose lease expired (their node died, lost the
        database, or stopped) and hand each to ``on_study_complete``; returns them."""
        taken = ledger.take_over_expired(self.store, self.node_id, self.lease_s)
        for study, model in taken:
            with bound(study):
                log.warning("study %s: %s taken over by node %s (its lease had expired)", study, model,
                            self.node_id)
                try:
                    self.on_study_complete(study, model)
                except Exception:  # noqa: BLE001 - a failing consumer must not stop the sweep
                    log.exception("study %s: hand-off to %s failed", study, model)
        return taken

    def check(self, now: float | None = None) -> list[str]:
        """Apply the rules once; returns the groups completed by this call."""
        now = ledger.clock(self.store) if now is None else now  # the clock arrivals are dated by
        done = []
        for group in ledger.receiving_groups(self.store):
            reason = self._reason(group, now)
            if reason is None:
                continue
            with bound(group["study_uid"]):
                if self._complete(group, reason, now):
                    done.append(group["group_uid"])
        return done

    def _reason(self, group: dict, now: float) -> str | None:
        expected = group["expected_count"]
        if expected and group["received_count"] >= expected:
            return f"known count {expected} reached"
        if group["single_image"] and group["released_at"] is not None:
            return "single-image sender finished"
        if now - max(group["last_received_at"], self.started_at) >= self.quiet_period_s:
            return f"quiet for {self.quiet_period_s:g} s"
        return None

    def _complete(self, group: dict, reason: str, now: float) -> bool:
        claimed = ledger.complete_group(self.store, group["group_uid"], reason, node_id=self.node_id,
                                        lease_s=self.lease_s)
        if claimed is None:
            return False
        study, models = claimed
        latency_s = max(0.0, now - group["last_received_at"])
        for listener in self.listeners:
            listener(group["group_uid"], latency_s)
        if not models and not group["models"].strip("[]"):
            log.info("study %s (group %s) complete: %s; %d instance(s) stored, no routing rule matched",
                     study, group["group_uid"], reason, group["received_count"])
            return True
        log.info("study %s (group %s) complete: %s; %d instance(s) -> %s", study, group["group_uid"],
                 reason, group["received_count"], ", ".join(models) or "already dispatched")
        for model in models:
            try:
                self.on_study_complete(study, model)
            except Exception:  # noqa: BLE001 - a failing consumer must not stop completion
                log.exception("study %s: hand-off to %s failed", study, model)
        return True
