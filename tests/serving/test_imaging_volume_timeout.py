"""A whole-volume model call is allowed minutes, not the 2D models' timeout: on a CPU it is slow,
not stuck, and a retry would only queue behind the first call."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from dicom_gateway.testdata import make_ct_series
from serving import imaging
from serving.store import Store


def test_volume_call_gets_the_volume_timeout(tmp_path):
    timeouts: list[float] = []

    def remote(item):
        assert item["volume"].shape == (4, 16, 16)
        return SimpleNamespace(result=lambda timeout_s: timeouts.append(timeout_s) or {"candidates": []})

    store = Store(tmp_path / "db.sqlite3")
    try:
        pipeline = imaging.ImagingPipeline(store, None, {"nodule": SimpleNamespace(remote=remote)},
                                           tmp_path / "results", timeout_s=60.0)
        series = make_ct_series(np.zeros((4, 16, 16), np.uint16))
        info = {"name": "nodule", "version": "1.0.0", "threshold": 0.5,
                "finding": {"value": "786838002", "scheme": "SCT", "meaning": "Pulmonary nodule"}}
        assert pipeline._process_volume(series[0].StudyInstanceUID, series, info) == []
    finally:
        store.close()
    assert timeouts == [imaging.VOLUME_TIMEOUT_S] and imaging.VOLUME_TIMEOUT_S >= 600
