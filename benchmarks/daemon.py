"""A ``gpuwatch serve`` child process on a simulated host, and the scrapes made against it."""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``python -m gpuwatch serve --simulate SCENARIO`` on a free local port, until the block ends."""

    def __init__(self, scenario: Path, poll_interval: str, process_interval: str = "10s") -> None:
        self.port = free_port()
        self._args = [
            sys.executable,
            "-m",
            "gpuwatch",
            "serve",
            "--simulate",
            str(scenario),
            "--poll-interval",
            poll_interval,
            "--process-interval",
            process_interval,
            "--web.listen-address",
            f"127.0.0.1:{self.port}",
            "--log.level",
            "error",
        ]
        self._proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def __enter__(self) -> Daemon:
        self._proc = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.started_at = time.monotonic()
        deadline = self.started_at + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"gpuwatch serve exited: {self._proc.stderr.read().decode() if self._proc.stderr else ''}"
                )
            try:
                if get(self.port, "/-/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("gpuwatch serve did not become ready in 30 s")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    @property
    def process(self) -> psutil.Process:
        assert self._proc is not None
        return psutil.Process(self._proc.pid)


def get(port: int, path: str, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """One GET on a fresh connection, as a Prometheus scrape makes it (gpuwatch speaks HTTP/1.0)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()
