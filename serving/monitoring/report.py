"""The figures of one model version at one site over the monitoring window.

Per (model, version, site), from the SRs written in the window (:mod:`serving.monitoring.window`)
and the clinicians' verdicts (:mod:`serving.monitoring.verdicts`):

* ``n`` results, the positive rate (share of results with a positive finding);
* the score histogram on :data:`models.reference.SCORE_EDGES` and its PSI against the version's
  reference (:mod:`serving.monitoring.drift`);
* each input feature's PSI against the reference, over the results that recorded it;
* agreement with feedback and PPV, where verdicts exist.

:meth:`GroupReport.lines` holds them to the ``monitoring`` lines: drift only over at least
``min_results`` results (an input feature: that many results recorded it), agreement over at
least ``min_feedback`` verdicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from models.reference import SCORE_EDGES, ModelReference, histogram
from serving.config import MonitoringConfig
from serving.monitoring.alerts import AGREEMENT, INPUT_PSI, SCORE_PSI, Line
from serving.monitoring.drift import psi, psi_of_values
from serving.monitoring.window import ServedResult
from serving.monitoring.verdicts import Tally

References = Callable[[str, str], "ModelReference | None"]


@dataclass
class GroupReport:
    """The figures of one model version at one site (see the module docstring)."""

    model: str
    version: str
    site: str
    n: int = 0
    positives: int = 0
    score_counts: list[int] = field(default_factory=lambda: [0] * (len(SCORE_EDGES) - 1))
    score_psi: float | None = None
    input_psi: dict[str, float] = field(default_factory=dict)
    input_n: int = 0
    reference: ModelReference | None = None
    feedback: Tally = field(default_factory=Tally)

    @property
    def positive_rate(self) -> float | None:
        return self.positives / self.n if self.n else None

    def lines(self, config: MonitoringConfig) -> list[Line]:
        common = dict(model=self.model, version=self.version, site=self.site)
        lines = []
        if self.score_psi is not None and self.n >= config.min_results:
            lines.append(Line(kind=SCORE_PSI, value=self.score_psi, limit=config.score_psi_alert, **common))
        if self.input_n >= config.min_results:
            lines += [Line(kind=INPUT_PSI, value=v, limit=config.input_psi_alert, feature=k, **common)
                      for k, v in sorted(self.input_psi.items())]
        if self.feedback.agreement is not None and self.feedback.n >= config.min_feedback:
            lines.append(Line(kind=AGREEMENT, value=self.feedback.agreement, limit=config.min_agreement, **common))
        return lines

    def as_json(self) -> dict:
        ref = self.reference
        return {"model": self.model, "version": self.version, "site": self.site, "n": self.n,
                "positive_rate": self.positive_rate,
                "score": {"edges": list(SCORE_EDGES), "counts": self.score_counts},
                "score_psi": self.score_psi, "input_psi": self.input_psi, "input_n": self.input_n,
                "feedback": self.feedback.as_json(),
                "reference": None if ref is None else {
                    "n": ref.n, "positive_rate": ref.positive_rate, "threshold": ref.threshold,
                    "score_counts": list(ref.score.counts), "made_at": ref.made_at, "data": ref.data}}


def group_reports(results: Iterable[ServedResult], references: References,
                  tallies: dict[tuple[str, str], dict[str, Tally]]) -> list[GroupReport]:
    """One :class:`GroupReport` per (model, version, site) seen in ``results`` or ``tallies``."""
    served: dict[tuple[str, str, str], list[ServedResult]] = {}
    for r in results:
        served.setdefault((r.model, r.version, r.site), []).append(r)
    keys = set(served) | {(m, v, site) for (m, v), sites in tallies.items() for site in sites}
    reports = []
    for model, version, site in sorted(keys):
        rows = served.get((model, version, site), [])
        g = GroupReport(model, version, site, n=len(rows), positives=sum(r.positive for r in rows),
                        score_counts=histogram([r.score for r in rows], SCORE_EDGES) if rows else
                        [0] * (len(SCORE_EDGES) - 1),
                        reference=references(model, version),
                        feedback=tallies.get((model, version), {}).get(site, Tally()))
        if g.reference is not None and rows:
            g.score_psi = psi(g.reference.score.counts, g.score_counts)
            for name, expected in sorted(g.reference.inputs.items()):
                values = [r.inputs[name] for r in rows if name in r.inputs]
                if values:
                    g.input_psi[name] = psi_of_values(expected, values)
                    g.input_n = max(g.input_n, len(values))
        reports.append(g)
    return reports
