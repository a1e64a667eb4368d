"""Abuse resistance: rate limit, API keys, security headers, escaping, thumbnail traversal, gunicorn limits, debug."""

from __future__ import annotations

import hmac
import http.client
import io
import json
import os
import re
import runpy
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import skimage.data
from flask import Flask
from openapi_spec_validator import validate
from PIL import Image
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from app import DebugRefused, create_app
from app.config import PROJECT_ROOT, Settings
from app.web.security import CONTENT_SECURITY_POLICY, SECURITY_HEADERS, ApiKeys
from tests.support.gateway import demo_serving_dir
from tests.support.harness import free_port, gunicorn
from tests.support.hostile import HOSTILE_NAMES, SCRIPT, UPLOAD_NAMES, build_hostile_gallery

KEY = "k3y-0123456789abcdef"
OTHER_KEY = "other-key-0123456789"
RAW_MARKUP = ("<script>alert", "</script>.jpg", "<img src=x", "onerror=alert(1)>", "onmouseover='alert")


def _jpeg(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def astronaut() -> bytes:
    return _jpeg(skimage.data.astronaut())


# -- apps ------------------------------------------------------------------------------------------

AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """Apps whose model server is unreachable and that have no gallery: enough for what is decided before a model."""
    made: list[Flask] = []
    base = {"backend": "grpc", "serving_target": "127.0.0.1:1", "timeout": 1, "models_root": tmp_path / "none"}

    def make(**settings: object) -> Flask:
        app = create_app(base | settings)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["serving"].close()


def _client(app: Flask, address: str):
    """A test client whose requests come from ``address``."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def _junk(client, path: str = "/api/v1/detect", **kwargs) -> TestResponse:
    """A request to a photo endpoint that fails fast (415) without calling a model: it still counts."""
    return client.post(path, data=b"not a photo", content_type="text/plain", **kwargs)


def _error(response: TestResponse, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    assert response.json["error"]["code"] == code
    return response.json["error"]


@pytest.fixture(scope="module")
def limited_app(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[Flask]:
    """The demo models on the local backend with a rate limit of two photos an hour per client."""
    config = demo_serving_dir(tmp_path_factory.mktemp("limited"), demo_root)
    app = create_app({"model_config": config, "poll_interval": 0, "warmup": False, "rate_limit": "2/hour"})
    yield app
    app.extensions["serving"].close()


@pytest.fixture(scope="module")
def hostile_app(tmp_path_factory: pytest.TempPathFactory, demo_root: Path) -> Iterator[Flask]:
    config = build_hostile_gallery(tmp_path_factory.mktemp("hostile"), demo_root)
    app = create_app({"model_config": config, "poll_interval": 0, "warmup": False})
    yield app
    app.extensions["serving"].close()


# -- settings --------------------------------------------------------------------------------------


def test_abuse_settings_from_the_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# one key a line\n\n{OTHER_KEY}\n  {KEY}  \n", encoding="utf-8")
    settings = Settings.load(
        environ={
            "GATEWAY_RATE_LIMIT": "5/second;100/hour",
            "GATEWAY_RATE_LIMIT_STORAGE": "redis://cache:6379/0",
            "GATEWAY_TRUSTED_PROXIES": "1",
            "GATEWAY_API_KEYS": f"{KEY}, {'x' * 16}",
            "GATEWAY_API_KEYS_FILE": str(keys),
            "GATEWAY_HSTS": "31536000",
            "GATEWAY_ALLOW_DEBUG": "1",
        }
    )
    assert settings.rate_limit == "5/second;100/hour"
    assert settings.rate_limit_storage == "redis://cache:6379/0"
    assert (settings.trusted_proxies, settings.hsts, settings.allow_debug) == (1, 31536000, True)
    assert settings.all_api_keys() == (KEY, "x" * 16, OTHER_KEY)
    defaults = Settings.load(environ={})
    assert defaults.all_api_keys() == ()
    assert (defaults.trusted_proxies, defaults.hsts, defaults.allow_debug) == (0, 0, False)
    assert defaults.rate_limit and defaults.rate_limit_storage == "memory://"
    assert Settings.load(environ={"GATEWAY_RATE_LIMIT": ""}).rate_limit == ""


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"GATEWAY_RATE_LIMIT": "lots"}, "GATEWAY_RATE_LIMIT='lots' is not a rate limit"),
        ({"GATEWAY_RATE_LIMIT_STORAGE": "ftp://x"}, "GATEWAY_RATE_LIMIT_STORAGE"),
        ({"GATEWAY_RATE_LIMIT_STORAGE": "async+memory://"}, "GATEWAY_RATE_LIMIT_STORAGE"),
        ({"GATEWAY_TRUSTED_PROXIES": "-1"}, "GATEWAY_TRUSTED_PROXIES"),
        ({"GATEWAY_TRUSTED_PROXIES": "many"}, "GATEWAY_TRUSTED_PROXIES"),
        ({"GATEWAY_HSTS": "-5"}, "GATEWAY_HSTS"),
        ({"GATEWAY_API_KEYS": "short"}, "at least 16"),
        ({"GATEWAY_API_KEYS": 'with"quote-0123456789'}, "GATEWAY_API_KEYS"),
        ({"GATEWAY_API_KEYS": "ключ-0123456789abcdef"}, "printable ASCII"),
        ({"GATEWAY_API_KEYS_FILE": "/nonexistent/keys"}, "cannot be read"),
        ({"GATEWAY_ALLOW_DEBUG": "maybe"}, "GATEWAY_ALLOW_DEBUG"),
    ],
)
def test_bad_abuse_settings_are_named(environ: dict[str, str], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        Settings.load(environ=environ)


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no key"):
        Settings.load({"api_keys_file": tmp_path / "keys"}, environ={})


# -- rate limit ------------------------------------------------------------------------------------


def test_over_the_limit_is_429_with_retry_after_on_every_pipeline_endpoint(limited_app: Flask, astronaut: bytes):
    client = limited_app.test_client()
    first = client.post("/api/v1/detect", data=astronaut, content_type="image/jpeg")
    assert first.status_code == 200
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("2", "1")
    second = client.post("/api/v1/search", data=astronaut, content_type="image/jpeg")  # one count for all
    assert second.status_code == 200
    assert second.headers["X-RateLimit-Remaining"] == "0"
    assert int(second.headers["X-RateLimit-Reset"]) > time.time()
    for path in ("/api/v1/search", "/api/v1/translate", "/api/v1/detect"):
        refused = client.post(path, data=astronaut, content_type="image/jpeg")
        error = _error(refused, 429, "rate_limited")
        assert "2 per 1 hour" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 3601
    page = client.post("/detect_face/image", data={"image_file": (io.BytesIO(astronaut), "me.jpg")})
    assert page.status_code == 429
    assert page.mimetype == "text/html"
    assert 1 <= int(page.headers["Retry-After"]) <= 3601
    text = page.get_data(as_text=True)
    assert "Too many photos at once" in text and "try again in" in text
    assert 'action="/detect_face/image"' in text  # the page still offers the form


def test_operations_static_and_reading_endpoints_are_not_limited(limited_app: Flask) -> None:
    client = _client(limited_app, "192.0.2.7")
    for _ in range(3):
        _junk(client)
    assert _junk(client).status_code == 429
    for path in (
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/static/app.js",
        "/api/v1/models",
        "/api/v1/openapi.json",
        "/api/v1/gallery/samples/sample1.jpg%231.jpg",  # the demo gallery's first face ("#" escaped)
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "X-RateLimit-Limit" not in response.headers, path
        response.close()


def test_each_client_address_has_its_own_count_and_forwarded_for_is_not_believed(make_app: AppFactory) -> None:
    app = make_app(rate_limit="1/hour")
    one = _client(app, "192.0.2.1")
    assert _junk(one).status_code == 415
    _error(_junk(one), 429, "rate_limited")
    # A client cannot pick a new identity by claiming to be forwarded.
    _error(_junk(one, headers={"X-Forwarded-For": "203.0.113.9"}), 429, "rate_limited")
    other = _client(app, "192.0.2.2")
    assert _junk(other).status_code == 415


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted(make_app: AppFactory) -> None:
    app = make_app(rate_limit="1/hour", trusted_proxies=1)
    proxy = _client(app, "10.0.0.2")
    alice, bob = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "198.51.100.1, 203.0.113.2"}
    assert _junk(proxy, headers=alice).status_code == 415
    _error(_junk(proxy, headers=alice), 429, "rate_limited")
    # One trusted hop: only the address the proxy appended counts, not what the client wrote before it.
    assert _junk(proxy, headers=bob).status_code == 415
    _error(_junk(proxy, headers={"X-Forwarded-For": "192.0.2.99, 203.0.113.2"}), 429, "rate_limited")


def test_the_limit_lets_the_client_in_again_after_retry_after(make_app: AppFactory) -> None:
    client = make_app(rate_limit="1 per 3 seconds").test_client()
    assert _junk(client).status_code == 415
    refused = _junk(client)
    _error(refused, 429, "rate_limited")
    time.sleep(int(refused.headers["Retry-After"]) + 0.05)
    assert _junk(client).status_code == 415


def test_no_limit_when_the_setting_is_empty(make_app: AppFactory) -> None:
    client = make_app(rate_limit="").test_client()
    responses = [_junk(client) for _ in range(30)]
    assert {r.status_code for r in responses} == {415}
    assert "X-RateLimit-Limit" not in responses[-1].headers


def test_the_default_limit_is_on_and_lets_a_burst_of_30_through(make_app: AppFactory) -> None:
    client = make_app().test_client()
    assert {_junk(client).status_code for _ in range(30)} == {415}
    limit = int(_junk(client).headers["X-RateLimit-Limit"])
    assert 30 <= limit <= 1000


# -- API keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge_error"),
    [
        ({}, False),
        ({"X-API-Key": "wrong-key-0123456789"}, True),
        ({"Authorization": f"Bearer {KEY}x"}, True),
        ({"Authorization": f"Basic {KEY}"}, False),  # not a scheme the API takes
        ({"Authorization": "Bearer "}, False),
        ({"X-API-Key": KEY[:-1]}, True),
        ({"X-API-Key": "ключ".encode().decode("latin-1")}, True),  # non-ASCII bytes: refused, not a 500
    ],
)
def test_api_without_a_valid_key_is_401(make_app: AppFactory, headers: dict[str, str], challenge_error: bool) -> None:
    client = make_app(api_keys=(KEY, OTHER_KEY)).test_client()
    for response in (_junk(client, headers=headers), client.get("/api/v1/models", headers=headers)):
        _error(response, 401, "unauthorized")
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="portrait gateway"')
        assert ('error="invalid_token"' in challenge) == challenge_error
        assert "X-RateLimit-Limit" not in response.headers  # refused before it is counted


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": f"bearer {OTHER_KEY}"},
        {"X-API-Key": KEY},
        {"X-API-Key": f"  {OTHER_KEY} "},
    ],
)
def test_a_valid_key_opens_the_api(make_app: AppFactory, headers: dict[str, str]) -> None:
    client = make_app(api_keys=(KEY, OTHER_KEY)).test_client()
    assert _junk(client, headers=headers).status_code == 415  # past the key check, to the photo check


def test_keys_from_a_file(make_app: AppFactory, tmp_path: Path) -> None:
    (tmp_path / "keys").write_text(f"{OTHER_KEY}\n", encoding="utf-8")
    client = make_app(api_keys_file=tmp_path / "keys").test_client()
    assert _junk(client).status_code == 401
    assert _junk(client, headers={"X-API-Key": OTHER_KEY}).status_code == 415


def test_with_keys_the_page_operations_thumbnails_and_document_stay_open(make_app: AppFactory) -> None:
    client = make_app(api_keys=(KEY,)).test_client()
    for path in ("/", "/healthz", "/readyz", "/metrics", "/static/style.css", "/api/v1/openapi.json"):
        response = client.get(path)
        assert response.status_code in (200, 503), path  # /readyz: no model server behind this app
        response.close()
    # Not 401: a thumbnail is looked up (here there is no gallery, so 404).
    _error(client.get("/api/v1/gallery/lfw/face_000.png.jpg"), 404, "not_found")
    assert client.post("/detect_face/image", data=b"x", content_type="text/plain").status_code == 415
    # An unknown API path does not tell a client without a key that it is unknown.
    _error(client.get("/api/v1/no-such-thing"), 401, "unauthorized")


def test_a_valid_key_is_counted_as_its_own_client(make_app: AppFactory) -> None:
    client = make_app(api_keys=(KEY, OTHER_KEY), rate_limit="1/hour").test_client()
    assert _junk(client, headers={"X-API-Key": KEY}).status_code == 415
    _error(_junk(client, headers={"X-API-Key": KEY}), 429, "rate_limited")
    assert _junk(client, headers={"X-API-Key": OTHER_KEY}).status_code == 415  # same address, other key
    counted = " ".join(client.application.extensions["rate_limit"].limiter.storage.storage)
    assert "key:" in counted and KEY not in counted and OTHER_KEY not in counted  # digests, never the keys
    # The browser page from the same address has no key: its own count, by address.
    assert _junk(client, "/detect_face/image").status_code == 415
    assert _junk(client, "/detect_face/image").status_code == 429


def test_keys_are_compared_in_constant_time_with_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    keys = ApiKeys([KEY, OTHER_KEY, "third-key-0123456789"])
    assert keys.matches(KEY)  # the first key matches: the others are compared all the same
    assert len(compared) == 3
    compared.clear()
    assert not keys.matches("nope")
    assert len(compared) == 3
    assert not ApiKeys([]).required


# -- the OpenAPI document --------------------------------------------------------------------------


def _openapi(app: Flask, **headers: str) -> dict:
    response = app.test_client().get("/api/v1/openapi.json", headers=headers)
    assert response.status_code == 200
    document = response.json
    validate(document)
    return document


def test_document_declares_the_key_when_keys_are_set(make_app: AppFactory) -> None:
    document = _openapi(make_app(api_keys=(KEY,)))
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {**schemes["bearerKey"], "type": "http", "scheme": "bearer"}
    assert (schemes["apiKeyHeader"]["in"], schemes["apiKeyHeader"]["name"]) == ("header", "X-API-Key")
    assert document["security"] == [{"bearerKey": []}, {"apiKeyHeader": []}]
    paths = document["paths"]
    for path in ("/api/v1/search", "/api/v1/translate", "/api/v1/detect"):
        assert {"401", "429"} <= set(paths[path]["post"]["responses"])
    assert "401" in paths["/api/v1/models"]["get"]["responses"]
    for path in ("/api/v1/gallery/{name}.jpg", "/api/v1/openapi.json", "/healthz", "/readyz"):
        assert paths[path]["get"]["security"] == []
        assert "401" not in paths[path]["get"]["responses"]
    unauthorized = document["components"]["responses"]["Unauthorized"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    limited = document["components"]["responses"]["RateLimited"]
    assert {"Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= set(limited["headers"])


def test_document_without_keys_or_limit_says_neither(make_app: AppFactory) -> None:
    document = _openapi(make_app(rate_limit=""))
    assert "security" not in document
    for item in document["paths"].values():
        for operation in item.values():
            assert not {"401", "429"} & set(operation["responses"])


# -- security headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/static/style.css"),
        ("GET", "/api/v1/openapi.json"),
        ("GET", "/no/such/page"),
        ("GET", "/api/v1/gallery/lfw/face_000.png.jpg"),
        ("DELETE", "/api/v1/search"),
        ("POST", "/detect_face/image"),
        ("POST", "/api/v1/translate"),
    ],
)
def test_every_response_carries_the_security_headers(make_app: AppFactory, method: str, path: str) -> None:
    response = make_app().test_client().open(path, method=method, data=b"x", content_type="text/plain")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert "Strict-Transport-Security" not in response.headers
    response.close()


def test_the_policy_forbids_inline_code_framing_and_foreign_sources() -> None:
    directives = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'" and directives["base-uri"] == "'none'"
    assert directives["form-action"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_hsts_only_when_configured(make_app: AppFactory) -> None:
    response = make_app(hsts=63072000).test_client().get("/healthz")
    assert response.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"


def test_the_policy_survives_a_view_that_sets_its_own_nosniff(hostile_app: Flask, astronaut: bytes) -> None:
    response = hostile_app.test_client().post("/api/v1/translate", data=astronaut, content_type="image/jpeg")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert response.headers.getlist("X-Content-Type-Options") == ["nosniff"]
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY


# -- escaping of client- and gallery-given strings -------------------------------------------------


class _Page(HTMLParser):
    """The attributes of every tag, and the text, as a browser would decode them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _assert_no_raw_markup(text: str) -> None:
    for raw in RAW_MARKUP:
        assert raw not in text, raw


def test_hostile_gallery_names_are_escaped_on_the_result_page(hostile_app: Flask, astronaut: bytes) -> None:
    client = hostile_app.test_client()
    form = {"image_file": (io.BytesIO(astronaut), "portrait.jpg"), "k": str(len(HOSTILE_NAMES))}
    response = client.post("/detect_face/image", data=form)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    _assert_no_raw_markup(html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = _Page(html)
    gallery = [attrs for tag, attrs in page.tags if tag == "img" and (attrs.get("src") or "").startswith("/api/")]
    # Decoded as a browser would, the names are shown as text, whole, and nothing was turned into a tag.
    assert sorted(attrs["alt"].removeprefix("Gallery face ") for attrs in gallery) == sorted(HOSTILE_NAMES)
    assert not [tag for tag, attrs in page.tags if any(name.startswith("on") for name in attrs)]
    assert [tag for tag, _ in page.tags].count("script") == 1  # app.js
    for attrs in gallery:
        src = attrs["src"]
        path, _, query = src.partition("?")
        assert query == "version=2"
        assert not set(path) & set('<>"` #?\\'), src  # percent-encoded
        assert unquote(path.removeprefix("/api/v1/gallery/").removesuffix(".jpg")) in HOSTILE_NAMES
        with client.get(src) as thumbnail:
            assert thumbnail.status_code == 200, src
            assert thumbnail.mimetype == "image/jpeg"


def test_hostile_gallery_names_in_json_are_escaped_and_exact(hostile_app: Flask, astronaut: bytes) -> None:
    client = hostile_app.test_client()
    response = client.post(f"/api/v1/search?k={len(HOSTILE_NAMES)}", data=astronaut, content_type="image/jpeg")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "<" not in text and ">" not in text and "&" not in text  # as \u003c, \u003e, \u0026
    matches = response.json["matches"]
    assert sorted(match["filename"] for match in matches) == sorted(HOSTILE_NAMES)
    for match in matches:
        with client.get(match["thumbnail_url"]) as thumbnail:
            assert thumbnail.status_code == 200, match["thumbnail_url"]
    # The page's JSON answer too.
    page_json = client.post(
        "/detect_face/image",
        data={"image_file": (io.BytesIO(astronaut), UPLOAD_NAMES[1]), "k": "6"},
        headers={"Accept": "application/json"},
    )
    assert page_json.status_code == 200
    assert "<" not in page_json.get_data(as_text=True)
    assert {m["filename"] for m in page_json.json["matches"]} == set(HOSTILE_NAMES)


@pytest.mark.parametrize("filename", UPLOAD_NAMES)
@pytest.mark.parametrize("accept", ["text/html", "application/json"])
def test_hostile_upload_names_never_come_back_raw(
    hostile_app: Flask, astronaut: bytes, filename: str, accept: str
) -> None:
    client = hostile_app.test_client()
    for photo, status in ((astronaut, 200), (b"not a photo", 415)):
        response = client.post(
            "/detect_face/image", data={"image_file": (io.BytesIO(photo), filename)}, headers={"Accept": accept}
        )
        assert response.status_code == status
        text = response.get_data(as_text=True)
        if accept == "application/json":
            assert response.mimetype == "application/json"
            assert "<" not in text and ">" not in text  # gallery names with quotes are fine in JSON strings
        else:
            _assert_no_raw_markup(text)


def test_hostile_parameters_and_thumbnail_names_in_errors_are_escaped(hostile_app: Flask, astronaut: bytes) -> None:
    client = hostile_app.test_client()
    form = {"image_file": (io.BytesIO(astronaut), "me.jpg"), "k": SCRIPT}
    page = client.post("/detect_face/image", data=form)
    assert page.status_code == 400
    html = page.get_data(as_text=True)
    _assert_no_raw_markup(html)
    assert "&lt;script&gt;" in html
    api = client.post(f"/api/v1/search?k={SCRIPT}&label={SCRIPT}", data=astronaut, content_type="image/jpeg")
    _error(api, 400, "bad_input")
    assert "<" not in api.get_data(as_text=True)
    missing = client.get("/api/v1/gallery/%3Cscript%3Ealert(1)%3C/script%3E.png.jpg")
    error = _error(missing, 404, "not_found")
    assert SCRIPT in error["message"]  # named, for the client to read...
    assert "<" not in missing.get_data(as_text=True)  # ...but never as markup


# -- gallery thumbnail traversal -------------------------------------------------------------------

TRAVERSALS = [
    "..",
    "../x",
    "../../etc/passwd",
    "lfw/../../../../etc/passwd",
    "/etc/passwd",
    "%2e%2e",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2fetc%2fpasswd",
    "%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "..%5c..%5cetc%5cpasswd",
    "..%c0%af..%c0%afetc%c0%afpasswd",
    "lfw/face_000.png%00",
    "lfw/face_000.png%00.jpg",
    "%00",
    "thumbnails/000000.jpg",
    "thumbnails/index.json",
    "saved_model.pb",
    "a" * 3000,
    "%2e" * 1000,
]


@pytest.fixture(scope="module")
def hostile_server(hostile_app: Flask) -> Iterator[int]:
    """The hostile-gallery app on a real loopback socket: request lines go out exactly as written."""
    server = make_server("127.0.0.1", 0, hostile_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="traversal-server", daemon=True)
    thread.start()
    yield server.server_port
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def _raw_get(port: int, path: str) -> tuple[int, str, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)  # sent as is, no normalising
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("name", TRAVERSALS, ids=lambda name: name[:40])
@pytest.mark.parametrize("version", ["", "?version=1", "?version=2"])
def test_thumbnail_names_that_leave_the_gallery_are_refused(hostile_server: int, name: str, version: str) -> None:
    status, content_type, body = _raw_get(hostile_server, f"/api/v1/gallery/{name}.jpg{version}")
    assert status in (400, 404), (status, body[:200])
    assert content_type == "application/json"
    assert json.loads(body)["error"]["code"] in ("not_found", "bad_input")
    assert b"root:" not in body and len(body) < 2000


def test_a_listed_name_with_percent_tricks_is_served(hostile_server: int) -> None:
    """The refusals above are about names the index does not list, not about odd characters."""
    name = "%2e%2e%2f%252e%252e%252fetc%2fpasswd.jpg"
    quoted = "".join(c if c.isalnum() or c in "._-" else f"%{ord(c):02X}" for c in name)
    status, content_type, body = _raw_get(hostile_server, f"/api/v1/gallery/{quoted}.jpg?version=2")
    assert (status, content_type) == (200, "image/jpeg")
    assert body.startswith(b"\xff\xd8\xff")


# -- gunicorn limits -------------------------------------------------------------------------------


def test_gunicorn_limits_request_line_and_headers() -> None:
    config = runpy.run_path(str(PROJECT_ROOT / "gunicorn.conf.py"))
    assert 0 < config["limit_request_line"] <= 4094
    assert 0 < config["limit_request_fields"] <= 100
    assert 0 < config["limit_request_field_size"] <= 8190
    assert config["worker_class"] == "gthread"


# What gunicorn's worker runs: a plain WSGI app (no models) that reports whether the worker counts as
# gunicorn, and whether create_app refuses debug mode there even with GATEWAY_ALLOW_DEBUG=1.
PLAIN_WSGI_APP = """
import json, os


def app(environ, start_response):
    from app import DebugRefused, create_app
    from app.web.security import under_gunicorn

    os.environ["FLASK_DEBUG"] = "1"
    try:
        create_app({"allow_debug": True})
        refusal = ""
    except DebugRefused as exc:
        refusal = str(exc)
    body = json.dumps({"under_gunicorn": under_gunicorn(), "refusal": refusal}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture(scope="module")
def plain_gunicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """gunicorn with the project's gunicorn.conf.py in front of a plain WSGI app: its limits act before any app."""
    folder = tmp_path_factory.mktemp("gunicorn")
    (folder / "plain_wsgi_app.py").write_text(PLAIN_WSGI_APP, encoding="utf-8")
    env = {"GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "2", "FLASK_DEBUG": "0"}
    with gunicorn("plain", "plain_wsgi_app:app", env, folder, pythonpath=[folder], ready_path="/") as server:
        yield server.port


def _raw_request(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"200"),
    ],
    ids=["long-request-line", "too-many-headers", "huge-header", "ordinary"],
)
def test_gunicorn_refuses_oversized_request_lines_and_headers(
    plain_gunicorn: int, request_bytes: bytes, status: bytes
) -> None:
    answer = _raw_request(plain_gunicorn, request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]


def test_under_gunicorn_debug_is_refused_even_when_allowed(plain_gunicorn: int) -> None:
    status, _, body = _raw_get(plain_gunicorn, "/")
    assert status == 200
    seen = json.loads(body)
    assert seen["under_gunicorn"] is True
    assert "refused under gunicorn" in seen["refusal"]


# -- no debug mode ---------------------------------------------------------------------------------


def test_flask_debug_is_refused_without_allow_debug(monkeypatch: pytest.MonkeyPatch, make_app: AppFactory) -> None:
    monkeypatch.delenv("SERVER_SOFTWARE", raising=False)
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(DebugRefused, match="GATEWAY_ALLOW_DEBUG=1"):
        make_app()
    assert make_app(allow_debug=True).debug is True  # local development, `flask run`
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/27.0.1")
    with pytest.raises(DebugRefused, match="under gunicorn"):
        make_app(allow_debug=True)


def test_debug_cannot_be_switched_on_later(monkeypatch: pytest.MonkeyPatch, make_app: AppFactory) -> None:
    monkeypatch.delenv("FLASK_DEBUG", raising=False)
    app = make_app()
    assert app.debug is False
    with pytest.raises(DebugRefused):
        app.debug = True
    with pytest.raises(DebugRefused):
        app.run(debug=True)  # refused before any server starts
    with pytest.raises(DebugRefused):
        app.run(use_debugger=True)
    assert app.debug is False
    app.debug = False  # switching it off is always fine


@pytest.mark.parametrize("flags", [["--debug", "run"], ["run", "--debugger"], ["run", "--debugger", "--no-reload"]])
def test_flask_run_with_the_debugger_exits_with_the_reason(tmp_path: Path, flags: list[str]) -> None:
    """`flask run --debug` or `--debugger` stops at start-up, before a debugger could listen."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    for name in ("FLASK_DEBUG", "SERVER_SOFTWARE", "GATEWAY_ALLOW_DEBUG"):
        env.pop(name, None)
    command = [sys.executable, "-m", "flask", "--app", "app", *flags, "--port", str(free_port())]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "GATEWAY_ALLOW_DEBUG=1" in done.stdout + done.stderr
