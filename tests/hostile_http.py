"""A raw-socket HTTP server on 127.0.0.1 that answers as a hostile token source would.

Each behaviour is a function of the accepted connection, the request's number (from 0) and a stop
event; it writes what it likes and returns. Endless behaviours write on until the client goes away
or the server stops, and never longer than ``MAX_S`` seconds, so no test can hang on one.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

MAX_S = 30.0

Behaviour = Callable[[socket.socket, int, threading.Event], None]


@contextmanager
def hostile_server(behaviour: Behaviour) -> Iterator[HostileServer]:
    server = HostileServer(behaviour)
    try:
        yield server
    finally:
        server.stop()


class HostileServer:
    """Accepts connections on a free loopback port and hands each to ``behaviour`` on a thread."""

    def __init__(self, behaviour: Behaviour) -> None:
        self._behaviour = behaviour
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self.requests: list[bytes] = []  # each request's head, as received
        self._thread = threading.Thread(target=self._accept, name="hostile-http", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url(self, userinfo: str = "") -> str:
        return f"http://{userinfo}127.0.0.1:{self.port}/metrics"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            index = len(self.requests)
            self.requests.append(b"")
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, conn: socket.socket, index: int) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                self.requests[index] = head
                self._behaviour(conn, index, self._stop)
            except OSError:
                pass  # the client gave up, as it should


def _drip(conn: socket.socket, stop: threading.Event, piece: bytes, every_s: float) -> None:
    """Send ``piece`` every ``every_s`` until the client goes away, the server stops, or MAX_S."""
    until = time.monotonic() + MAX_S
    while not stop.is_set() and time.monotonic() < until:
        conn.sendall(piece)
        time.sleep(every_s)


def dripping_headers(conn: socket.socket, index: int, stop: threading.Event) -> None:
    """A status line, then one byte of a header line every 50 ms: each read waits far less than a timeout."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
    _drip(conn, stop, b"a", 0.05)


def endless_continue(conn: socket.socket, index: int, stop: threading.Event) -> None:
    """``100 Continue`` interim responses, every 10 ms, never a final one."""
    _drip(conn, stop, b"HTTP/1.1 100 Continue\r\n\r\n", 0.01)


def endless_trailers(conn: socket.socket, index: int, stop: threading.Event) -> None:
    """A complete chunked body, then trailer lines without end."""
    body = b"vllm:generation_tokens_total 5\n"
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n" % (len(body), body))
    _drip(conn, stop, b"X-Trailer: a\r\n", 0.05)


def answer(body: Callable[[int], bytes], headers: bytes = b"") -> Behaviour:
    """A plain 200 with ``body(request number)`` and a Content-Length."""

    def behaviour(conn: socket.socket, index: int, stop: threading.Event) -> None:
        data = body(index)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(data), headers) + data)

    return behaviour


def vllm_counters(generation: float, start_time: float = 1.7e9) -> bytes:
    return (
        f"# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start_time}\n"
        "# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {generation}\n'
    ).encode()


def dense_exposition(series: int = 200_000, size: int = 16 * 1024 * 1024 - 64 * 1024) -> bytes:
    """``series`` vLLM generation-token series (each counting 1), padded to about ``size`` bytes."""
    head = b"# TYPE vllm:generation_tokens_total counter\n"
    line = 'vllm:generation_tokens_total{{engine="{i}",model_name="m{i:06d}",pad="{pad}"}} 1\n'
    plain = len(line.format(i=series, pad=""))
    pad = "p" * max(0, (size - len(head)) // series - plain)
    return head + "".join(line.format(i=i, pad=pad) for i in range(series)).encode()
