"""BentoML serving the ``tb`` model with its own adaptive batching, as a user would write it.

One service, one batchable API (:data:`benchmarks.peers.BENTOML_BATCHING`): BentoML gathers the
uploads of concurrent requests into one list, each is turned into the model input, one engine call
answers them all, and each request gets its own ``[{"probability": p}]``.  Run in its own virtual
environment (``bash benchmarks/peers/setup.sh bentoml``)::

    PYTHONPATH=. .bench-venvs/bentoml/bin/bentoml serve benchmarks.peers.bentoml_tb:TbService \
        --host 127.0.0.1 --port 8012
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bentoml  # noqa: E402

from benchmarks.peers import BENTOML_BATCHING, ROUTE  # noqa: E402
from benchmarks.peers.tb_model import TbModel  # noqa: E402


@bentoml.service(workers=1)
class TbService:
    def __init__(self) -> None:
        self.model = TbModel()

    @bentoml.api(route=ROUTE, batchable=True, **BENTOML_BATCHING)
    def infer(self, file: list[Path]) -> list[dict]:
        items = [self.model.item(path.read_bytes()) for path in file]
        return [{"probability": p} for p in self.model.probabilities(items)]
