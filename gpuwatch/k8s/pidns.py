"""Whether gpuwatch sees the host's PIDs, which are the ones NVML reports.

NVML lists GPU processes by their PID in the host's (the initial) PID namespace. A gpuwatch in a
container without ``hostPID: true`` lives in a PID namespace of its own: a PID NVML gives names
nothing there, or, worse, an unrelated process of the container that happens to hold the same
number. Reading its name, user or cgroup would attribute the GPU to the wrong process, so that is
detected and said (a log line, ``gpuwatch_host_pid_namespace 0``) instead.

The kernel says which namespace a process is in: the ``NSpid:`` line of ``/proc/self/status``
(Linux 4.1 and later) lists its PID in each PID namespace from the initial one down to its own, so
one number means the initial namespace, and more than one a nested one. Without that line (an
older kernel, or a ``/proc`` that is not Linux's), NVML's PIDs are checked against ``/proc``: a GPU
process NVML lists that ``/proc`` does not have says the PIDs are not this namespace's.
"""

from __future__ import annotations

from collections.abc import Iterable


def in_host_namespace(status_text: str) -> bool | None:
    """From ``/proc/self/status``: True in the initial PID namespace, False in a nested one, None
    when the kernel does not say (no ``NSpid:`` line)."""
    for line in status_text.splitlines():
        if line.startswith("NSpid:"):
            return len(line.split()[1:]) == 1
    return None


def pids_missing(pids: Iterable[int], visible: set[int]) -> list[int]:
    """The PIDs NVML listed that this PID namespace does not have."""
    return sorted(pid for pid in set(pids) if pid not in visible)


def own_status(proc: str = "/proc") -> str:
    try:
        with open(f"{proc}/self/status", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
