"""A real Prometheus (Debian's package) on loopback for tests: temporary data, short intervals."""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from serving import free_port


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as response:
            doc = json.load(response)
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now; the vector's samples (a scalar comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        return list(self.api("alerts")["alerts"])

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]


@contextmanager
def prometheus(
    binary: str,
    workdir: Path,
    scrape_configs: Sequence[Mapping[str, Any]],
    rule_files: Sequence[Path] = (),
    interval: str = "1s",
) -> Iterator[Prometheus]:
    """Run Prometheus scraping ``scrape_configs`` and evaluating ``rule_files`` every ``interval``."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": list(scrape_configs),
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(server: Prometheus, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(server.url + "/-/ready", timeout=2).close()
            return
        except OSError:
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus not ready within {timeout_s} s:\n{server.log.read_text()}") from None
            time.sleep(0.1)


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(text: str) -> float:
    parts = _DURATION.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a Prometheus duration: {text!r}"
    return sum(int(n) * _SECONDS[u] for n, u in parts)


def with_shorter_for(rule_file: Path, out: Path, speed: float) -> Path:
    """``rule_file`` with every alert's ``for:`` divided by ``speed`` (at least 1 s), written to ``out``.

    Simulated hosts run ``speed`` times faster than the wall clock, but ``for:`` is wall time in
    Prometheus: divided by the simulation speed, it spans the same stretch of simulated time. The
    expressions, windows included, are left as they are.
    """
    doc = yaml.safe_load(rule_file.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = f"{max(1, math.ceil(duration_seconds(rule['for']) / speed))}s"
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out
