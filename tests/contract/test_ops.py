"""Operations endpoints on the demo app: health, readiness and Prometheus metrics, on both backends."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

pytestmark = pytest.mark.slow


def _samples(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def test_ready_with_every_demo_servable(demo_app):
    response = demo_app.test_client().get("/readyz")
    assert response.status_code == 200
    assert set(response.json["servables"]) == {
        "face_detection",
        "twingan_latent_encoder",
        "latent_search_model",
        "ugatit_selfie2anime",
    }


def test_metrics_count_requests_by_route_and_status(demo_app):
    client = demo_app.test_client()
    before = _samples(client).get(
        ("gateway_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200"))), 0
    )
    for _ in range(3):
        client.get("/healthz")
    client.get("/no-such-page")
    samples = _samples(client)
    key = ("gateway_http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    assert samples[key] == before + 3
    assert (
        samples[("gateway_http_requests_total", (("method", "GET"), ("route", "<unmatched>"), ("status", "404")))] >= 1
    )
    assert ("gateway_http_request_duration_seconds_count", (("method", "GET"), ("route", "/healthz"))) in samples
    # /metrics itself is being answered while it is measured.
    assert samples[("gateway_http_requests_in_flight", ())] == 1


def test_metrics_time_every_servable_call(demo_app):
    from app.web.extensions import serving

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="JPEG")
    with demo_app.app_context():
        result = serving().pipeline.run(buffer.getvalue(), k=3)
    assert len(result.matches) == 3
    samples = _samples(demo_app.test_client())
    for servable in ("face_detection", "twingan_latent_encoder", "latent_search_model", "ugatit_selfie2anime"):
        key = ("gateway_servable_call_duration_seconds_count", (("call", "predict"), ("servable", servable)))
        assert samples[key] >= 1, servable


def test_metrics_count_servable_errors_by_code(demo_app):
    from app.errors import UnknownVersion
    from app.pipeline import Pin
    from app.web.extensions import serving

    with demo_app.app_context(), pytest.raises(UnknownVersion):
        serving().pipeline.translate(np.zeros((64, 64, 3), np.uint8), {"translate": Pin(version=99)})
    samples = _samples(demo_app.test_client())
    key = (
        "gateway_servable_call_errors_total",
        (("call", "metadata"), ("code", "unknown_version"), ("servable", "ugatit_selfie2anime")),
    )
    assert samples[key] >= 1
