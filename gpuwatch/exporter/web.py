"""The HTTP server: /metrics, /status, /-/healthy, /-/ready and a landing page.

Every handler reads the latest snapshot (through the exposition and the status document it is
given); none calls NVML. Request handling is bounded so that a slow or hostile client cannot
starve scrapes:

* a connection holds no request slot while its TLS handshake and request head arrive, which must
  happen within ``read_timeout_s`` (else 408), in at most ``MAX_HEAD_BYTES`` (else 431); so clients
  that trickle bytes cost a thread each, and never delay a scrape;
* at most ``CONNECTIONS_PER_REQUEST`` x ``max_requests`` connections are open at once, whatever
  they are doing (this bounds threads and memory). When they run short, connections still
  waiting for their request head are closed first; one client may hold at most half of them
  unfinished; and under pressure a head must arrive within a second (:mod:`.connections`);
* the password is checked before a request slot is taken and while the connection still counts
  as unfinished, so a flood of wrong passwords waits on bcrypt (one check at a time) without
  holding slots, and is closed first when connections run short
  (:class:`gpuwatch.webconfig.BasicAuth`);
* at most ``max_requests`` requests are served at once; a request waits for a slot (a burst of
  scrapes queues for the few milliseconds each takes), and is answered 503 only if none comes
  free within ``read_timeout_s``;
* one connection carries one request.

TLS and basic auth come from ``--web.config.file`` (:mod:`gpuwatch.webconfig`).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gpuwatch import __version__
from gpuwatch.exporter.address import Limits, parse_listen_address
from gpuwatch.exporter.connections import Connection, ConnectionTable
from gpuwatch.exporter.exposition import GZIP_LEVEL, GZIP_MIN_BYTES, CachedExposition, accepts_gzip
from gpuwatch.webconfig import AuthBusy, WebConfig, WebConfigSource

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024  # request line and headers; a scrape sends well under 1 KiB


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default backlog of 5 drops connections when many scrapers arrive at once,
    # and a dropped SYN costs the scraper a 1 s retransmit. The kernel caps it at somaxconn (4096).
    request_queue_size = 1024

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        dual_stack: bool,
        web_config: WebConfigSource,
        limits: Limits,
    ) -> None:
        self._dual_stack = dual_stack
        self.web_config = web_config
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_requests)
        self.connections = ConnectionTable(limits.max_connections, limits.max_unfinished_per_client)
        self._local = threading.local()
        super().__init__(address, handler)

    def server_bind(self) -> None:
        if self._dual_stack:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        client = client_address[0]
        admission = self.connections.admit(request, client)
        connection = admission.connection
        if connection is None:
            if admission.refused_because == "client":
                log.warning(
                    "%s holds %d unfinished connections (no complete, authorized request yet), "
                    "the most one client may; refusing another",
                    client,
                    self.limits.max_unfinished_per_client,
                )
            else:
                log.warning("%d connections open, all in requests; refusing one from %s", self.connections.open, client)
            self.shutdown_request(request)
            return
        if admission.closed is not None:
            log.warning(
                "%d connections open; closed the oldest unfinished one (from %s) to admit one from %s",
                self.limits.max_connections,
                admission.closed.client,
                client,
            )
        try:
            threading.Thread(
                target=self.process_request_thread, args=(request, client_address, connection), daemon=True
            ).start()
        except RuntimeError as exc:  # no thread to be had (systemd's TasksMax=, say)
            self.connections.release(connection)
            log.warning("cannot serve a connection from %s: %s", client, exc)
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any, connection: Connection) -> None:  # type: ignore[override]
        try:
            config = self.web_config.current()
            request.settimeout(self.limits.read_timeout_s)
            if config.ssl_context is not None:
                # CPython's handshake treats the socket timeout as a deadline for the whole
                # handshake, not per read, so a client trickling bytes cannot hold a slot.
                try:
                    request = config.ssl_context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
                    if not self.connections.replace_socket(connection, request):
                        return
                    request.do_handshake()
                except (OSError, ssl.SSLError) as exc:
                    log.info("TLS handshake with %s failed: %s", client_address[0], exc)
                    return
            self._local.config, self._local.connection = config, connection
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.connections.release(connection)
            self.shutdown_request(request)

    def service_actions(self) -> None:
        # Called by serve_forever after each accept and at least every poll interval (0.1 s).
        closed = self.connections.sweep()
        if closed:
            log.warning(
                "over half of %d connections open; closed %d with no complete, authorized request after %g s",
                self.limits.max_connections,
                closed,
                self.connections.pressure_head_s,
            )

    def request_started(self) -> bool:
        """This thread's request is in and authorized; False when its connection was closed
        early meanwhile (to make room for others)."""
        return self.connections.started(self._local.connection)

    def abandoned(self) -> bool:
        """Whether this thread's connection was closed early."""
        connection: Connection = self._local.connection
        return connection.closed_early

    def request_slot(self) -> bool:
        """Wait for one of the ``max_requests`` slots, up to the read timeout; True when one was taken."""
        return self._slots.acquire(timeout=self.limits.read_timeout_s)

    def release_slot(self) -> None:
        self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-response is routine, not a traceback on stderr.
        log.debug("error serving %s", client_address[0], exc_info=True)

    def connection_config(self) -> WebConfig:
        """The web config this thread's connection was accepted under."""
        config: WebConfig = self._local.config
        return config


@dataclass(frozen=True, slots=True)
class Response:
    """What a route added to the server (``routes``) answers; ``headers`` go with it."""

    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    code: int = 200


