"""Whether gpuwatch sees the host's PIDs, which are the ones NVML reports.

NVML lists GPU processes by their PID in the host's (the initial) PID namespace. A gpuwatch in a
container without ``hostPID: true`` lives in a PID namespace of its own: a PID NVML gives names
nothing there, or, worse, an unrelated process of the container that happens to hold the same
number. Reading its name, user or cgroup would attribute the GPU to the wrong process, so that is
detected and said (a log line, ``gpuwatch_host_pid_namespace 0``) instead.

The kernel names the PID namespace of a process by the inode of ``/proc/self/ns/pid``, and the
initial namespace's inode is fixed: ``PROC_PID_INIT_INO``, 0xEFFFFFFC (``include/linux/proc_ns.h``,
Linux 3.8 and later). That is the answer. The ``NSpid:`` line of ``/proc/self/status`` is not: it
lists the PIDs from the namespace of whoever mounted that ``/proc`` downwards, so a container that
mounts its own ``/proc`` (every one without ``hostPID``) sees one number, as the host does; only
more than one number says "nested" for certain. Where neither says (the link unreadable, one
number), NVML's PIDs are checked against ``/proc``: a GPU process NVML lists that ``/proc`` does
not have says the PIDs are not this namespace's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

INIT_PID_NAMESPACE_INODE = 0xEFFFFFFC  # PROC_PID_INIT_INO


def in_host_namespace(ns_link: str | None, status_text: str = "") -> bool | None:
    """True in the initial PID namespace, False in another, None when neither the namespace link
    (``/proc/self/ns/pid``, e.g. ``pid:[4026531836]``) nor ``/proc/self/status`` says."""
    match = re.fullmatch(r"pid:\[(\d+)\]", ns_link or "")
    if match:
        return int(match.group(1)) == INIT_PID_NAMESPACE_INODE
    for line in status_text.splitlines():
        if line.startswith("NSpid:") and len(line.split()[1:]) > 1:
            return False
    return None


def pids_missing(pids: Iterable[int], visible: set[int]) -> list[int]:
    """The PIDs NVML listed that this PID namespace does not have."""
    return sorted(pid for pid in set(pids) if pid not in visible)


def own_namespace(proc: str = "/proc") -> str | None:
    """The link ``/proc/self/ns/pid`` points at (``pid:[INODE]``), or None when it cannot be read."""
    try:
        return os.readlink(f"{proc}/self/ns/pid")
    except OSError:
        return None


def own_status(proc: str = "/proc") -> str:
    try:
        with open(f"{proc}/self/status", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
