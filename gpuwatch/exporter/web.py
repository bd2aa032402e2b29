"""The HTTP server: /metrics, /status, /-/healthy, /-/ready and a landing page.

Every handler reads the sampler's latest snapshot; none calls NVML.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry

from gpuwatch import __version__
from gpuwatch.exporter.exposition import CachedExposition
from gpuwatch.model import Snapshot
from gpuwatch.status import to_document

log = logging.getLogger(__name__)

DEFAULT_PORT = 9961
DEFAULT_LISTEN_ADDRESS = f":{DEFAULT_PORT}"


class ListenAddressError(ValueError):
    """A --web.listen-address that is not host:port."""


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``:port`` (all interfaces), as Prometheus exporters do."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenAddressError(f"{address!r} is not host:port (e.g. ':{DEFAULT_PORT}' or '127.0.0.1:{DEFAULT_PORT}')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops connections when many scrapers arrive at once,
    # and a dropped SYN costs the scraper a 1 s retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], dual_stack: bool) -> None:
        self._dual_stack = dual_stack
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class WebServer:
    """Serves the exposition of ``registry`` and the ``/status`` document of ``latest()``."""

    def __init__(
        self,
        listen_address: str,
        registry: CollectorRegistry,
        latest: Callable[[], Snapshot],
        ready: Callable[[], bool],
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self.exposition = CachedExposition(registry, latest)  # the poll loop may call its prerender
        handler = _make_handler(self.exposition, latest, ready)
        self._server = _bind(host, port, handler)
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        if host in ("0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="gpuwatch-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _bind(host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> _Server:
    """Bind ``host:port``; an empty host means every interface, IPv6 and IPv4 where possible."""
    if host in ("", "::") and socket.has_ipv6:
        try:
            return _server_class(socket.AF_INET6)(("::", port), handler, dual_stack=True)
        except OSError:
            if host == "::":
                raise
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _server_class(family)((host or "0.0.0.0", port), handler, dual_stack=False)


def _server_class(family: socket.AddressFamily) -> type[_Server]:
    return type("_Server", (_Server,), {"address_family": family})


_LANDING = """<!doctype html>
<html><head><title>gpuwatch</title></head>
<body><h1>gpuwatch {version}</h1>
<p>GPU telemetry for LLM inference hosts.</p>
<ul>
<li><a href="/metrics">/metrics</a>: Prometheus exposition</li>
<li><a href="/status">/status</a>: per-GPU status as JSON (what <code>gpuwatch status</code> shows)</li>
<li><a href="/-/healthy">/-/healthy</a>, <a href="/-/ready">/-/ready</a></li>
</ul></body></html>
"""


def _make_handler(
    exposition: CachedExposition, latest: Callable[[], Snapshot], ready: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"gpuwatch/{__version__}"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = exposition.render(self.headers.get("Accept", ""))
                self._send(200, content_type, body)
            elif path == "/status":
                body = json.dumps(to_document(latest()), indent=2).encode() + b"\n"
                self._send(200, "application/json", body)
            elif path == "/-/healthy":
                self._send(200, "text/plain; charset=utf-8", b"OK\n")
            elif path == "/-/ready":
                if ready():
                    self._send(200, "text/plain; charset=utf-8", b"Ready\n")
                else:
                    self._send(503, "text/plain; charset=utf-8", b"Not ready: no poll has finished yet\n")
            elif path == "/":
                self._send(200, "text/html; charset=utf-8", _LANDING.format(version=__version__).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"Not found. Try /metrics or /status.\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            if "gzip" in self.headers.get("Accept-Encoding", "") and len(body) > 1024:
                body = gzip.compress(body)
                encoded = True
            else:
                encoded = False
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if encoded:
                self.send_header("Content-Encoding", "gzip")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler
