"""The live page's routes: the page and its assets at ``/``, and its data at ``/api/page``.

The page is self-contained: its script, style sheet and icon are package data served from here, it
draws its charts as SVG itself, and it names no other host. Every response carries a strict
Content-Security-Policy (``default-src 'self'``, no inline script or style) and the usual
hardening headers. ``/api/page`` is what the page polls once per poll interval: the ``/status``
document of the latest poll (the very values ``/status`` shows for it), the ring buffer's points
newer than ``?since=``, and on a full load (no ``since``) the tuner result, if one is configured.
The server's own limits bound it like any other request; a poll holds no connection open.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from gpuwatch.exporter.web import Response, Route
from gpuwatch.page.history import REASONS, History
from gpuwatch.page.tuner import TunerFile

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# path -> (package file, content type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


def asset(name: str) -> bytes:
    """A file of the page, as shipped in the package (``gpuwatch/page/static/``)."""
    return resources.files("gpuwatch.page").joinpath("static", name).read_bytes()


def page_routes(
    status_document: Callable[[], dict[str, Any]], history: History, tuner_result: str | Path | None = None
) -> dict[str, Route]:
    """The routes :class:`gpuwatch.exporter.web.WebServer` adds for the page."""
    routes: dict[str, Route] = {path: _static(name, content_type) for path, (name, content_type) in ASSETS.items()}
    tuner = None if tuner_result is None else TunerFile(Path(tuner_result))

    def data(query: str) -> Response:
        values = parse_qs(query).get("since")
        since = None
        if values:
            try:
                since = float(values[0])
            except ValueError:
                since = math.nan
            if not math.isfinite(since):
                return Response("text/plain; charset=utf-8", b"since: expected a poll timestamp\n", _NO_STORE, 400)
        doc: dict[str, Any] = {
            "status": status_document(),
            "history": history.since(since),
            "reasons": list(REASONS),
        }
        if since is None:
            doc["tuner"] = None if tuner is None else tuner.current()
        return Response("application/json", json.dumps(doc, separators=(",", ":")).encode(), _NO_STORE)

    routes["/api/page"] = data
    return routes


_NO_STORE = {**SECURITY_HEADERS, "Cache-Control": "no-store"}


def _static(name: str, content_type: str) -> Route:
    body = asset(name)
    headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
    return lambda query: Response(content_type, body, headers)
