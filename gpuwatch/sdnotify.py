"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

The manager passes ``$NOTIFY_SOCKET``: a path, or an abstract name starting with ``@``. Each
message is one datagram of ``KEY=value`` lines. gpuwatch sends ``READY=1`` after its first poll,
``RELOADING=1``/``READY=1`` around a SIGHUP reload, ``STOPPING=1`` on the way out, ``STATUS=`` for
`systemctl status`, and ``WATCHDOG=1`` while the poll loop makes progress (:class:`Watchdog`).
Without ``$NOTIFY_SOCKET`` (not under systemd, or ``Type=simple``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to the socket named by ``$NOTIFY_SOCKET``, if any."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        name = env.get("NOTIFY_SOCKET", "")
        # An abstract socket name is written with a leading '@' and sent with a leading NUL.
        self._address: str | None = "\0" + name[1:] if name.startswith("@") else (name or None)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> bool:
        """Send one message, e.g. ``send(READY=1, STATUS="polling 4 GPUs")``; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block: a manager slow to read must not stall the watchdog thread.
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            if not self._warned:  # the manager went away or the socket is wrong: say so once
                log.warning("cannot notify systemd at %s: %s", self._address.replace("\0", "@"), exc)
                self._warned = True
            return False
        return True

    def reloading(self) -> None:
        """Start of a reload; systemd ≥ 253 wants the monotonic time with it."""
        self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)


def watchdog_interval_s(environ: Mapping[str, str] | None = None) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, or None when no watchdog is asked of this process.

    ``$WATCHDOG_PID``, when set, must be this process (sd_watchdog_enabled(3)).
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 1e6 if usec > 0 else None


class Watchdog:
    """Pings systemd's watchdog only while ``progress()`` keeps changing.

    ``progress`` is the poll loop's counter of finished polls. A poll that skips a lost GPU still
    finishes, so a lost GPU keeps the pings going; a loop wedged in a driver call stops them, and
    systemd restarts the service after ``WatchdogSec=``. The loop counts as stalled once it has not
    moved for ``stall_after_s``: half the watchdog interval, or two poll intervals if that is longer
    (a slow poll interval must not look like a wedge).
    """

    def __init__(
        self,
        notifier: Notifier,
        interval_s: float,
        progress: Callable[[], int],
        poll_interval_s: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notifier = notifier
        self.interval_s = interval_s
        self._progress = progress
        self._poll_interval_s = poll_interval_s  # may change on reload
        self._monotonic = monotonic
        self._seen = progress()
        self._moved_at = monotonic()
        self._stalled = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stall_after_s(self) -> float:
        return max(self.interval_s / 2, 2 * self._poll_interval_s())

    def check(self) -> bool:
        """Ping if the loop moved recently; True when a ping was sent. Called every quarter interval."""
        now, seen = self._monotonic(), self._progress()
        if seen != self._seen:
            self._seen, self._moved_at = seen, now
        if now - self._moved_at > self.stall_after_s:
            if not self._stalled:
                log.error(
                    "poll loop has made no progress for %.0f s; no longer pinging the systemd watchdog",
                    now - self._moved_at,
                )
                self._stalled = True
            return False
        if self._stalled:
            log.warning("poll loop is moving again")
            self._stalled = False
        return self._notifier.send(WATCHDOG=1)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuwatch-watchdog", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s / 4):
            self.check()

    def stop(self) -> None:
        self._stop.set()
