"""Which GPUs serve a token source: the process listening on its port, that process's tree, and
the processes NVML lists on each GPU.

Limits, by design of Linux rather than of gpuwatch: the owner of a socket that belongs to another
user is visible only with privileges (CAP_SYS_PTRACE or root), and a server in a container is
reached through a proxy process outside its tree. Give ``gpus = [...]`` in those cases.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import psutil


class AttributionError(Exception):
    """The GPUs of a source cannot be found automatically; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """The GPUs a source runs on, and the process that told."""

    gpus: tuple[int, ...]
    pid: int  # the process listening on the source's port


def port_of(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def listening_pid(port: int) -> int:
    """The process listening on TCP ``port``; raises :class:`AttributionError`."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        raise AttributionError("not allowed to list sockets; set gpus = [...] for this source") from None
    owners = {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}
    if not owners:
        raise AttributionError(f"no process listens on port {port}")
    if None in owners:
        raise AttributionError(
            f"the process listening on port {port} belongs to another user and gpuwatch may not see it; "
            "set gpus = [...] for this source"
        )
    return int(min(pid for pid in owners if pid is not None))


def process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants (model workers are usually children of the API server)."""
    try:
        root = psutil.Process(pid)
        return {pid} | {child.pid for child in root.children(recursive=True)}
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return {pid}


def gpus_running(pids: Iterable[int], gpu_pids: Mapping[int, Iterable[int]]) -> tuple[int, ...]:
    """Indices of the GPUs where NVML lists any of ``pids``."""
    wanted = set(pids)
    return tuple(sorted(index for index, running in gpu_pids.items() if wanted & set(running)))


def attribute(url: str, gpu_pids: Mapping[int, Iterable[int]]) -> Attribution:
    """The GPUs of the server behind ``url`` (a local address), from its listening process's tree."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not _is_local(host):
        raise AttributionError(f"{host} is not this host; set gpus = [...] for this source")
    pid = listening_pid(port_of(url))
    return Attribution(gpus=gpus_running(process_tree(pid), gpu_pids), pid=pid)


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in _own_names()
    return address.is_loopback or address.is_unspecified or str(address) in _own_addresses()


def _own_addresses() -> set[str]:
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def _own_names() -> set[str]:
    return {socket.gethostname(), socket.getfqdn()}
