"""Which connections the web server keeps when they run short, so that idle clients cannot lock
Prometheus out.

A connection is *unfinished* from its accept until its request has arrived whole and passed the
password check (through the TLS handshake, the request head and a wait for bcrypt); then it is
*in a request*, bounded by the request slots and the read timeout, and is never closed early.
Unfinished connections cost a thread each and have done nothing for anyone yet, so they are the
ones given up:

* each client (source address) may hold at most ``per_client`` unfinished connections; more
  from it are refused at once (an accept and a close: cheaper than anything an attacker spends);
* when all ``capacity`` connections are open, a new one closes the oldest unfinished one
  instead of being refused; only when every open connection is in a request is it refused;
* under pressure (more than half of ``capacity`` open), a connection that has not finished its
  request head within ``pressure_head_s`` is closed (:meth:`ConnectionTable.sweep`), where
  otherwise it would have the whole read timeout.

A scrape is through within milliseconds of connecting (its password is cached), so none of this
touches it; a client holding hundreds of idle or trickling connections, or guessing passwords on
hundreds, holds at most ``per_client`` of them, each for about ``pressure_head_s`` under pressure.
A connection closed to make room counts until its thread has let go of it.

Closing is ``shutdown(2)`` on the socket from the accepting thread, which wakes the connection's
thread blocked in ``recv`` or in the TLS handshake; that thread then closes it. The table's lock
is held around both, so a socket is never shut down after its file descriptor was closed (and
perhaps reused).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

PRESSURE_HEAD_S = 1.0


@dataclass(eq=False)
class Connection:
    """One accepted connection, from accept until its thread closes it."""

    client: str
    opened: float
    sock: socket.socket  # shut down to close it early; the TLS socket once wrapped
    unfinished: bool = True
    closed_early: bool = False
    released: bool = field(default=False, repr=False)


@dataclass(frozen=True)
class Admission:
    """What :meth:`ConnectionTable.admit` did: ``connection`` is None when it refused."""

    connection: Connection | None
    refused_because: str = ""  # "client" (over its share) or "full" (every connection in a request)
    closed: Connection | None = None  # the unfinished connection closed to make room


class ConnectionTable:
    """Open connections, and which to close when they run short (see the module doc)."""

    def __init__(
        self,
        capacity: int,
        per_client: int,
        pressure_head_s: float = PRESSURE_HEAD_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity, self.per_client, self.pressure_head_s = capacity, per_client, pressure_head_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open = 0
        self._unfinished: OrderedDict[Connection, None] = OrderedDict()  # oldest first
        self._per_client: dict[str, int] = {}  # unfinished connections by client

    @property
    def open(self) -> int:
        return self._open

    def admit(self, sock: socket.socket, client: str) -> Admission:
        with self._lock:
            if self._per_client.get(client, 0) >= self.per_client:
                return Admission(None, "client")
            closed = None
            if self._open >= self.capacity:
                if not self._unfinished:
                    return Admission(None, "full")
                closed = next(iter(self._unfinished))
                self._close_early(closed)
            connection = Connection(client, self._clock(), sock)
            self._open += 1
            self._unfinished[connection] = None
            self._per_client[client] = self._per_client.get(client, 0) + 1
            return Admission(connection, closed=closed)

    def replace_socket(self, connection: Connection, sock: socket.socket) -> bool:
        """The socket to shut down is now ``sock`` (TLS wraps the accepted one); False when the
        connection was closed early meanwhile (and ``sock`` is shut down)."""
        with self._lock:
            connection.sock = sock
            if connection.closed_early:
                _shut(sock)
            return not connection.closed_early

    def started(self, connection: Connection) -> bool:
        """The request is in and authorized: never close it early now. False when it already was."""
        with self._lock:
            if connection.closed_early:
                return False
            self._finish(connection)
            return True

    def release(self, connection: Connection) -> None:
        """The connection's thread is done with it (and is about to close its socket)."""
        with self._lock:
            if connection.released:
                return
            connection.released = True
            self._open -= 1
            self._finish(connection)

    def sweep(self) -> int:
        """Under pressure, close unfinished connections older than ``pressure_head_s``; how many."""
        closed = 0
        with self._lock:
            if self._open * 2 <= self.capacity:
                return 0
            cutoff = self._clock() - self.pressure_head_s
            while self._unfinished:
                oldest = next(iter(self._unfinished))
                if oldest.opened > cutoff:
                    break
                self._close_early(oldest)
                closed += 1
        return closed

    def _close_early(self, connection: Connection) -> None:
        connection.closed_early = True
        self._finish(connection)
        _shut(connection.sock)

    def _finish(self, connection: Connection) -> None:
        if connection.unfinished:
            connection.unfinished = False
            del self._unfinished[connection]
            left = self._per_client[connection.client] - 1
            if left:
                self._per_client[connection.client] = left
            else:
                del self._per_client[connection.client]


def _shut(sock: socket.socket) -> None:
    # socket.socket's own shutdown, also for a TLS socket: the raw shutdown(2) only, leaving the
    # TLS object to the thread that owns it. OSError: the client has closed it already.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
