"""The monitoring gauges on /metrics (serving.http.metrics renders them from the installed monitor)."""
from __future__ import annotations

import pytest

from models.reference import ModelReference
from models.registry import ModelRegistry
from serving.config import MonitoringConfig
from serving.feedback.store import FeedbackStore
from serving.http.metrics import IngressMetrics
from serving.monitoring import service
from serving.monitoring.gauges import monitoring_gauges
from serving.monitoring.service import Monitor
from serving.monitoring.window import ResultWindow
from serving.store import Store
from served import add_results

REFERENCE = ModelReference.read(ModelRegistry().get("tb", "1.1.0").folder)


@pytest.fixture
def monitor(tmp_path):
    store = Store(tmp_path / "medgate.sqlite3")
    add_results(store, REFERENCE, "CXR_SHIFTED", 120, seed=2, score_bin=9, input_bin=9)
    add_results(store, REFERENCE, 'ROOM"2', 300, seed=4)
    monitor = Monitor(ResultWindow(store), store, FeedbackStore(store.database), MonitoringConfig())
    service.install(lambda: monitor)
    yield monitor
    service.install(None)
    store.close()


def test_metrics_carry_the_monitoring_gauges(monitor):
    text = IngressMetrics().render([], {})
    for name in ("medgate_model_positive_rate", "medgate_model_score_psi", "medgate_model_input_psi",
                 "medgate_model_alert", "medgate_model_results"):
        assert f"# TYPE {name} gauge" in text
    assert 'medgate_model_positive_rate{model="tb",version="1.1.0",site="CXR_SHIFTED"} 1' in text
    assert 'medgate_model_alert{model="tb",version="1.1.0",site="CXR_SHIFTED",kind="score_psi"} 1' in text
    assert 'medgate_model_alert{model="tb",version="1.1.0",site="ROOM\\"2",kind="score_psi"} 0' in text  # escaped
    assert 'medgate_model_input_psi{model="tb",version="1.1.0",site="CXR_SHIFTED",feature="mean_intensity"}' in text
    assert "medgate_model_ppv" not in text  # no verdict yet: no figure


def test_no_monitor_no_gauges():
    assert monitoring_gauges(None) == []
    assert "medgate_model_score_psi" not in IngressMetrics().render([], {})
