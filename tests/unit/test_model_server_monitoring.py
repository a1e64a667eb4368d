"""The model server's Prometheus page: TF Serving's metric names, labels and text layout, readable by Prometheus."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.model_server.monitoring import (
    DEFAULT_PATH,
    MonitoringConfigError,
    ServingMetrics,
    prometheus_name,
    read_monitoring_config,
)


def test_names_are_tf_servings_with_slashes_made_colons():
    assert prometheus_name("/tensorflow/serving/request_count") == ":tensorflow:serving:request_count"
    assert prometheus_name("9lives") == "_9lives"


def test_the_page_counts_requests_by_status_and_times_the_successful_ones():
    metrics = ServingMetrics()
    metrics.request("half_plus_two", "Predict", "GRPC", "OK", 0.002)
    metrics.request("half_plus_two", "Predict", "GRPC", "OK", 0.004)
    metrics.request("half_plus_two", "Predict", "GRPC", "NOT_FOUND", 0.001)
    metrics.request("", "", "REST", "INVALID_ARGUMENT", 0.001)
    metrics.examples("half_plus_two", 3)
    page = metrics.page()
    lines = page.splitlines()
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="OK"} 2' in lines
    assert ':tensorflow:serving:request_count{model_name="half_plus_two",status="NOT_FOUND"} 1' in lines
    assert ':tensorflow:serving:request_count{model_name="",status="INVALID_ARGUMENT"} 1' in lines
    assert "# TYPE :tensorflow:serving:request_latency histogram" in lines
    latency = [line for line in lines if line.startswith(":tensorflow:serving:request_latency_")]
    labels = 'model_name="half_plus_two",API="Predict",entrypoint="GRPC"'
    assert f":tensorflow:serving:request_latency_count{{{labels}}} 2" in latency  # failures are not timed
    assert f":tensorflow:serving:request_latency_sum{{{labels}}} 6000" in latency  # microseconds
    buckets = [line for line in latency if "_bucket" in line]
    assert buckets[0] == f':tensorflow:serving:request_latency_bucket{{{labels},le="10"}} 0'
    assert buckets[-1] == f':tensorflow:serving:request_latency_bucket{{{labels},le="+Inf"}} 2'
    assert len(buckets) == 34  # Exponential(10, 1.8, 33), then +Inf
    assert ':tensorflow:serving:request_example_count_total{model="half_plus_two"} 3' in lines
    assert page.endswith("\n")


def test_prometheus_reads_the_page():
    metrics = ServingMetrics()
    metrics.request("m", "predict", "REST", "OK", 0.01)
    metrics.runtime("m", "Predict", 0.005)
    families = {family.name: family for family in text_string_to_metric_families(metrics.page())}
    count = families[":tensorflow:serving:request_count"]
    assert count.type == "counter"
    assert [(s.labels, s.value) for s in count.samples] == [({"model_name": "m", "status": "OK"}, 1.0)]
    runtime = families[":tensorflow:serving:runtime_latency"]
    assert runtime.type == "histogram"
    assert {s.labels.get("runtime") for s in runtime.samples} == {"TF1"}


def test_label_values_are_escaped():
    metrics = ServingMetrics()
    metrics.request('a"b\\c', "", "REST", "OK", 0.0)
    assert ':tensorflow:serving:request_count{model_name="a\\"b\\\\c",status="OK"} 1' in metrics.page().splitlines()


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('prometheus_config { enable: true path: "/metrics" }', "/metrics"),
        ("prometheus_config { enable: true }", DEFAULT_PATH),
        ('prometheus_config { enable: false path: "/metrics" }', None),
        ("", None),
    ],
)
def test_monitoring_config(tmp_path, text, path):
    config = tmp_path / "monitoring.config"
    config.write_text(text, encoding="utf-8")
    assert read_monitoring_config(config) == path


def test_a_monitoring_config_that_cannot_be_read_names_the_file(tmp_path):
    config = tmp_path / "monitoring.config"
    config.write_text("prometheus_config { enabled: true }", encoding="utf-8")
    with pytest.raises(MonitoringConfigError) as refused:
        read_monitoring_config(config)
    assert str(refused.value).startswith(f"{config}: ")
    assert 'no field named "enabled"' in str(refused.value)
    with pytest.raises(MonitoringConfigError, match="cannot be read"):
        read_monitoring_config(tmp_path / "missing.config")
