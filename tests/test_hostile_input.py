"""Hostile input through the real daemon (issue 16): what a local user or a bad file can hand
gpuwatch, and that scrapes, the process and its config survive it. Loopback only; every wait is on
a condition with a generous bound, never on how long something took."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import serve, terminate
from waiting import wait_until

EVIL = b"ev\xff\xfeil"  # not UTF-8: what any user can name an executable, or set with prctl(PR_SET_NAME)
EVIL_LABEL = r'process="ev\\xff\\xfeil"'  # the name escaped (\xNN), then the exposition's own \\ escape
OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"  # as Prometheus asks

SCENARIO = """\
name = "hostile-process-name"
description = "one GPU, used by a process whose name is not UTF-8"
seed = 1
driver_version = "550.127.05"
cuda_driver_version = 12040
[[gpu]]
profile = "rtx-a6000"
load = 0.5
[[gpu.process]]
pid = {pid}
name = "python3"
used_memory_mib = 1000
"""


@pytest.fixture
def evil_process(tmp_path: Path) -> Iterator[int]:
    """A live process whose comm is ``ev\\xff\\xfeil``: started through a link of that name."""
    link = tmp_path / os.fsdecode(EVIL)
    link.symlink_to(os.path.realpath(sys.executable))
    child = subprocess.Popen(
        ["anything --api-key=secret", "-I", "-S", "-c", "import sys; sys.stdin.read()"],
        executable=link,
        stdin=subprocess.PIPE,
    )
    try:
        comm = Path(f"/proc/{child.pid}/comm")
        assert wait_until(lambda: comm.read_bytes() == EVIL + b"\n")  # the kernel names it late in exec
        yield child.pid
    finally:
        child.communicate(b"", timeout=10)


def _get(url: str, accept: str = "") -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode("utf-8")  # strict: the body must be UTF-8
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8")


def test_a_gpu_process_named_with_bytes_that_are_not_utf8_leaves_every_scrape_whole(tmp_path, evil_process):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO.format(pid=evil_process))
    args = ("--simulate", str(scenario), "--poll-interval", "200ms", "--process-interval", "200ms")
    with serve(tmp_path, *args) as d:
        assert wait_until(lambda: EVIL_LABEL in _get(d.url + "/metrics")[1], timeout_s=30), d.stderr
        answers = [_get(d.url + "/metrics", accept=OPENMETRICS if n % 2 else "") for n in range(10)]
        assert [code for code, _ in answers] == [200] * 10
        for _, body in answers:
            assert EVIL_LABEL in body and "secret" not in body  # the executable's name, not its arguments
            assert 'gpuwatch_scrape_collector_success{collector="processes"} 1.0' in body
        code, status = _get(d.url + "/status")
        names = [p["name"] for g in json.loads(status)["gpus"] for p in g["processes"]]
        assert code == 200 and r"ev\xff\xfeil" in names
        assert _get(d.url + "/-/ready")[0] == 200
    assert "Traceback" not in d.stderr and " ERROR " not in d.stderr


# Files that cannot be a config, as written into place; "fifo" and "device" are made below.
BAD_CONFIGS = {
    "latin-1": (b'poll_interval = "1s"\n# caf\xe9\n', "not UTF-8: byte 0xe9 at line 2"),
    "bom": (b'\xef\xbb\xbfpoll_interval = "1s"\n', "byte order mark"),
    "deep": (b"x = " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested more than 32 deep"),
    "device": (None, "not a regular file (a character device)"),
    "fifo": (None, "not a regular file (a FIFO)"),
}


def _put(path: Path, kind: str) -> None:
    """Replace ``path`` with a config file of ``kind`` (see BAD_CONFIGS)."""
    path.unlink(missing_ok=True)
    content = BAD_CONFIGS[kind][0]
    if kind == "fifo":
        os.mkfifo(path)  # no writer ever comes: a blocking open would wait forever
    elif kind == "device":
        path.symlink_to("/dev/zero")  # endless, if it were read
    else:
        assert content is not None
        path.write_bytes(content)


def _gpuwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("GPUWATCH_", "NOTIFY_"))}
    return subprocess.run(
        [sys.executable, "-m", "gpuwatch", *args],
        capture_output=True,
        text=True,
        timeout=60,  # a FIFO that blocked would end here, failing the test
        env={**environ, **(env or {})},
    )


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_config_that_cannot_be_used_stops_the_start_with_one_line_and_78(tmp_path, command, kind):
    path = tmp_path / "gpuwatch.toml"
    _put(path, kind)
    extra = ("--simulate", "healthy", "--web.listen-address", "127.0.0.1:0") if command == "serve" else ()
    result = _gpuwatch(command, "--config", str(path), *extra)
    assert result.returncode == 78, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"gpuwatch: config file {path}: ") and BAD_CONFIGS[kind][1] in result.stderr


def test_sighup_with_a_config_that_cannot_be_used_keeps_serving_with_one_line_each(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text('poll_interval = "200ms"\n[simulate]\nscenario = "healthy"\n')
    with serve(tmp_path, "--config", str(path)) as d:
        assert wait_until(lambda: _get(d.url + "/-/ready")[0] == 200, timeout_s=30), d.stderr
        for n, kind in enumerate(BAD_CONFIGS, start=1):
            _put(path, kind)
            d.proc.send_signal(signal.SIGHUP)
            assert wait_until(lambda n=n: d.stderr.count("reload failed") == n, timeout_s=30), d.stderr
            failed = [line for line in d.stderr.splitlines() if "reload" in line]
            assert len(failed) == n and BAD_CONFIGS[kind][1] in failed[-1]  # one line, saying why
            assert d.proc.poll() is None and _get(d.url + "/metrics")[0] == 200
        # Five reloads, each logged: the log's rate limit lets five lines of one kind through a minute.
        # The last was a FIFO, refused without waiting on it: SIGTERM still stops at once.
        stopping = time.monotonic()
        terminate(d.proc, timeout_s=30)
        stopped_s = time.monotonic() - stopping
    assert d.proc.returncode == 0 and "Traceback" not in d.stderr
    assert stopped_s < 10, stopped_s  # 2 s is the target (README); the bound is loose for a loaded machine


def test_an_unknown_gpuwatch_variable_is_a_warning_and_a_misspelt_one_is_refused(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text('[simulate]\nscenario = "healthy"\n')
    other = {"GPUWATCH_TEST_CACHE": "/tmp/cache"}  # another tool's variable under our prefix
    checked = _gpuwatch("check-config", "--config", str(path), env=other)
    assert checked.returncode == 0
    assert (
        checked.stderr
        == "gpuwatch: warning: environment variable GPUWATCH_TEST_CACHE is not a gpuwatch setting; ignored\n"
    )
    with serve(tmp_path, "--config", str(path), env=other) as d:
        d.wait_for_log("environment variable GPUWATCH_TEST_CACHE is not a gpuwatch setting; ignored", timeout_s=30)
        assert _get(d.url + "/metrics")[0] == 200
    typo = {"GPUWATCH_POLL_INTEVRAL": "500ms"}
    for command, extra in (("check-config", ()), ("serve", ("--web.listen-address", "127.0.0.1:0"))):
        refused = _gpuwatch(command, "--config", str(path), *extra, env=typo)
        assert refused.returncode == 78
        assert refused.stderr == (
            "gpuwatch: environment variable GPUWATCH_POLL_INTEVRAL: unknown; did you mean GPUWATCH_POLL_INTERVAL?\n"
        )
    status = _gpuwatch("status", "--simulate", "healthy", "--sim-at", "1m", env={**typo, **other})
    assert status.returncode == 0 and "GPUWATCH_" not in status.stderr  # status reads no settings


def test_ready_says_so_while_a_rendering_loses_a_collector_or_fails_whole(caplog):
    """What the daemon hands the web server as ``/-/ready`` (Runtime.ready)."""
    import logging

    from prometheus_client.core import GaugeMetricFamily

    from gpuwatch.exporter.registry import COLLECTORS
    from gpuwatch.runtime import RuntimeOptions, assemble
    from gpuwatch.sim.clock import ManualClock

    def broken(_):
        raise ValueError("a label value that is not UTF-8")

    class Unrenderable:
        def collect(self):
            yield GaugeMetricFamily("x", "x", value=float("nan"), labels=None)
            raise RuntimeError("not renderable")

    with caplog.at_level(logging.INFO), assemble(RuntimeOptions(simulate="healthy"), clock=ManualClock()) as rt:
        rt.start(threads=False)
        rt.step()
        rt.exposition.render("")
        assert rt.ready()
        rt.collector._collectors = {**COLLECTORS, "processes": broken}
        rt.step()  # a new snapshot: a new rendering
        body, _ = rt.exposition.render("")  # the scrape is whole, less that collector
        assert b'gpuwatch_scrape_collector_success{collector="processes"} 0.0' in body and not rt.ready()
        rt.collector._collectors = COLLECTORS
        rt.step()
        rt.exposition.render("")
        assert rt.ready()
        unrenderable = Unrenderable()
        rt.registry.register(unrenderable)
        rt.step()
        with pytest.raises(RuntimeError):
            rt.exposition.render("")
        assert not rt.ready() and "cannot render /metrics" in caplog.text
        rt.registry.unregister(unrenderable)
        rt.exposition.render("")
        assert rt.ready() and "/metrics renders again" in caplog.text
    assert [r.levelname for r in caplog.records if "processes" in r.getMessage() or "render" in r.getMessage()] == [
        "ERROR",
        "INFO",
        "ERROR",
        "INFO",
    ]
