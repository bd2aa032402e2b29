"""A transparent proxy in front of Ollama's API that counts the tokens of the answers passing through.

Ollama has no metrics endpoint; its answers carry the counts (``prompt_eval_count`` and
``eval_count`` in the final object, ``"done": true``, of ``/api/generate`` and ``/api/chat``, streamed
as NDJSON or sent whole). Clients that talk to the proxy (``[[tokens]] listen``) instead of to Ollama
get Ollama's answers unchanged, and gpuwatch adds the counts to the source's :class:`Tally`.

Unchanged means byte for byte, both ways: the request head and body, the status line, the headers,
and the body with its framing (a chunked answer is forwarded chunk by chunk as it arrives, never
gathered). The proxy reads HTTP/1.1 framing only to know where a message ends and to see the body's
payload; it never rewrites a header. Each request gets a connection of its own to Ollama, closed
after the answer, so a client's keep-alive never depends on Ollama's.

Hostile cases, bounded:

* Ollama down: ``502 Bad Gateway`` with a body naming the upstream and the error.
* An error mid-stream (Ollama writes ``{"error": ...}`` and ends) passes through; nothing is counted,
  since no final object came. Ollama's connection breaking mid-answer breaks the client's too (a
  chunked answer then lacks its last chunk, so the client sees it cut short).
* A client that goes away mid-answer: the proxy closes Ollama's connection, which cancels the
  generation there, as a direct disconnect would.
* Lines: a line of the counted answers is parsed whole up to :data:`MAX_PARSED_LINE_BYTES`; of a
  longer one (a non-streaming answer with a long ``context``) only the last :data:`TAIL_BYTES` are
  kept, where Ollama writes the counts. Heads over :data:`MAX_HEAD_BYTES` are refused (431).
* Connections: at most :data:`MAX_CONNECTIONS` at once, like the web server; one more is answered
  ``503`` and closed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_CONNECTIONS = 64
MAX_PARSED_LINE_BYTES = 1024 * 1024
TAIL_BYTES = 64 * 1024
MAX_CHUNK_LINE_BYTES = 4096  # a chunk-size line or trailer line
CLIENT_IDLE_S = 120.0  # for a request head, or a request body to go on
UPSTREAM_WAIT_S = 900.0  # between two pieces of Ollama's answer: loading a large model takes minutes
CONNECT_S = 5.0
COUNTED_PATHS = ("/api/generate", "/api/chat")
_RECV = 64 * 1024


class Tally:
    """Token counts of the answers that went through a proxy; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompt = 0
        self._generation = 0
        self._answers = 0

    def add(self, prompt: int, generation: int) -> None:
        with self._lock:
            self._prompt += prompt
            self._generation += generation
            self._answers += 1

    def read(self) -> tuple[int, int, int]:
        """Prompt tokens, generated tokens and answers counted so far."""
        with self._lock:
            return self._prompt, self._generation, self._answers


class _Broken(Exception):
    """A message that cannot be relayed: malformed framing, or a side that went away."""


_TAIL_COUNT = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*([0-9]+)') for name in ("prompt_eval_count", "eval_count")
}


