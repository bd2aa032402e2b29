"""Where the web server listens and how much it takes on: settings shared by the config loader and
the server, with no HTTP machinery (so reading a config file does not load the server)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 9961
DEFAULT_LISTEN_ADDRESS = f":{DEFAULT_PORT}"
DEFAULT_MAX_REQUESTS = 40  # node_exporter's --web.max-requests default
DEFAULT_READ_TIMEOUT_S = 10.0
CONNECTIONS_PER_REQUEST = 10


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on request handling (``--web.max-requests``, ``--web.read-timeout``)."""

    max_requests: int = DEFAULT_MAX_REQUESTS
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    @property
    def max_connections(self) -> int:
        return CONNECTIONS_PER_REQUEST * self.max_requests

    @property
    def max_unfinished_per_client(self) -> int:
        """Connections one client may hold before its request head is in: half of them."""
        return max(1, self.max_connections // 2)


class ListenAddressError(ValueError):
    """A --web.listen-address that is not host:port."""


def parse_listen_address(address: str) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``:port`` (all interfaces), as Prometheus exporters do."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenAddressError(f"{address!r} is not host:port (e.g. ':{DEFAULT_PORT}' or '127.0.0.1:{DEFAULT_PORT}')")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)
