"""The metrics gate: PromQL checks against thresholds and the last good release (``gate.check_metrics``).

``queries`` says what is asked, ``prometheus`` asks it, ``judge`` judges one check twice
(threshold, baseline), ``report`` shows it; ``gate`` is the task.
"""

from tasks.gates.metrics.gate import check_metrics
from tasks.gates.metrics.judge import evaluate
from tasks.gates.metrics.prometheus import Prometheus
from tasks.gates.metrics.queries import (
    GUIDE_ALERTS,
    MetricCheck,
    effective_window,
    guide_checks,
    parse_duration,
    resolve,
)
from tasks.gates.metrics.report import MetricsBaseline, MetricsReport

__all__ = [
    "GUIDE_ALERTS",
    "MetricCheck",
    "MetricsBaseline",
    "MetricsReport",
    "Prometheus",
    "check_metrics",
    "effective_window",
    "evaluate",
    "guide_checks",
    "parse_duration",
    "resolve",
]
