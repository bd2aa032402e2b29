"""Logging to stderr, shaped for a terminal or for journald, with repeated messages rate-limited.

Under systemd, stderr is a stream into journald, which stamps every line itself and reads a
``<N>`` syslog priority prefix (sd-daemon(3)); there gpuwatch writes ``<3>gpuwatch.sampler: …``
with no timestamp of its own. It knows it is there when ``$JOURNAL_STREAM`` names the device and
inode of its stderr (systemd.exec(5)). Elsewhere lines carry an ISO timestamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TextIO

# syslog priorities (sd-daemon(3)): err 3, warning 4, info 6, debug 7
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journald stream systemd named in ``$JOURNAL_STREAM``."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{device}:{inode}"


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``; journald adds the time, host and unit."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"<{priority}>{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class RateLimit(logging.Filter):
    """Lets one message template through at most ``burst`` times per ``interval_s``.

    Messages are grouped by logger and unformatted template, so "GPU 1 lost: …" repeated every
    poll counts as one kind. When a window ends with messages held back, the next one that passes
    says how many were suppressed. Debug messages are never limited.
    """

    def __init__(self, interval_s: float = 60.0, burst: int = 5, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s, self.burst, self._clock = interval_s, burst, clock
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}  # start, passed, suppressed

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.INFO:
            return True
        key = (record.name, str(record.msg))
        now = self._clock()
        start, passed, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.interval_s:
            if suppressed:
                record.msg = (
                    f"{record.msg} (suppressed {suppressed} similar messages in the last {self.interval_s:.0f} s)"
                )
            start, passed, suppressed = now, 0, 0
        if passed >= self.burst:
            self._windows[key] = (start, passed, suppressed + 1)
            return False
        self._windows[key] = (start, passed + 1, suppressed)
        return True


def setup(level: str, stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Configure the root logger: journald or terminal format, rate limit, ``level``."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    if stderr_is_journal(stream, environ):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z")
        )
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper()))
