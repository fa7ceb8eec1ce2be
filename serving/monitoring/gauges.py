"""The monitoring figures as Prometheus gauges (text format 0.0.4), labelled model, version, site.

``medgate_model_positive_rate``, ``medgate_model_score_psi``, ``medgate_model_input_psi`` (and
``feature``), ``medgate_model_feedback_agreement``, ``medgate_model_ppv`` where the figure exists,
``medgate_model_results`` (results in the window), and ``medgate_model_alert`` (and ``kind``,
``feature``): 1 while a line is raised (:mod:`serving.monitoring.alerts`), 0 for a line within its
limit.
"""
from __future__ import annotations

from serving.monitoring.service import MonitoringReport

_HELP = {
    "medgate_model_results": "Results of a model version at a site in the monitoring window",
    "medgate_model_positive_rate": "Share of a model version's results at a site with a positive finding",
    "medgate_model_score_psi": "PSI of a model version's scores at a site against its training reference",
    "medgate_model_input_psi": "PSI of an input feature at a site against the model version's training reference",
    "medgate_model_feedback_agreement": "Share of clinicians' verdicts agreeing with a model version's findings",
    "medgate_model_ppv": "Positive predictive value of a model version's positive calls by clinicians' verdicts",
    "medgate_model_alert": "1 while a monitoring line (drift or disagreement) is crossed, else 0",
}


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str | None) -> str:
    return ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items() if v is not None)


def monitoring_gauges(report: MonitoringReport | None) -> list[str]:
    """The gauge lines of ``report`` (none for None)."""
    if report is None:
        return []
    samples: dict[str, list[str]] = {name: [] for name in _HELP}
    raised = report.alert_keys()
    for g in report.groups:
        base = dict(model=g.model, version=g.version, site=g.site)
        values = {"medgate_model_results": g.n, "medgate_model_positive_rate": g.positive_rate,
                  "medgate_model_score_psi": g.score_psi, "medgate_model_feedback_agreement": g.feedback.agreement,
                  "medgate_model_ppv": g.feedback.ppv}
        for name, value in values.items():
            if value is not None:
                samples[name].append(f"{name}{{{_labels(**base)}}} {value:g}")
        for feature, value in sorted(g.input_psi.items()):
            samples["medgate_model_input_psi"].append(
                f"medgate_model_input_psi{{{_labels(**base, feature=feature)}}} {value:g}")
        for line in g.lines(report.config):
            labels = _labels(**base, kind=line.kind, feature=line.feature)
            samples["medgate_model_alert"].append(f"medgate_model_alert{{{labels}}} {int(line.key in raised)}")
    out = []
    for name, lines in samples.items():
        if lines:
            out += [f"# HELP {name} {_HELP[name]}", f"# TYPE {name} gauge", *lines]
    return out
