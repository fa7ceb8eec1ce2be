"""The model servers a user would pick instead of medgate, serving the same ``tb`` model.

Each peer runs in its own virtual environment (``.bench-venvs/<name>``, made by
``bash benchmarks/peers/setup.sh``) so that its dependencies never move the project's pinned
packages, and imports the model and the preprocessing from this repository (``PYTHONPATH`` = its
root): :mod:`benchmarks.peers.tb_model`.  :mod:`benchmarks.peers.launch` starts and stops them for
``benchmarks/serve_overhead.py``.

The batching settings live here, once, because both the servers and the benchmark's record read them.
The maximum batch is medgate's own (``serving.max_batch_size``, 16) so that no server is allowed
bigger engine calls than another.
"""
from __future__ import annotations

#: The route every server of the comparison answers on (medgate's own ``/v1/infer/{model}``), so that
#: one client function calls them all.
ROUTE = "/v1/infer/tb"
#: The environment variable naming the model version a peer serves (the direct engine's, in a run).
VERSION_ENV = "MEDGATE_BENCH_TB_VERSION"

#: LitServe's dynamic batching, ``LitAPI(max_batch_size=..., batch_timeout=...)``: a batch waits at
#: most ``batch_timeout`` seconds to fill.  LitServe polls its queue without sleeping when the timeout
#: is 0, which would take one of the two cores, hence a small wait.
LITSERVE_BATCHING = {"max_batch_size": 16, "batch_timeout": 0.005}
#: BentoML's adaptive batching, ``@bentoml.api(batchable=True, max_batch_size=..., max_latency_ms=...)``:
#: its dispatcher chooses the wait itself from the batch times it has seen; ``max_latency_ms`` is the
#: bound past which it refuses a request (503) rather than queue it, set well above any wait here.
BENTOML_BATCHING = {"max_batch_size": 16, "max_latency_ms": 10_000}
