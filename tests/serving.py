"""Start `gpuwatch serve` as a real process for end-to-end tests: environment, TLS, notify socket."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_from(
    source: str, port: int, path: str = "/metrics", headers: Mapping[str, str] | None = None, timeout_s: float = 5.0
) -> tuple[int, bytes, dict[str, str]]:
    """GET ``path`` from the daemon on 127.0.0.1:``port`` out of the loopback address ``source``
    (127.0.0.2 is another client, as far as the daemon can tell); status, body, headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s, source_address=(source, 0))
    try:
        connection.request("GET", path, headers=dict(headers or {}))
        response = connection.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    port: int
    stderr_path: Path

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not logged within {timeout_s} s:\n{self.stderr}")
            time.sleep(0.05)


@contextmanager
def serve(
    tmp_path: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    ready_context: ssl.SSLContext | None = None,
    wait_ready: bool = True,
    port: int | None = None,
) -> Iterator[Served]:
    """Run ``gpuwatch serve --web.listen-address 127.0.0.1:<port> ARGS`` (a free port unless given);
    stop it with SIGTERM."""
    port = port or free_port()
    scheme = "https" if ready_context is not None else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    stderr = tmp_path / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "gpuwatch", "serve", "--web.listen-address", f"127.0.0.1:{port}", *args]
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GPUWATCH_", "NOTIFY_", "WATCHDOG_"))}
    environ.pop("JOURNAL_STREAM", None)
    environ.update(env or {})
    with stderr.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=environ)
    served = Served(proc, url, port, stderr)
    try:
        if wait_ready:
            _wait_listening(served, ready_context)
        yield served
    finally:
        terminate(proc, timeout_s=5)


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM, and SIGKILL if the process has not exited within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_listening(served: Served, context: ssl.SSLContext | None) -> None:
    started = time.monotonic()
    while True:
        try:
            # any HTTP answer (even 401) means it is up
            urllib.request.urlopen(served.url + "/-/healthy", timeout=2, context=context).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if served.proc.poll() is not None or time.monotonic() - started > 60:
                raise AssertionError(f"daemon not listening within 60 s:\n{served.stderr}") from None
            time.sleep(0.05)
