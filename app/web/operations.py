"""Route declarations: what each view answers (its OpenAPI operations) and whether it needs a key, is rate-limited
and runs models, attached to the view function itself.

    @bp.post("/search")
    @operation("search", "Gallery faces nearest to the face in a photo", tags=("portrait",), query=SearchParams,
               body=PHOTO, answers={200: Answer("The face and its matches", SearchResult)}, errors=(400, 415, 503),
               needs_key=True, rate_limited=True, runs_models=True)
    def search(): ...

``app.web.security`` asks :func:`current_route` whether the endpoint being served needs a key or is counted by
the rate limit; ``app.views.openapi`` generates the document from the operations and ``app.url_map``. A route
with no operations (a page, /metrics, the catch-all that answers unknown paths under a surface) is declared
for its flags and left out of the document. A catch-all that reads its path itself (TF Serving's REST API)
names the paths it answers in its operations. Undeclared (static files): no key, no limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from flask import Blueprint, current_app, request
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException
from werkzeug.routing import PathConverter

Model = type[BaseModel]
V = TypeVar("V", bound=Callable)
_ATTRIBUTE = "declared_route"


@dataclass(frozen=True)
class Answer:
    """What one status answers: JSON of a response model (of one of several), other media types, its headers."""

    description: str
    model: Model | tuple[Model, ...] | None = None
    media_types: tuple[str, ...] = ()  # besides the model's JSON: "image/png" (bytes), "application/json" (any JSON)
    headers: tuple[str, ...] = ()  # response headers, by name: "Server-Timing", "Retry-After" ...


@dataclass(frozen=True)
class Photo:
    """The request body is a photo: the multipart field ``image_file`` (the query parameters may come as form
    fields beside it) or, with ``raw``, the image itself with an image content type."""

    raw: bool = True


@dataclass(frozen=True)
class JsonBody:
    """The request body is JSON of ``model``; with ``binary``, it may be followed by bytes (octet-stream)."""

    model: Model
    binary: bool = False


PHOTO = Photo()


@dataclass(frozen=True)
class Operation:
    """One operation of the OpenAPI document.

    ``path_params``, ``query`` and ``headers`` are pydantic models, a field per parameter (a header's name is
    its field's alias); ``errors`` the error statuses it can answer (401 and 429 are added from the route's
    flags and the app's settings), each with ``error_model``'s body (None: the gateway's ``Error``).
    ``path`` is the documented path of a catch-all route, which answers several; else the rule's is used.
    """

    operation_id: str
    summary: str
    tags: tuple[str, ...] = ()
    description: str = ""
    path_params: Model | None = None
    query: Model | None = None
    headers: Model | None = None
    body: Photo | JsonBody | None = None
    answers: Mapping[int, Answer] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    error_model: Model | None = None
    path: str | None = None


@dataclass(frozen=True)
class Route:
    """A view's declaration: its operations (none: not in the document) and what guards it."""

    operations: tuple[Operation, ...] = ()
    needs_key: bool = False  # with GATEWAY_API_KEYS set, 401 without a valid key
    rate_limited: bool = False  # counted by GATEWAY_RATE_LIMIT, per client
    runs_models: bool = False  # a request costs model time


def declare(
    *operations: Operation, needs_key: bool = False, rate_limited: bool = False, runs_models: bool = False
) -> Callable[[V], V]:
    """Attach a :class:`Route` to a view function (above or below the blueprint's route decorator)."""
    route = Route(operations, needs_key=needs_key, rate_limited=rate_limited, runs_models=runs_models)

    def attach(view: V) -> V:
        setattr(view, _ATTRIBUTE, route)
        return view

    return attach


def operation(
    operation_id: str,
    summary: str,
    *,
    needs_key: bool = False,
    rate_limited: bool = False,
    runs_models: bool = False,
    **details: object,
) -> Callable[[V], V]:
    """Declare a view that answers one operation at its rule's path (``details``: :class:`Operation`'s fields)."""
    return declare(
        Operation(operation_id, summary, **details),  # type: ignore[arg-type]
        needs_key=needs_key,
        rate_limited=rate_limited,
        runs_models=runs_models,
    )


def route_of(view: Callable | None) -> Route | None:
    """The declaration of a view function; None for an undeclared one (static files)."""
    return getattr(view, _ATTRIBUTE, None)


def current_route() -> Route | None:
    """The declaration of the endpoint serving this request; None when no route matched or it is undeclared."""
    if request.endpoint is None:
        return None
    return route_of(current_app.view_functions.get(request.endpoint))


# -- catch-all routes ------------------------------------------------------------------------------

# Every method a catch-all takes, so that any request under its prefix is its business.
ANY_METHOD = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
CATCH_ALL = "everything"  # the converter of a catch-all's rule: ``/v2/<everything:rest>``


class AnyPath(PathConverter):
    """The rest of a path, whatever it holds: Werkzeug's ``path`` stops at a newline (a decoded %0A), and a
    catch-all answers for every path under its prefix."""

    regex = "(?s:.+)"
    part_isolating = False  # it spans slashes (Werkzeug guesses otherwise from a regex without "/")


def any_path_converter(blueprint: Blueprint) -> None:
    """Make ``<everything:...>`` usable in the blueprint's rules. Call it before the blueprint's first rule."""
    blueprint.record_once(lambda state: state.app.url_map.converters.setdefault(CATCH_ALL, AnyPath))


def answered_elsewhere(methods: Iterable[str]) -> list[str]:
    """Those of ``methods`` that a route other than the one serving this request answers at its path (a
    catch-all's 405 names them)."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    found = []
    for method in methods:
        try:
            endpoint, _ = adapter.match(request.path, method=method)
        except HTTPException:  # no such route, another method, or a redirect
            continue
        if endpoint != request.endpoint:
            found.append(method)
    return found


def allowed_methods() -> set[str]:
    """The methods the routes at this request's path answer, not counting a catch-all's (which takes any method
    only to answer 401, 404 or 405 in its surface's words): what an answer to OPTIONS names in Allow."""
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed: set[str] = set()
    for method in ANY_METHOD:
        try:
            rule, _ = adapter.match(request.path, method=method, return_rule=True)
        except HTTPException:
            continue
        if f"<{CATCH_ALL}:" not in rule.rule:
            allowed |= rule.methods or set()
    return allowed