class LineCounter:
    """Reads the NDJSON payload of one answer and adds its final object's counts to a tally."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally
        self._line = bytearray()
        self._oversized = False

    def feed(self, payload: bytes) -> None:
        start = 0
        while (end := payload.find(b"\n", start)) != -1:
            self._take(payload[start:end])
            self._end_line()
            start = end + 1
        self._take(payload[start:])

    def finish(self) -> None:
        """The answer ended cleanly: a last line without a newline (a non-streaming answer) counts too."""
        if self._line or self._oversized:
            self._end_line()

    def _take(self, piece: bytes) -> None:
        self._line += piece
        if len(self._line) > MAX_PARSED_LINE_BYTES:
            self._oversized = True
        if self._oversized and len(self._line) > TAIL_BYTES:
            del self._line[: len(self._line) - TAIL_BYTES]

    def _end_line(self) -> None:
        line, oversized = bytes(self._line), self._oversized
        self._line.clear()
        self._oversized = False
        counts = _tail_counts(line) if oversized else _final_counts(line)
        if counts is not None:
            self._tally.add(*counts)


_DONE = re.compile(rb'"done"\s*:\s*true')


def _final_counts(line: bytes) -> tuple[int, int] | None:
    if not _DONE.search(line):
        return None  # not a final object: no JSON parsing for the many lines of a stream
    try:
        answer = json.loads(line)
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("done") is not True or "error" in answer:
        return None
    prompt, generation = answer.get("prompt_eval_count", 0), answer.get("eval_count", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (prompt, generation)):
        return None
    return prompt, generation


def _tail_counts(tail: bytes) -> tuple[int, int] | None:
    # In JSON a quote inside a string is escaped, so '"eval_count":' in the raw text is a key; Ollama
    # writes the counts after the text and context, and only in the final object.
    found = {name: pattern.findall(tail) for name, pattern in _TAIL_COUNT.items()}
    if not found["eval_count"]:
        return None
    prompt = int(found["prompt_eval_count"][-1]) if found["prompt_eval_count"] else 0
    return prompt, int(found["eval_count"][-1])


# -- HTTP/1.1 framing -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Head:
    """A message head as received (``raw`` is forwarded as is) and what framing needs of it."""

    raw: bytes
    start: list[str]  # the start line's words
    headers: list[tuple[str, str]]  # lower-case names

    def get(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def has_token(self, name: str, token: str) -> bool:
        return any(token in (t.strip().lower() for t in v.split(",")) for v in self.get(name))


def _parse_head(raw: bytes) -> _Head:
    lines = raw[:-4].decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _Broken(f"malformed header line {line[:80]!r}")
        headers.append((name.lower(), value.strip()))
    return _Head(raw, start, headers)


def _read_head(sock: socket.socket, buffered: bytes) -> tuple[_Head | None, bytes]:
    """A head from ``buffered`` and then ``sock``; (None, b"") when the peer closed before a byte."""
    data = buffered
    while (end := data.find(b"\r\n\r\n")) == -1:
        if len(data) > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        chunk = sock.recv(_RECV)
        if not chunk:
            if data:
                raise _Broken("connection closed inside a message head")
            return None, b""
        data += chunk
    if end + 4 > MAX_HEAD_BYTES:
        raise _HeadTooLarge
    return _parse_head(data[: end + 4]), data[end + 4 :]


class _HeadTooLarge(_Broken):
    """A head over MAX_HEAD_BYTES."""


def _body_framing(head: _Head, answering: str | None) -> tuple[str, int]:
    """("none"|"length"|"chunked"|"close", length) of a request's body (``answering`` None), or of a
    response's to a request of method ``answering`` (RFC 9112 §6.3)."""
    if answering is not None:
        status = int(head.start[1]) if len(head.start) > 1 and head.start[1].isdigit() else 0
        if answering == "HEAD" or status < 200 or status in (204, 304):
            return "none", 0
    codings = [c.strip().lower() for v in head.get("transfer-encoding") for c in v.split(",") if c.strip()]
    if codings:
        if codings[-1] == "chunked":
            return "chunked", 0
        if answering is None:
            raise _Broken("a request body whose length cannot be known")
        return "close", 0
    lengths = {v.strip() for v in head.get("content-length")}
    if lengths:
        (length,) = lengths if len(lengths) == 1 else (None,)
        if length is None or not length.isdigit():
            raise _Broken(f"bad Content-Length {sorted(lengths)}")
        return "length", int(length)
    return ("none", 0) if answering is None else ("close", 0)


class _Dechunker:
    """Finds the end of a chunked body fed in arbitrary pieces, and its payload."""

    def __init__(self) -> None:
        self._state = "size"
        self._line = b""
        self._left = 0

    def feed(self, data: bytes, payload: Callable[[bytes], None]) -> int | None:
        """Consume ``data``; hand payload pieces on; the offset just past the body's end, if it ends here."""
        i = 0
        while i < len(data):
            if self._state == "data":
                take = min(self._left, len(data) - i)
                payload(data[i : i + take])
                self._left -= take
                i += take
                if self._left == 0:
                    self._state = "data-end"
                continue
            end = data.find(b"\n", i)
            piece = data[i : len(data) if end == -1 else end + 1]
            self._line += piece
            i += len(piece)
            if len(self._line) > MAX_CHUNK_LINE_BYTES:
                raise _Broken("a chunk-size or trailer line over 4096 bytes")
            if end == -1:
                continue
            line, self._line = self._line.rstrip(b"\r\n"), b""
            if self._state == "data-end":
                if line:
                    raise _Broken("chunk data longer than its size")
                self._state = "size"
            elif self._state == "size":
                size = line.split(b";", 1)[0].strip()
                if not size or any(c not in b"0123456789abcdefABCDEF" for c in size) or len(size) > 15:
                    raise _Broken(f"bad chunk size {size[:20]!r}")
                self._left = int(size, 16)
                self._state = "data" if self._left else "trailer"
            elif not line:  # the empty line after the trailers: the body is complete
                return i
        return None


