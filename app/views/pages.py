"""Browser pages: the upload form and POST /detect_face/image."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return "portrait gateway"
