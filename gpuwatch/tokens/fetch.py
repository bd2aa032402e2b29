"""One bounded HTTP GET of a server's ``/metrics``: a deadline for the whole exchange, a size cap."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.parse
from dataclasses import dataclass

_CHUNK = 64 * 1024
_ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"


class FetchError(Exception):
    """The server did not give a usable response; the message says why."""


@dataclass(frozen=True, slots=True)
class Response:
    """A token endpoint's body, and what says when the server started."""

    text: str
    start_time_header: str | None  # llama.cpp's Process-Start-Time-Unix: changes when it restarts


def fetch(url: str, timeout_s: float, max_bytes: int) -> Response:
    """GET ``url``, failing if the exchange takes longer than ``timeout_s`` or the body exceeds ``max_bytes``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FetchError(f"not an http(s) URL: {url!r}")
    deadline = time.monotonic() + timeout_s
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("GET", path, headers={"Accept": _ACCEPT, "User-Agent": "gpuwatch"})
        response = connection.getresponse()
        if response.status != 200:
            raise FetchError(f"HTTP {response.status} {response.reason}")
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise FetchError(f"response of {int(length)} bytes is over the {max_bytes}-byte limit")
        body = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FetchError(f"no complete response within {timeout_s:g} s")
            if connection.sock is not None:
                connection.sock.settimeout(remaining)
            chunk = response.read1(_CHUNK)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"response over the {max_bytes}-byte limit")
        header = response.getheader("Process-Start-Time-Unix")
    except TimeoutError:
        raise FetchError(f"no complete response within {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(_describe(exc)) from None
    finally:
        connection.close()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError("response is not UTF-8 text") from None
    return Response(text=text, start_time_header=header)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is the server running, with metrics enabled?)"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