# A route answers from the query string (without the "?"); it must not block (no NVML, no network).
Route = Callable[[str], Response]


class WebServer:
    """Serves ``exposition`` at /metrics and ``status_document()`` at /status, and ``routes`` (the
    live page, :mod:`gpuwatch.page`) at their paths, under the same TLS, auth and limits."""

    def __init__(
        self,
        listen_address: str,
        exposition: CachedExposition,
        status_document: Callable[[], dict[str, Any]],
        ready: Callable[[], bool],
        web_config: WebConfigSource | None = None,
        limits: Limits | None = None,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        host, port = parse_listen_address(listen_address)
        self.exposition = exposition
        handler = _make_handler(exposition, status_document, ready, routes or {})
        self.web_config = web_config or WebConfigSource(None)
        self._server = _bind(host, port, handler, self.web_config, limits or Limits())
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        scheme = "https" if self.web_config.current().ssl_context else "http"
        host, port = self.address
        if host in ("0.0.0.0", "::"):
            host = "localhost"
        elif ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    def start(self) -> None:
        # Polling for shutdown every 0.1 s (not the default 0.5 s) keeps a stop prompt, for next to no CPU.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="gpuwatch-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _bind(
    host: str, port: int, handler: type[BaseHTTPRequestHandler], web_config: WebConfigSource, limits: Limits
) -> _Server:
    """Bind ``host:port``; an empty host means every interface, IPv6 and IPv4 where possible."""
    if host in ("", "::") and socket.has_ipv6:
        try:
            return _server_class(socket.AF_INET6)(("::", port), handler, True, web_config, limits)
        except OSError:
            if host == "::":
                raise
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _server_class(family)((host or "0.0.0.0", port), handler, False, web_config, limits)


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
    exposition: CachedExposition,
    status_document: Callable[[], dict[str, Any]],
    ready: Callable[[], bool],
    routes: Mapping[str, Route],
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = f"gpuwatch/{__version__}"
        server: _Server

        def handle(self) -> None:
            # One request per connection, its head read whole under a deadline and a size cap,
            # so the handler below never waits on the client.
            self.close_connection = True
            self.config = self.server.connection_config()
            head, error = _read_head(self.connection, self.server.limits.read_timeout_s)
            if error < 0:
                return  # the client went away, or the connection was closed to make room
            if error:
                self._refuse(error)
                return
            self.rfile = io.BytesIO(head)
            self.handle_one_request()

        def _refuse(self, error: int) -> None:
            self.command, self.request_version, self.requestline = "", "HTTP/1.0", ""
            self.send_error(error)

        def do_GET(self) -> None:
            try:
                authorized = self.config.authorized(
                    self.headers.get("Authorization"), self.server.limits.read_timeout_s, self.server.abandoned
                )
            except AuthBusy as exc:
                log.warning("%s; answering 503 to %s", exc, self.client_address[0])
                self._send(503, "text/plain; charset=utf-8", b"Busy checking passwords; try again later\n")
                return
            if not authorized:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="gpuwatch"')
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", "13")
                self._extra_headers()
                self.end_headers()
                self.wfile.write(b"Unauthorized\n")
                return
            if not self.server.request_started():
                return  # closed to make room while it waited for its password check
            if not self.server.request_slot():
                log.warning(
                    "all %d request slots busy for %g s; answering 503 to %s",
                    self.server.limits.max_requests,
                    self.server.limits.read_timeout_s,
                    self.client_address[0],
                )
                self._refuse(503)
                return
            try:
                self._route()
            finally:
                self.server.release_slot()

        def _route(self) -> None:
            path, _, query = self.path.partition("?")
            if path in routes:
                response = routes[path](query)
                self._send(response.code, response.content_type, response.body, headers=response.headers)
            elif path == "/metrics":
                body, content_type, encoding = exposition.render_encoded(
                    self.headers.get("Accept", ""), self.headers.get("Accept-Encoding", "")
                )
                self._send(200, content_type, body, encoding)
            elif path == "/status":
                body = json.dumps(status_document(), indent=2).encode() + b"\n"
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

        def _send(
            self,
            code: int,
            content_type: str,
            body: bytes,
            encoding: str | None = None,
            headers: Mapping[str, str] | None = None,
        ) -> None:
            """Send a response; ``encoding`` names a body already compressed (else gzip it if asked)."""
            if (
                encoding is None
                and len(body) > GZIP_MIN_BYTES
                and accepts_gzip(self.headers.get("Accept-Encoding", ""))
            ):
                body, encoding = gzip.compress(body, compresslevel=GZIP_LEVEL), "gzip"
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            if encoding is not None:
                self.send_header("Content-Encoding", encoding)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self._extra_headers()
            self.end_headers()
            self.wfile.write(body)

        def _extra_headers(self) -> None:
            for name, value in self.config.headers.items():
                self.send_header(name, value)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    return Handler


def _read_head(connection: socket.socket, timeout_s: float) -> tuple[bytes, int]:
    """The request line and headers, or an HTTP error: 408 past the deadline, 431 when too large,
    -1 when the client closed the connection."""
    deadline = time.monotonic() + timeout_s
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_HEAD_BYTES:
            return b"", 431
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"", 408
        connection.settimeout(remaining)
        try:
            chunk = connection.recv(4096)
        except TimeoutError:
            return b"", 408
        except OSError:
            return b"", -1
        if not chunk:
            return b"", -1
        head += chunk
    if len(head) > MAX_HEAD_BYTES:
        return b"", 431
    connection.settimeout(timeout_s)  # for writing the response
    return head, 0
