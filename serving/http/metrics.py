"""Prometheus metrics of the HTTP ingress, the model deployments, the outbox and live model monitoring
(text format 0.0.4)."""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from serving.monitoring.gauges import monitoring_gauges
from serving.monitoring.service import current_report

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class IngressMetrics:
    """Counters kept by one ingress replica plus gauges gathered from deployments at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("medgate_http_requests", "Inference requests by model and HTTP status",
                                ["model", "status"], registry=self.registry)
        self.latency = Histogram("medgate_http_request_seconds", "Inference request latency",
                                 ["model"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

    def observe(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.latency.labels(model).observe(seconds)

    def render(self, stats: list[dict[str, Any]], outbox_counts: dict[tuple[str, str], int]) -> str:
        """The exposition text; ``outbox_counts`` is :meth:`serving.delivery.outbox.Outbox.counts`."""
        lines = [generate_latest(self.registry).decode()]
        lines += _gauge("medgate_model_requests_total", "Requests a model replica has received", "counter",
                        [(s, s["requests"]) for s in stats])
        lines += _gauge("medgate_model_failures_total", "Requests a model replica failed", "counter",
                        [(s, s["failures"]) for s in stats])
        lines += _gauge("medgate_model_queue_depth", "Requests in a model replica now", "gauge",
                        [(s, s["ongoing"]) for s in stats])
        lines += _gauge("medgate_model_gpu_memory_bytes", "GPU memory allocated by a model replica", "gauge",
                        [(s, s["gpu_memory_bytes"]) for s in stats])
        lines += ["# HELP medgate_model_batch_size Batch sizes of a replica's recent batches",
                  "# TYPE medgate_model_batch_size histogram"]
        for s in stats:
            sizes, labels = s["batch_sizes"], f'model="{s["model"]}",version="{s["version"]}"'
            for le in BATCH_BUCKETS:
                lines.append(f'medgate_model_batch_size_bucket{{{labels},le="{le}"}} {sum(b <= le for b in sizes)}')
            lines.append(f'medgate_model_batch_size_bucket{{{labels},le="+Inf"}} {len(sizes)}')
            lines.append(f"medgate_model_batch_size_sum{{{labels}}} {sum(sizes)}")
            lines.append(f"medgate_model_batch_size_count{{{labels}}} {len(sizes)}")
        lines += _outbox(outbox_counts)
        lines += monitoring_gauges(current_report())  # serving.monitoring: drift, agreement, PPV
        return "\n".join(lines) + "\n"


def _gauge(name: str, help_text: str, kind: str, values: list[tuple[dict, float]]) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for s, value in values:
        out.append(f'{name}{{model="{s["model"]}",version="{s["version"]}"}} {value}')
    return out


def _outbox(counts: dict[tuple[str, str], int]) -> list[str]:
    """Outbox items by kind and status (dead letters included), from whichever backend holds them."""
    if not counts:
        return []
    out = ["# HELP medgate_outbox_items Outbox items by kind and status", "# TYPE medgate_outbox_items gauge"]
    out += [f'medgate_outbox_items{{kind="{k}",status="{s}"}} {n}' for (k, s), n in sorted(counts.items())]
    return out
