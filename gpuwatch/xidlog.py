"""Xids from the kernel log: the ``NVRM: Xid`` lines the NVIDIA driver prints, including those NVML
never delivers as events (79 fallen off the bus, 119/120 GSP; DCGM issue 162).

Sources (``--xid-log`` / ``xid_log``):

* ``kmsg``: ``/dev/kmsg``, one record per read (``PRI,SEQ,USEC,FLAGS;MESSAGE``), the kernel's ring
  buffer since boot. Reading it needs ``CAP_SYSLOG`` where ``kernel.dmesg_restrict = 1``;
* ``journal``: ``journalctl --dmesg --boot --follow --output=short-monotonic``, for a service user in
  the ``systemd-journal`` (or ``adm``) group;
* ``feed``: a simulated host's kernel log kept in memory (``feed(offset, size)`` gives its bytes);
* a file path: lines in ``dmesg`` form (``[  123.456789] NVRM: Xid (PCI:0000:3b:00): 79, ...``), the
  simulated host's kernel log, or a file another tool keeps;
* ``auto``: ``kmsg`` where it can be opened, else ``journal`` where ``journalctl`` exists;
* ``off``.

Counting once (the sampler decides, by each line's time): lines logged before NVML's event set was
registered all count (the backfill since boot, and any while NVML was down), since the event set
only sees what happens after it is registered. Later lines count only for Xids NVML does not deliver
(:data:`KERNEL_ONLY_XIDS`), or every Xid when NVML events are not being watched; the rest arrive as
NVML events too. A line without a timestamp is taken as logged when it is read.

Reading never blocks a poll: :meth:`XidLog.pump` reads what is there, at most :data:`MAX_PUMP_BYTES`
a call, without waiting (``O_NONBLOCK``, or a pipe read on a thread of its own), and a line that is
not an Xid line, is garbled or longer than :data:`MAX_LINE_BYTES` is skipped. When the source cannot
be read, that is logged once and :attr:`XidLog.readable` is False (``gpuwatch_xid_log_readable 0``);
it is tried again on every pump.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

# NVML cannot deliver these as Xid events (DCGM maintainers, DCGM issue 162): the GPU or its GSP is
# gone. 154 (the recovery action changed, R570+) comes as its own event type
# (nvmlEventTypeGpuRecoveryAction), which gpuwatch does not register, so the kernel log is its source.
KERNEL_ONLY_XIDS = frozenset({79, 119, 120, 154})
MAX_LINE_BYTES = 4096
MAX_PUMP_BYTES = 1 << 20
MAX_PENDING = 10_000
KMSG = "/dev/kmsg"
JOURNAL_COMMAND = ("journalctl", "--dmesg", "--boot", "--follow", "--output=short-monotonic", "--no-pager", "--quiet")

# "NVRM: Xid (PCI:0000:3b:00): 79, pid=..."; older drivers print "(0000:03:00)" without "PCI:".
_XID = re.compile(
    rb"NVRM: Xid \((?:PCI:)?([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?\): (\d{1,5}),"
)
_STAMP = re.compile(rb"^\[\s*(\d{1,10}\.\d{1,9})\]")  # dmesg and journalctl short-monotonic


@dataclass(frozen=True, slots=True)
class KernelXid:
    """One Xid line: the GPU's PCI location (domain, bus, device), the Xid, and when (daemon time)."""

    pci: tuple[int, int, int]
    xid: int
    timestamp: float


def pci_location(bus_id: str) -> tuple[int, int, int] | None:
    """NVML's bus id (``00000000:3B:00.0``) as (domain, bus, device); None if it is not one."""
    parts = bus_id.split(":")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".", 1)[0], 16)
    except ValueError:
        return None


def parse_line(line: bytes) -> tuple[tuple[int, int, int], int, float | None] | None:
    """An Xid line's (PCI location, Xid, seconds since boot or None); None for any other line."""
    match = _XID.search(line)
    if match is None:
        return None
    domain, bus, device = (int(g, 16) for g in match.groups()[:3])
    stamp = _STAMP.match(line)
    return (domain, bus, device), int(match.group(4)), (float(stamp.group(1)) if stamp else None)


