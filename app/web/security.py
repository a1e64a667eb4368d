"""Abuse resistance: a per-client rate limit on the pipeline, API keys on the API, security headers, no debug mode.

:func:`init_app` wires it all to one app; nothing is created at import time.

- One flask-limiter limit (``GATEWAY_RATE_LIMIT``) shared by the routes declared ``rate_limited``
  (``app.web.operations``: those that run models) and counted per client: the API key when a valid
  one was presented, else the client address (``GATEWAY_TRUSTED_PROXIES`` hops of X-Forwarded-For
  are believed, never more). Over it: 429
  ``rate_limited`` with Retry-After, as JSON or as the error page.
- The count lives in ``GATEWAY_RATE_LIMIT_STORAGE``: memory:// (per worker) or Redis (shared by
  every worker and pod). A Redis that stops answering costs one request its socket timeout, then
  each worker counts on its own (one warning) and flask-limiter re-checks the store with back-off
  (1 to 32 s); when it answers again, the shared count resumes (one more line in the log).
- With ``GATEWAY_API_KEYS``/``GATEWAY_API_KEYS_FILE`` set, the routes declared ``needs_key`` (the JSON API,
  unknown paths under it included, and the model surfaces /v1 and /v2) answer 401 without a valid key
  (``Authorization: Bearer <key>`` or ``X-API-Key``). Open: the pages, the gallery thumbnails, which the
  open browser page shows, the OpenAPI document, which says how to authenticate, health and metrics.
- Security headers on every response; the pages satisfy the Content-Security-Policy (no inline
  script or style, images from the gateway or data: URLs).
- JSON escapes ``<``, ``>`` and ``&``, so that no client- or gallery-given string appears raw.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

import click
from flask import Flask, Request, Response, g, request
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter, RateLimitExceeded, RequestLimit
from limits.errors import StorageError
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import ENV_PREFIX, RATE_LIMIT_STORAGE_TIMEOUT, Settings, redacted_storage_uri
from app.errors import RateLimited, Unauthorized
from app.protocols.json_text import html_safe
from app.web.operations import current_route

log = logging.getLogger(__name__)

API_KEY_HEADER = "X-API-Key"
REALM = "portrait gateway"
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # the result page's photo, crop and anime are data: URLs
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def init_app(app: Flask, settings: Settings) -> None:
    """Trusted proxies, the API key check, the rate limit (in that order) and the headers, on ``app``."""
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies
        )
    app.json = HtmlSafeJSONProvider(app)
    ApiKeys(settings.all_api_keys()).init_app(app)  # first: the limiter counts a valid key, not a guess
    if settings.rate_limit:
        ClientRateLimit(settings.rate_limit, settings.rate_limit_storage).init_app(app)
    headers = security_headers(settings.hsts)

    @app.after_request
    def add_security_headers(response: Response) -> Response:
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response


def security_headers(hsts: int = 0) -> dict[str, str]:
    """The headers every response carries; Strict-Transport-Security only when ``hsts`` seconds are set."""
    headers = dict(SECURITY_HEADERS)
    if hsts:
        headers["Strict-Transport-Security"] = f"max-age={hsts}; includeSubDomains"
    return headers


def debug_allowed(settings: Settings) -> bool:
    """Debug mode (and with it Werkzeug's debugger, which runs any code a visitor types) is for `flask run` only."""
    return settings.allow_debug and not under_gunicorn()


def debugger_requested() -> bool:
    """Whether this app is being loaded by `flask run --debugger`, which wraps it in the debugger without debug mode."""
    context = click.get_current_context(silent=True)
    return bool(context and context.command.name == "run" and context.params.get("debugger"))


def under_gunicorn() -> bool:
    # gunicorn's arbiter sets this in its environment, which its workers inherit.
    return os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")


def debug_refusal() -> str:
    where = "under gunicorn" if under_gunicorn() else f"without {ENV_PREFIX}ALLOW_DEBUG=1"
    return (
        f"debug mode is refused {where}: it would serve Werkzeug's debugger, which runs any Python a visitor "
        f"types. Unset FLASK_DEBUG (and drop --debug and --debugger); for local development with `flask run` only, set "
        f"{ENV_PREFIX}ALLOW_DEBUG=1."
    )


# -- API keys --------------------------------------------------------------------------------------


class ApiKeys:
    """The keys that open the routes declared ``needs_key``. None configured: they are open."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode("ascii") for key in keys)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def init_app(self, app: Flask) -> None:
        app.extensions["api_keys"] = self
        app.before_request(self.check_request)
        app.register_error_handler(Unauthorized, _render_unauthorized)

    def matches(self, presented: str) -> bool:
        """Whether ``presented`` is one of the keys, compared in constant time with each of them (no early exit)."""
        candidate = presented.encode("utf-8", "surrogateescape")
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found

    def check_request(self) -> None:
        """Before each request: a valid key for a route that needs one, when keys are set; remembers it as the
        client's identity."""
        if not self.required:
            return
        route = current_route()
        if route is None or not route.needs_key:
            return
        presented = presented_key(request)
        if presented is None:
            raise Unauthorized(
                f"this API needs a key: send it as 'Authorization: Bearer <key>' or in the {API_KEY_HEADER} header"
            )
        if not self.matches(presented):
            raise Unauthorized("the API key is not valid")
        # The rate limit counts per key: a digest, so the key itself is never stored with the counts.
        g.client_identity = "key:" + hashlib.sha256(presented.encode("ascii")).hexdigest()[:32]


def presented_key(req: Request) -> str | None:
    """The key a request carries: ``Authorization: Bearer <key>``, else the X-API-Key header."""
    scheme, _, credentials = req.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return req.headers.get(API_KEY_HEADER, "").strip() or None


def _render_unauthorized(error: Unauthorized) -> ResponseReturnValue:
    from app.web.errors import render_error

    body, status, headers = render_error(error)  # type: ignore[misc]
    challenge = f'Bearer realm="{REALM}"'
    if presented_key(request) is not None:
        challenge += ', error="invalid_token"'  # RFC 6750: a key was sent and refused
    headers["WWW-Authenticate"] = challenge
    return body, status, headers


# -- the rate limit --------------------------------------------------------------------------------


def _not_rate_limited() -> bool:
    route = current_route()
    return route is None or not route.rate_limited


def client_identity() -> str:
    """Who the rate limit counts: the valid API key presented, else the client address."""
    return g.get("client_identity") or f"addr:{request.remote_addr or 'unknown'}"


def storage_options(storage_uri: str) -> dict[str, Any]:
    """What the limit's storage is built with: errors as StorageError; for Redis, timeouts the URI does not set.

    Without a socket timeout redis-py waits for ever on a Redis that accepts and never answers,
    and every limited request would wait with it. Values in the URI's query win (redis-py's
    ``from_url`` lets them override these keyword arguments).
    """
    options: dict[str, Any] = {"wrap_exceptions": True}
    if urlsplit(storage_uri).scheme.split("+")[0] in ("redis", "rediss", "valkey", "valkeys"):
        options["socket_timeout"] = RATE_LIMIT_STORAGE_TIMEOUT
        options["socket_connect_timeout"] = RATE_LIMIT_STORAGE_TIMEOUT
    return options


class ClientRateLimit:
    """One limit per client, shared by the routes declared ``rate_limited``; X-RateLimit-* headers on their answers."""

    def __init__(self, limit: str, storage_uri: str) -> None:
        self.storage_uri = storage_uri
        self.limiter = Limiter(
            key_func=client_identity,
            # An application limit: one count for all the endpoints it applies to, which the filter narrows.
            application_limits=[limit],
            storage_uri=storage_uri,
            storage_options=storage_options(storage_uri),
            strategy="fixed-window",
            headers_enabled=False,  # set below: its Retry-After can round down to 0
            # The store fails open: when it errs or times out, this worker counts the same limit in its own
            # memory and flask-limiter asks the store again with back-off, going back to it once it answers.
            in_memory_fallback_enabled=True,
            swallow_errors=True,  # and should even that fail, the request goes through (logged), never a 500
            key_prefix="portrait-gateway",
        )
        self.limiter.request_filter(_not_rate_limited)
        self._store_lost = False
        self._store_lock = threading.Lock()

    def init_app(self, app: Flask) -> None:
        app.extensions["rate_limit"] = self
        self.limiter.init_app(app)
        app.after_request(self.note_storage_state)
        app.after_request(self.add_headers)
        app.register_error_handler(RateLimitExceeded, self.render_exceeded)

    @property
    def counting_locally(self) -> bool:
        """Whether this worker counts in its own memory because the configured store failed."""
        return self.limiter.limiter.storage is not self.limiter.storage

    def note_storage_state(self, response: Response) -> Response:
        """One warning when this worker loses the store, one when it has it back (flask-limiter's own log is silent)."""
        lost = self.counting_locally
        if lost != self._store_lost:
            with self._store_lock:
                if lost != self._store_lost:
                    self._store_lost = lost
                    where = redacted_storage_uri(self.storage_uri)
                    if lost:
                        log.warning(
                            "rate limit storage %s failed or timed out: this worker counts on its own until it "
                            "answers again (re-checked with back-off, 1 to 32 s)",
                            where,
                        )
                    else:
                        log.warning("rate limit storage %s answers again: the shared count resumes", where)
        return response

    def _tightest(self) -> RequestLimit | None:
        """The limit of this request with the fewest requests left (the breached one, when one was)."""
        current = self.limiter.current_limit
        if current is None or current.breached:
            return current
        return min(self.limiter.current_limits, key=lambda limit: limit.remaining, default=current)

    def add_headers(self, response: Response) -> Response:
        try:
            limit = self._tightest()
            if limit is not None:
                response.headers["X-RateLimit-Limit"] = str(limit.limit.amount)
                response.headers["X-RateLimit-Remaining"] = str(max(0, limit.remaining))
                response.headers["X-RateLimit-Reset"] = str(limit.reset_at)
        except StorageError as exc:  # the limit itself was let through: the headers are not worth a 500
            log.warning("rate limit headers left out, the storage failed: %s", exc)
        return response

    def render_exceeded(self, exc: RateLimitExceeded) -> ResponseReturnValue:
        from app.web.errors import render_error

        limit = self.limiter.current_limit
        wait = max(1, math.ceil(limit.reset_at - time.time())) if limit is not None else 1
        error = RateLimited(
            f"too many requests from this client: at most {exc.limit.limit} to the photo and model endpoints; "
            f"try again in {wait} s",
            retry_after=wait,
        )
        return render_error(error)


# -- JSON ------------------------------------------------------------------------------------------


class HtmlSafeJSONProvider(DefaultJSONProvider):
    """Flask's JSON, :func:`html_safe`."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return html_safe(super().dumps(obj, **kwargs))