def _relay_body(
    src: socket.socket,
    dst: socket.socket,
    buffered: bytes,
    framing: tuple[str, int],
    payload: Callable[[bytes], None],
) -> bytes:
    """Forward one body from ``src`` to ``dst`` as it arrives; what of ``src`` came after it."""
    kind, length = framing
    if kind == "none":
        return buffered
    dechunker = _Dechunker() if kind == "chunked" else None
    left = length
    data = buffered
    while True:
        if data:
            if dechunker is not None:
                end = dechunker.feed(data, payload)
                if end is not None:
                    dst.sendall(data[:end])
                    return data[end:]
                dst.sendall(data)
            elif kind == "length":
                take = min(left, len(data))
                payload(data[:take])
                dst.sendall(data[:take])
                left -= take
                if left == 0:
                    return data[take:]
            else:
                payload(data)
                dst.sendall(data)
        elif kind == "length" and left == 0:
            return b""
        data = src.recv(_RECV)
        if not data:
            if kind == "close":
                return b""
            raise _Broken("connection closed inside a body")


# -- the proxy ------------------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) to listen on (port 0: any free one); raises ValueError."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not colon or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected host:port to listen on, e.g. '127.0.0.1:11435'")
    return host, int(port)


class OllamaProxy:
    """Listens on ``listen`` and relays every connection to ``upstream`` (Ollama's base URL)."""

    def __init__(self, listen: str, upstream: str, tally: Tally, max_connections: int = MAX_CONNECTIONS) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Ollama's URL must be http://host:port, not {upstream!r}")
        self.upstream_url = f"http://{parts.netloc.rpartition('@')[2]}"
        self._upstream = (parts.hostname, parts.port or 80)
        self.tally = tally
        host, port = parse_listen(listen)
        self._listener = socket.create_server((host, port), family=_family(host), backlog=128)
        self.address = self._listener.getsockname()[:2]
        self._slots = threading.BoundedSemaphore(max_connections)
        self._max = max_connections
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._down_logged = False
        self._thread = threading.Thread(target=self._accept, name="gpuwatch-ollama-proxy", daemon=True)

    @property
    def port(self) -> int:
        return int(self.address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("Ollama proxy on %s:%d, forwarding to %s", self.address[0], self.port, self.upstream_url)
        if not ipaddress.ip_address(self.address[0]).is_loopback:
            # Ollama listens on loopback by default for a reason: its API has no authentication.
            log.warning(
                "Ollama proxy listens on %s, beyond this host: whoever reaches port %d can use Ollama's API "
                "(no authentication); listen on 127.0.0.1 unless that is meant",
                self.address[0],
                self.port,
            )

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop accepting, cut every open connection, and wait for the accepting thread."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            if not self._slots.acquire(blocking=False):
                _answer(client, 503, f"gpuwatch proxy: too many connections (at most {self._max} at once)\n")
                client.close()
                continue
            self._track(client, True)
            threading.Thread(target=self._connection, args=(client,), name="gpuwatch-ollama-relay", daemon=True).start()

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._open.add if add else self._open.discard)(sock)
        if add and self._stop.is_set():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _connection(self, client: socket.socket) -> None:
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buffered = b""
            while not self._stop.is_set():
                client.settimeout(CLIENT_IDLE_S)
                try:
                    request, buffered = _read_head(client, buffered)
                except _HeadTooLarge:
                    _answer(client, 431, "gpuwatch proxy: request head over 64 KiB\n")
                    return
                except _Broken as exc:
                    _answer(client, 400, f"gpuwatch proxy: {exc}\n")
                    return
                if request is None:
                    return
                keep, buffered = self._exchange(client, request, buffered)
                if not keep:
                    return
        except (OSError, _Broken) as exc:
            log.debug("Ollama proxy: connection ended: %s", exc)
        finally:
            self._track(client, False)
            with contextlib.suppress(OSError):
                client.close()
            self._slots.release()

    def _exchange(self, client: socket.socket, request: _Head, buffered: bytes) -> tuple[bool, bytes]:
        """Relay one request and its answer; whether the client's connection goes on, and its unread bytes."""
        if len(request.start) != 3 or not request.start[2].startswith("HTTP/1."):
            _answer(client, 400, "gpuwatch proxy: not an HTTP/1.x request\n")
            return False, b""
        method, target, version = request.start
        try:
            request_framing = _body_framing(request, None)
        except _Broken as exc:
            _answer(client, 400, f"gpuwatch proxy: {exc}\n")
            return False, b""
        try:
            upstream = socket.create_connection(self._upstream, timeout=CONNECT_S)
        except OSError as exc:
            self._upstream_down(exc)
            _answer(client, 502, f"gpuwatch proxy: cannot reach Ollama at {self.upstream_url}: {_reason(exc)}\n")
            return False, b""
        if self._down_logged:
            log.info("Ollama proxy: %s answers again", self.upstream_url)
            self._down_logged = False
        self._track(upstream, True)
        try:
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            upstream.settimeout(UPSTREAM_WAIT_S)
            upstream.sendall(request.raw)
            answer_buffered = b""
            if request.has_token("expect", "100-continue"):
                # The client waits for "100 Continue" before its body: Ollama's word decides.
                interim, answer_buffered = _read_head(upstream, b"")
                if interim is None:
                    raise _Broken("Ollama closed the connection without an answer")
                client.sendall(interim.raw)
                if interim.start[1:2] != ["100"]:
                    return self._answer_body(client, upstream, interim, method, target, answer_buffered, False), b""
            client.settimeout(CLIENT_IDLE_S)
            rest = _relay_body(client, upstream, buffered, request_framing, lambda _: None)
            while True:
                upstream.settimeout(UPSTREAM_WAIT_S)
                head, answer_buffered = _read_head(upstream, answer_buffered)
                if head is None:
                    raise _Broken("Ollama closed the connection without an answer")
                client.sendall(head.raw)
                code = head.start[1] if len(head.start) > 1 else ""
                if code == "101":
                    return False, b""  # Ollama upgrades nothing; no tunnel is kept open
                if not (code.startswith("1") and len(code) == 3):
                    break
            keep = not (
                version == "HTTP/1.0"
                or request.has_token("connection", "close")
                or head.has_token("connection", "close")
            )
            return self._answer_body(client, upstream, head, method, target, answer_buffered, keep), rest
        finally:
            self._track(upstream, False)
            with contextlib.suppress(OSError):
                upstream.close()

    def _answer_body(
        self,
        client: socket.socket,
        upstream: socket.socket,
        head: _Head,
        method: str,
        target: str,
        data: bytes,
        keep: bool,
    ) -> bool:
        framing = _body_framing(head, method)
        counted = (
            method == "POST"
            and urllib.parse.urlsplit(target).path in COUNTED_PATHS
            and head.start[1:2] == ["200"]
            and not head.get("content-encoding")
        )
        counter = LineCounter(self.tally) if counted else None
        _relay_body(upstream, client, data, framing, counter.feed if counter else lambda _: None)
        if counter is not None:
            counter.finish()
        return keep and framing[0] != "close"

    def _upstream_down(self, exc: OSError) -> None:
        if not self._down_logged:
            log.warning("Ollama proxy: cannot reach %s: %s (clients get 502)", self.upstream_url, _reason(exc))
            self._down_logged = True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is Ollama running?)"
    if isinstance(exc, TimeoutError):
        return f"no connection within {CONNECT_S:g} s"
    return exc.strerror or str(exc) or type(exc).__name__


def _answer(sock: socket.socket, status: int, text: str) -> None:
    reasons = {
        400: "Bad Request",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }
    body = text.encode()
    head = (
        f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(OSError):
        sock.settimeout(5.0)
        sock.sendall(head.encode() + body)
        # Read what the client still sends (up to 64 KiB, half a second) before closing: closing with
        # unread bytes makes the kernel reset the connection, and the client may never read the answer.
        # Half a second in all, not per read: a client trickling a byte at a time must not hold the
        # accept thread (which answers the 503s) for longer.
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 0.5
        drained = 0
        while drained < MAX_HEAD_BYTES and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not (data := sock.recv(_RECV)):
                break
            drained += len(data)