def parse_kmsg_record(record: bytes) -> tuple[tuple[int, int, int], int, float | None] | None:
    """A ``/dev/kmsg`` record's Xid (its timestamp is the record's, in µs since boot)."""
    head, sep, message = record.partition(b";")
    if not sep:
        return None
    parsed = parse_line(message.split(b"\n", 1)[0])
    if parsed is None:
        return None
    fields = head.split(b",")
    try:
        since_boot = int(fields[2]) / 1e6
    except (IndexError, ValueError):
        since_boot = None
    return parsed[0], parsed[1], since_boot


class XidLog:
    """One kernel-log source, read without blocking; :meth:`take` hands over the Xids found."""

    def __init__(
        self,
        source: str,
        clock: Callable[[], float],
        since_boot: Callable[[], float],
        feed: Callable[[int, int], bytes] | None = None,
    ) -> None:
        """``clock``: daemon time; ``since_boot``: seconds since boot now (the log's own time);
        ``feed``: the log's bytes from an offset, for a log that is not a file (``source`` names it)."""
        self.source = source
        self._feed = feed
        self._clock = clock
        self._since_boot = since_boot
        self._kind = "feed" if feed is not None else _resolve(source)
        self.readable: bool | None = None
        self._fd: int | None = None  # /dev/kmsg or a file
        self._offset = 0  # a file's read position (to notice it being truncated or replaced)
        self._inode: tuple[int, int] | None = None
        self._partial = b""
        self._skipping = False
        self._process: subprocess.Popen[bytes] | None = None
        self._pipe_thread: threading.Thread | None = None
        self._pending: list[KernelXid] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def kind(self) -> str:
        """``kmsg``, ``journal``, ``file``, ``feed`` or ``off``."""
        return self._kind

    # -- reading ---------------------------------------------------------------------------------

    def pump(self) -> None:
        """Read what the source has now (bounded), without waiting."""
        if self._kind == "off":
            return
        if self._kind == "journal":
            self._ensure_journal()
            return
        if self._feed is not None:
            self._pump_feed(self._feed)
            return
        path = KMSG if self._kind == "kmsg" else self.source
        if self._fd is None and not self._open(path):
            return
        if self._pump_kmsg() if self._kind == "kmsg" else self._pump_file():
            self._readable_again(path)  # once a read has worked, not when the open did

    def _open(self, path: str) -> bool:
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            st = os.fstat(self._fd)
        except OSError as exc:
            self._close_fd()
            self._unreadable(f"{path}: {exc.strerror or exc}")
            return False
        self._inode, self._offset, self._partial, self._skipping = (st.st_dev, st.st_ino), 0, b"", False
        return True

    def _pump_kmsg(self) -> bool:
        """Read records until none is waiting (or the bound); False if the device cannot be read."""
        read = 0
        while read < MAX_PUMP_BYTES:
            record = self._read(KMSG, 8192)  # one record per read
            if not record:
                return record is not None
            read += len(record)
            self._found(parse_kmsg_record(record))
        return True

    def _pump_file(self) -> bool:
        """Read what was appended (or the new file, after a rotation); False if it cannot be read."""
        try:
            st = os.stat(self.source)
        except OSError:
            st = None
        shrunk = st is not None and stat.S_ISREG(st.st_mode) and st.st_size < self._offset
        if st is None or (st.st_dev, st.st_ino) != self._inode or shrunk:
            self._close_fd()  # rotated, replaced or truncated: read the new file from its start
            if not self._open(self.source):
                return False
        read = 0
        while read < MAX_PUMP_BYTES:
            chunk = self._read(self.source, 65536)
            if not chunk:
                return chunk is not None
            read += len(chunk)
            self._offset += len(chunk)
            self._lines(chunk)
        return True

    def _read(self, path: str, size: int) -> bytes | None:
        """One non-blocking read: its bytes, b"" when nothing is waiting, None when the source failed
        (then closed, and said once)."""
        assert self._fd is not None
        while True:
            try:
                return os.read(self._fd, size)
            except BlockingIOError:
                return b""
            except OSError as exc:
                if exc.errno == errno.EPIPE and path == KMSG:  # records overwritten before we read them
                    continue
                self._close_fd()
                self._unreadable(f"{path}: {exc.strerror or exc}")
                return None

    def _pump_feed(self, feed: Callable[[int, int], bytes]) -> None:
        read = 0
        while read < MAX_PUMP_BYTES and (chunk := feed(self._offset, 65536)):
            read += len(chunk)
            self._offset += len(chunk)
            self._lines(chunk)
        self._readable_again(self.source)

    def _lines(self, chunk: bytes) -> None:
        if self._skipping:  # the rest of a line too long to keep
            end = chunk.find(b"\n")
            if end < 0:
                return
            chunk, self._skipping = chunk[end + 1 :], False
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > MAX_LINE_BYTES:
            self._partial, self._skipping = b"", True  # an endless line is skipped whole, not kept
        for line in lines:
            if len(line) <= MAX_LINE_BYTES:
                self._found(parse_line(line))

    def _ensure_journal(self) -> None:
        """Start journalctl once, reading its output on a thread of its own (a pipe read blocks)."""
        if self._process is not None:
            if self._process.poll() is not None and self.readable is not False:
                self._unreadable(f"journalctl exited with status {self._process.returncode}")
            return
        try:
            self._process = subprocess.Popen(  # a fixed command, no shell
                JOURNAL_COMMAND, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
        except OSError as exc:
            self._unreadable(f"journalctl: {exc.strerror or exc}")
            return
        self._readable_again("the journal (journalctl --dmesg)")
        stdout = self._process.stdout
        assert stdout is not None
        self._pipe_thread = threading.Thread(target=self._read_pipe, args=(stdout,), name="gpuwatch-xidlog-journal")
        self._pipe_thread.daemon = True
        self._pipe_thread.start()

    def _read_pipe(self, stdout: IO[bytes]) -> None:
        skipping = False  # inside a line too long to keep
        while line := stdout.readline(MAX_LINE_BYTES + 1):
            whole = line.endswith(b"\n")
            if not skipping and whole:
                self._found(parse_line(line))
            skipping = not whole

    def _found(self, parsed: tuple[tuple[int, int, int], int, float | None] | None) -> None:
        if parsed is None:
            return
        pci, xid, stamp = parsed
        # daemon time of the line: now, less how long ago (by the log's own clock) it was logged
        age = 0.0 if stamp is None else max(0.0, self._since_boot() - stamp)
        with self._lock:
            if len(self._pending) < MAX_PENDING:  # a flood nobody takes in is cut, not kept
                self._pending.append(KernelXid(pci, xid, self._clock() - age))

    def _unreadable(self, why: str) -> None:
        if self.readable is not False:
            log.warning("kernel log not readable (%s): Xids only NVML events deliver are counted", why)
        self.readable = False

    def _readable_again(self, what: str) -> None:
        if self.readable is not True:
            log.info("reading Xids from %s", what)
        self.readable = True

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- handing over ----------------------------------------------------------------------------

    def take(self) -> list[KernelXid]:
        """The Xid lines found since the last call, in log order."""
        with self._lock:
            found, self._pending = self._pending, []
        return found

    def start(self, interval_s: float = 1.0) -> None:
        """Pump every ``interval_s`` on a thread of its own until :meth:`close`."""
        self._thread = threading.Thread(target=self._run, args=(interval_s,), name="gpuwatch-xidlog", daemon=True)
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.pump()
            except Exception:  # a bug here must not end the thread quietly
                log.exception("reading the kernel log failed")
            self._stop.wait(interval_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._process is not None:
            self._process.kill()
            self._process.wait(2.0)
        self._close_fd()


def _resolve(source: str) -> str:
    """What ``source`` names: ``kmsg``, ``journal``, ``file`` or ``off`` (``auto`` decides here)."""
    if source in ("off", "kmsg", "journal"):
        return source
    if source == "auto":
        if os.access(KMSG, os.R_OK):
            try:
                os.close(os.open(KMSG, os.O_RDONLY | os.O_NONBLOCK))
                return "kmsg"
            except OSError:
                pass
        return "journal" if shutil.which(JOURNAL_COMMAND[0]) else "kmsg"
    if os.path.realpath(source) == KMSG:
        return "kmsg"  # read as records: as a file it has no size, and was read whole on every pump
    return "file"
