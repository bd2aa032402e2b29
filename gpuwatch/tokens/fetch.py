"""One bounded HTTP GET of a server's ``/metrics``: one deadline for the whole exchange, a size cap.

The deadline covers every wait of the exchange, not each read: the connection, the TLS handshake,
the request, the status line and headers (however many ``100 Continue`` come first), the body and a
chunked body's trailers. A server that drips bytes just faster than a per-read timeout, or answers
``100 Continue`` or trailer lines without end, is cut off when the source's ``timeout`` is spent.
The body is handed on in pieces as it arrives (to :class:`~gpuwatch.tokens.parse.CountReader`), so a
large response is never held whole, and parsing it spends the same deadline.
"""

from __future__ import annotations

import base64
import http.client
import io
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

_CHUNK = 64 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


_ERROR_BODY_BYTES = 4096  # of a refusal's body, kept to tell why (a server whose metrics are switched off says so)


class FetchError(Exception):
    """The server did not give a usable response; the message says why.

    For an answer other than 200: its ``status``, its ``Server`` header and the start of its ``body``.
    """

    def __init__(self, message: str, status: int | None = None, server: str | None = None, body: bytes = b"") -> None:
        super().__init__(message)
        self.status, self.server, self.body = status, server, body


@dataclass(frozen=True, slots=True)
class Response:
    """What the headers of a token endpoint's answer say (its body went to the consumer)."""

    start_time_header: str | None  # llama.cpp's Process-Start-Time-Unix: changes when it restarts


class _Expired(TimeoutError):
    """The exchange's deadline has passed."""


class _Deadline:
    def __init__(self, timeout_s: float) -> None:
        self.at = time.monotonic() + timeout_s
        self.received = 0  # bytes of the response so far, head included

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise _Expired
        return left


class _Reader(io.RawIOBase):
    """The response side of the socket: every receive waits at most until the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock, self._deadline = sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self._sock.settimeout(self._deadline.remaining())
        count = self._sock.recv_into(buffer)
        self._deadline.received += count
        return count


class _Socket:
    """What http.client asks of its socket (send, makefile, close), bounded by the deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.remaining())
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_Reader(self._sock, self._deadline))

    def close(self) -> None:
        pass  # http.client closes its socket on reading the head of a last response: fetch closes it after the body


class _Connection(http.client.HTTPConnection):
    """An HTTP(S) connection whose connect and TLS handshake spend the exchange's deadline too."""

    def __init__(self, parts: urllib.parse.SplitResult, deadline: _Deadline) -> None:
        default_port = 443 if parts.scheme == "https" else 80
        super().__init__(str(parts.hostname), parts.port or default_port)
        self._tls = parts.scheme == "https"
        self._deadline = deadline
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        failure: OSError = OSError(f"cannot resolve {self.host}")
        for family, kind, proto, _, address in socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(self._deadline.remaining())
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls:
                    # One handshake is one operation: CPython bounds it by the socket's timeout as a whole.
                    context = ssl.create_default_context()
                    sock = context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
                    sock.settimeout(self._deadline.remaining())
                    sock.do_handshake()
            except OSError as exc:
                sock.close()
                if isinstance(exc, TimeoutError):
                    raise
                failure = exc
                continue
            self.raw, self.sock = sock, _Socket(sock, self._deadline)
            return
        raise failure


def fetch(url: str, timeout_s: float, max_bytes: int, consume: Callable[[bytes], None]) -> Response:
    """GET ``url``, handing the body to ``consume`` as it arrives; fails if the whole exchange
    (``consume`` included) takes longer than ``timeout_s`` or the body exceeds ``max_bytes``.

    ``user:password@`` in the URL is sent as basic authentication.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError("not an http(s) URL")
    deadline = _Deadline(timeout_s)
    connection = _Connection(parts, deadline)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Accept": _ACCEPT, "User-Agent": "gpuwatch", "Connection": "close"}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise FetchError(
                f"HTTP {response.status} {_printable(response.reason)}",
                response.status,
                response.getheader("Server"),
                _start_of_body(response),
            )
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise FetchError(f"response of {int(length)} bytes is over the {max_bytes}-byte limit")
        size = 0
        while chunk := response.read1(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise FetchError(f"response over the {max_bytes}-byte limit")
            consume(chunk)
            deadline.remaining()  # parsing spends the deadline too
        header = response.getheader("Process-Start-Time-Unix")
    except TimeoutError:
        raise FetchError(f"no complete response within {timeout_s:g} s ({deadline.received} bytes came)") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(_describe(exc)) from None
    finally:
        connection.close()
        if connection.raw is not None:
            connection.raw.close()
    return Response(start_time_header=header)


def _start_of_body(response: http.client.HTTPResponse) -> bytes:
    """Up to :data:`_ERROR_BODY_BYTES` of a refusal's body, what arrives of it within the deadline."""
    body = b""
    try:
        while len(body) < _ERROR_BODY_BYTES and (chunk := response.read1(_ERROR_BODY_BYTES - len(body))):
            body += chunk
    except (OSError, http.client.HTTPException):  # TimeoutError included: the status alone still tells
        pass
    return body


def _printable(text: str) -> str:
    """A server's words with control characters (terminal escapes) taken out, and kept short."""
    return "".join(c if c.isprintable() else "?" for c in text[:200])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running, with metrics enabled?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return _printable(str(exc)) or type(exc).__name__
