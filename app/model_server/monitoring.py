"""The model server's Prometheus page, as ``tensorflow_model_server --monitoring_config_file`` serves it.

TF Serving exports its TensorFlow monitoring metrics on the REST port, at the configured path
(default ``/monitoring/prometheus/metrics``), in the text format its PrometheusExporter writes
(util/prometheus_exporter.cc): each metric's name with every character outside ``[a-zA-Z0-9_]``
made ``:``, one ``# TYPE`` line, then its points; histograms as cumulative ``_bucket`` lines with
``le`` limits, ``_sum`` and ``_count``. The serving metrics kept here are the request metrics of
servables/tensorflow/util.cc, recorded where TF Serving records them:

- ``:tensorflow:serving:request_count{model_name,status}``: every Predict, Classify and Regress over
  gRPC, and every request to the REST API, by the status's code name;
- ``:tensorflow:serving:request_latency{model_name,API,entrypoint}``: microseconds of each successful
  one (entrypoint ``GRPC`` or ``REST``; the REST API is the verb: ``predict``, ``classify``, ...);
- ``:tensorflow:serving:runtime_latency{model_name,API,runtime}``: microseconds in the runtime (``TF1``
  sessions), here timed around the runtime's call, tensor parsing included;
- ``:tensorflow:serving:request_example_counts{model}`` and ``..._count_total{model}``: tf.Examples per
  Classify, Regress and MultiInference.

TensorFlow's own core metrics, which TF Serving's page also carries, are not exported.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import text_format

from app.serving.extra_protos import MonitoringConfig

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


class MonitoringConfigError(ValueError):
    """A MonitoringConfig file that cannot be read: which file, and why."""


def read_monitoring_config(path: str | Path) -> str | None:
    """The path the Prometheus page is served at, or None when the file does not enable it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MonitoringConfigError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    config = MonitoringConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise MonitoringConfigError(f"{path}: {exc}") from None
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PATH


def exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """monitoring::Buckets::Exponential: ``count`` limits from ``scale``, each ``growth`` times the last."""
    return tuple(scale * growth**index for index in range(count))


def prometheus_name(name: str) -> str:
    """GetPrometheusMetricName: every character outside [a-zA-Z0-9_] becomes ':'."""
    cleaned = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return "_" + cleaned if cleaned[:1].isdigit() else cleaned


def _label_name(name: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9]", "_", name)
    return "_" + cleaned if cleaned[:1].isdigit() else cleaned


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _number(value: float) -> str:
    """absl::StrCat of a double: six significant digits, no trailing zeros."""
    return f"{value:.6g}"


class _Metric:
    def __init__(self, name: str, labels: Sequence[str]) -> None:
        self.name = name
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _labels(self, values: Sequence[str]) -> str:
        return ",".join(
            f'{_label_name(label)}="{_label_value(value)}"' for label, value in zip(self.labels, values, strict=True)
        )


class Counter(_Metric):
    """monitoring::Counter: an int64 per label set."""

    def __init__(self, name: str, labels: Sequence[str]) -> None:
        super().__init__(name, labels)
        self._values: dict[tuple[str, ...], int] = {}

    def add(self, values: Sequence[str], amount: int = 1) -> None:
        key = tuple(values)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def value(self, values: Sequence[str]) -> int:
        with self._lock:
            return self._values.get(tuple(values), 0)

    def lines(self) -> list[str]:
        name = prometheus_name(self.name)
        with self._lock:
            points = sorted(self._values.items())
        return [f"# TYPE {name} counter"] + [f"{name}{{{self._labels(key)}}} {value}" for key, value in points]


class Sampler(_Metric):
    """monitoring::Sampler: a histogram per label set, with the buckets given and one to +Inf."""

    def __init__(self, name: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        super().__init__(name, labels)
        self.buckets = tuple(buckets)
        self._values: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def add(self, values: Sequence[str], sample: float) -> None:
        key = tuple(values)
        index = next((i for i, limit in enumerate(self.buckets) if sample < limit), len(self.buckets))
        with self._lock:
            counts, total = self._values.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            counts[index] += 1
            total[0] += sample

    def count(self, values: Sequence[str]) -> int:
        with self._lock:
            found = self._values.get(tuple(values))
            return sum(found[0]) if found else 0

    def lines(self) -> list[str]:
        name = prometheus_name(self.name)
        lines = [f"# TYPE {name} histogram"]
        with self._lock:
            points = sorted((key, (list(counts), total[0])) for key, (counts, total) in self._values.items())
        for key, (counts, total) in points:
            labels = self._labels(key)
            prefix = f"{name}_bucket{{{labels}{',' if labels else ''}"
            cumulative = 0
            for index, count in enumerate(counts):
                cumulative += count
                limit = _number(self.buckets[index]) if index < len(self.buckets) else "+Inf"
                lines.append(f'{prefix}le="{limit}"}} {cumulative}')
            lines.append(f"{name}_sum{{{labels}}} {_number(total)}")
            lines.append(f"{name}_count{{{labels}}} {cumulative}")
        return lines


class ServingMetrics:
    """TF Serving's request metrics (servables/tensorflow/util.cc), and the page that shows them."""

    def __init__(self) -> None:
        latency_buckets = exponential_buckets(10, 1.8, 33)  # microseconds, ~20 minutes at the top
        self.request_count = Counter("/tensorflow/serving/request_count", ("model_name", "status"))
        self.request_latency = Sampler(
            "/tensorflow/serving/request_latency", ("model_name", "API", "entrypoint"), latency_buckets
        )
        self.runtime_latency = Sampler(
            "/tensorflow/serving/runtime_latency", ("model_name", "API", "runtime"), latency_buckets
        )
        self.example_counts = Sampler(
            "/tensorflow/serving/request_example_counts", ("model",), exponential_buckets(1, 2, 15)
        )
        self.example_count_total = Counter("/tensorflow/serving/request_example_count_total", ("model",))

    def request(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """RecordModelRequestCount, and RecordRequestLatency when it succeeded."""
        self.request_count.add((model_name, status))
        if status == "OK":
            self.request_latency.add((model_name, api, entrypoint), seconds * 1e6)

    def runtime(self, model_name: str, api: str, seconds: float) -> None:
        self.runtime_latency.add((model_name, api, "TF1"), seconds * 1e6)

    def examples(self, model_name: str, count: int) -> None:
        """RecordRequestExampleCount."""
        self.example_counts.add((model_name,), count)
        self.example_count_total.add((model_name,), count)

    def page(self) -> str:
        """PrometheusExporter::GeneratePage: the metrics by name, then a final newline."""
        metrics = sorted(
            (self.request_count, self.request_latency, self.runtime_latency, self.example_counts,
             self.example_count_total),
            key=lambda metric: metric.name,
        )  # fmt: skip
        return "\n".join(line for metric in metrics for line in metric.lines()) + "\n"
