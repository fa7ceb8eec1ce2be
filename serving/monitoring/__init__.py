"""Live model monitoring: per model version and sending site, the positive rate, the score
distribution and the drift (PSI) of scores and input features against the version's training
reference (``reference.json``, :mod:`models.reference`), agreement with clinicians' feedback and
PPV; alerts when a configured line is crossed; JSON at ``/v1/models/monitoring``, Prometheus
gauges on ``/metrics`` and a dashboard page (docs/monitoring.md)."""
