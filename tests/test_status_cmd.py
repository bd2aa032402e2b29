"""`gpuwatch status` against hung, stale, secured and hostile daemons (issue 16).

Bounded in time by --timeout in every mode; the data's age shown and a stale daemon UNKNOWN; TLS,
client certificates and basic auth; nothing a server sends reaches the terminal raw, and no
password in a URL is echoed.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import bcrypt
import pytest
from certs import Pki, make_pki
from click.testing import CliRunner
from serving import serve
from waiting import wait_until

from gpuwatch import status as status_doc
from gpuwatch.cli import main
from gpuwatch.model import Snapshot
from gpuwatch.nvml import use_library
from gpuwatch.records import Verdict

PASSWORD = "s3cret-Pa55"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(autouse=True)
def _real_library_and_logging_afterwards() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    use_library(None)
    root.handlers[:], root.level = handlers, level  # `status` sets up logging for itself (critical only)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def run(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env=env)


def status_process(*args: str, timeout_s: float = 30, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """`gpuwatch status ARGS` as a process of its own (a timed-out status exits without waiting
    for its reading thread, so it cannot run inside the test process)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "gpuwatch", "status", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
    )
    return result, time.monotonic() - started


# -- --timeout bounds the whole command ---------------------------------------------------------------


@pytest.mark.parametrize(("output", "timeout_s"), [("table", 5), ("nagios", 2)])
def test_status_of_a_simulated_host_whose_nvml_call_hangs_exits_unknown_at_the_timeout(output, timeout_s):
    extra = ["--nagios"] if output == "nagios" else []
    result, took_s = status_process("--simulate", "nvml-hang", "--sim-at", "40s", "--timeout", f"{timeout_s}s", *extra)
    assert result.returncode == 3
    assert took_s < timeout_s + 15, took_s  # well short of the 30 s hang: the timeout cut it, not the hang
    print(f"exit 3 after {took_s:.1f} s")
    line = f"timed out after {timeout_s} s sampling the simulated host 'nvml-hang' in this process"
    if output == "nagios":  # Nagios reads stdout
        assert result.stdout.startswith("GPUWATCH UNKNOWN - " + line) and result.stdout.count("\n") == 1
    else:
        assert result.stderr.startswith("gpuwatch: " + line) and "has not returned" in result.stderr
    assert "Traceback" not in result.stderr


@contextmanager
def _listener(answer: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on loopback that hands each connection to ``answer`` on a thread; its URL."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _trickle(conn: socket.socket) -> None:
    """A head that never ends: one header byte every 0.2 s (each within any socket timeout)."""
    try:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(300):
            conn.sendall(b"X")
            time.sleep(0.2)
    except OSError:
        pass
    finally:
        conn.close()


def test_a_daemon_that_trickles_its_answer_is_cut_off_at_the_timeout():
    with _listener(_trickle) as url:
        result, took_s = status_process("--url", url, "--timeout", "2s", "--nagios")
    assert result.returncode == 3 and took_s < 20, (took_s, result)  # the trickle lasts 60 s
    assert result.stdout == f"GPUWATCH UNKNOWN - timed out after 2 s waiting for {url}/status\n"


# -- the data's age, and stale data ----------------------------------------------------------------


def test_the_age_is_in_the_document_and_past_three_poll_intervals_the_verdict_is_unknown():
    snapshot = Snapshot(timestamp=1.0, nvml_up=True, verdict=Verdict("ok", ("4 GPU(s) ok",), {}))
    fresh = status_doc.to_document(snapshot, age_s=0.4, poll_interval_s=1.0, stale_after_s=3.0)
    assert (fresh["verdict"], fresh["reasons"], fresh["age_seconds"]) == ("ok", ["4 GPU(s) ok"], 0.4)
    assert (fresh["poll_interval_seconds"], fresh["stale_after_seconds"]) == (1.0, 3.0)
    assert "data 0.4 s old" in status_doc.render_table(fresh).splitlines()[1]
    assert "'data_age'=0.4s;;3;0" in status_doc.render_nagios(fresh)
    stale = status_doc.to_document(snapshot, age_s=3.5, poll_interval_s=1.0, stale_after_s=3.0)
    assert stale["verdict"] == "unknown" and status_doc.exit_code(stale) == 3
    assert stale["reasons"] == ["no poll for 3.5 s (stale after 3 s): the poll loop is stuck or starved", "4 GPU(s) ok"]
    unknown_age = status_doc.to_document(snapshot)  # before the first poll, or an older daemon
    assert unknown_age["age_seconds"] is None and unknown_age["verdict"] == "ok"
    assert "old" not in status_doc.render_table(unknown_age) and "data_age" not in status_doc.render_nagios(unknown_age)


def _wedge(tmp_path: Path) -> Path:
    """NVML opens, then at 20 s the driver reloads and the loop's own nvmlInit hangs: no poll ends.
    (20 s: room for the daemon and a first `status` to start on a loaded machine before it.)"""
    path = tmp_path / "wedge.toml"
    path.write_text(
        'name = "wedge"\ndescription = "the driver reloads at 20 s and nvmlInit hangs"\n'
        '[[fault]]\nkind = "driver_reload"\nat_s = 20\nduration_s = 0.5\n'
        '[[fault]]\nkind = "init_hang"\nat_s = 20\nhang_s = 90\nduration_s = 600\n'
        '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
    )
    return path


@pytest.mark.slow
def test_a_daemon_whose_loop_is_stuck_shows_its_data_age_and_is_unknown(tmp_path):
    with serve(tmp_path, "--simulate", str(_wedge(tmp_path)), "--poll-interval", "200ms") as d:
        fresh, _ = status_process("--url", d.url, "--json")
        doc = json.loads(fresh.stdout)
        assert doc["verdict"] == "ok" and fresh.returncode == 0, fresh.stderr
        assert 0 <= doc["age_seconds"] < doc["stale_after_seconds"] == 2.0  # 3 x 200 ms is under the 2 s floor
        assert doc["poll_interval_seconds"] == 0.2

        def stale() -> bool:  # (first NVML is down for a poll: UNKNOWN for that reason)
            return status_process("--url", d.url, "--nagios")[0].stdout.startswith("GPUWATCH UNKNOWN - no poll for ")

        assert wait_until(stale, timeout_s=60, every_s=0.5)
        table, _ = status_process("--url", d.url)
        nagios, _ = status_process("--url", d.url, "--nagios")
    assert table.returncode == 3 and table.stdout.startswith("UNKNOWN: no poll for ")
    assert "stale after 2 s" in table.stdout.splitlines()[0] and " s old" in table.stdout.splitlines()[1]
    assert nagios.stdout.startswith("GPUWATCH UNKNOWN - no poll for ") and "'data_age'=" in nagios.stdout
    age = float(nagios.stdout.split("'data_age'=")[1].split("s;")[0])
    assert age > 2.0 and ";;2;0" in nagios.stdout


# -- a secured daemon ------------------------------------------------------------------------------


def _secured(tmp_path: Path, pki: Pki) -> Path:
    web = tmp_path / "web.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
        f"basic_auth_users:\n  prometheus: '{HASH}'\n"
    )
    return web


@pytest.mark.slow
def test_status_reads_a_daemon_behind_tls_client_certificates_and_basic_auth(tmp_path, pki):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    ready = ssl.create_default_context(cafile=str(pki.ca))
    ready.load_cert_chain(pki.client_cert, pki.client_key)
    tls = ["--ca-file", str(pki.ca), "--cert-file", str(pki.client_cert), "--key-file", str(pki.client_key)]
    with serve(tmp_path, "--simulate", "--web.config.file", str(_secured(tmp_path, pki)), ready_context=ready) as d:
        by_file, _ = status_process("--url", d.url, *tls, "--user", "prometheus", "--password-file", str(password_file))
        by_env, _ = status_process(
            "--url", d.url, *tls, "--user", "prometheus", "--password-env", "PW", "--json", env={"PW": PASSWORD}
        )
        in_url, _ = status_process("--url", d.url.replace("://", f"://prometheus:{PASSWORD}@"), *tls, "--nagios")
        wrong, _ = status_process("--url", d.url.replace("://", "://prometheus:hunter2@"), *tls, "--timeout", "5s")
        no_cert, _ = status_process(
            "--url",
            d.url,
            "--ca-file",
            str(pki.ca),
            "--user",
            "prometheus",
            "--password-env",
            "PW",
            env={"PW": PASSWORD},
        )
    assert by_file.returncode == 0 and by_file.stdout.startswith("OK: 4 GPU(s) ok"), by_file.stderr
    assert by_file.stderr == ""
    assert json.loads(by_env.stdout)["verdict"] == "ok" and by_env.returncode == 0
    assert in_url.returncode == 0 and in_url.stdout.startswith("GPUWATCH OK")
    assert "answered 401 Unauthorized; sampling NVML directly (to log in: --user" in wrong.stderr
    assert f"gpuwatch: {d.url}/status answered 401" in wrong.stderr  # the URL as given, less its password
    assert f"gpuwatch: no daemon at {d.url}/status (" in no_cert.stderr  # the handshake wants a client certificate
    for result in (by_file, by_env, in_url, wrong, no_cert):
        assert PASSWORD not in result.stdout + result.stderr and "hunter2" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "prometheus"], "--password-file or --password-env"),
        (["--password-file", "/dev/null"], "go with --user"),
        (["--user", "a:b", "--password-env", "HOME"], "cannot hold ':'"),
        (["--user", "p", "--password-env", "GW_NO_SUCH_VARIABLE"], "GW_NO_SUCH_VARIABLE is not set"),
        (["--user", "p", "--password-file", "/nonexistent/pw"], "--password-file /nonexistent/pw"),
        (["--ca-file", "/etc/hostname"], "need an https:// URL"),
        (["--url", "https://127.0.0.1:1", "--ca-file", "/nonexistent/ca.pem"], "--ca-file /nonexistent/ca.pem"),
        (["--url", "ftp://u:topsecret@host/"], "ftp://u:xxxxx@host/: not an http:// or https:// URL"),
        (["--simulate", "--user", "p", "--password-env", "HOME"], "for reading a daemon"),
    ],
)
def test_security_options_that_cannot_work_are_usage_errors_naming_no_secret(args, message):
    result = run("status", *args)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert "topsecret" not in result.stderr


# -- hostile answers -------------------------------------------------------------------------------

_EVIL = "\x1b]0;owned\x07\x1b[2J\u202e"


def _fake_daemon(status: int, body: bytes, reason: str | None = None, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    class Handler(http.server.BaseHTTPRequestHandler):
        seen: ClassVar[list[str]] = []

        def do_GET(self) -> None:
            Handler.seen.append(self.path)
            self.send_response_only(status, reason)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Handler.seen


def _evil_document() -> dict:
    doc = status_doc.to_document(
        Snapshot(timestamp=1.0, nvml_up=True, verdict=Verdict("warning", (f"GPU 0: hot{_EVIL}",), {}))
    )
    doc["driver_version"] = f"550{_EVIL}"
    doc["sources"] = [
        {
            "name": f"vllm{_EVIL}",
            "url": "http://admin:hunter2@10.0.0.5:8000/metrics",
            "up": False,
            "error": f"http://admin:hunter2@10.0.0.5:8000/metrics answered 500 {_EVIL}",
            "gpus": [0],
        }
    ]
    return doc


@pytest.mark.parametrize("output", ["table", "json", "nagios"])
def test_text_from_a_daemon_reaches_the_terminal_without_control_characters_or_passwords(output):
    server, _ = _fake_daemon(200, json.dumps(_evil_document()).encode())
    try:
        result = run(
            "status",
            "--url",
            f"http://127.0.0.1:{server.server_port}",
            *{"table": [], "json": ["--json"], "nagios": ["--nagios"]}[output],
        )
    finally:
        server.shutdown()
    out = result.stdout + result.stderr
    assert result.exit_code == 1, out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "hunter2" not in out
    if output != "json":
        assert "GPU 0: hot\\x1b]0;owned\\x07" in out  # shown, harmlessly
    if output == "table":
        assert "http://admin:xxxxx@10.0.0.5:8000/metrics answered 500" in out


def test_an_error_reason_from_a_daemon_is_cleaned_and_its_redirect_not_followed():
    target, seen_there = _fake_daemon(200, b"{}")
    location = f"http://127.0.0.1:{target.server_port}/elsewhere"
    # (a reason phrase is Latin-1: C1 controls such as CSI, 0x9b, are there too)
    server, _ = _fake_daemon(302, b"", reason="Found\x1b]0;owned\x07\x9b2J", headers={"Location": location})
    try:
        result = run(
            "status",
            "--url",
            f"http://127.0.0.1:{server.server_port}",
            "--user",
            "p",
            "--password-env",
            "PW",
            env={"PW": "pw"},
        )
    finally:
        server.shutdown()
        target.shutdown()
    assert "answered 302 Found\\x1b]0;owned\\x07\\x9b2J; sampling NVML directly" in result.stderr
    assert "\x1b" not in result.stdout + result.stderr and "\x9b" not in result.stdout + result.stderr
    assert seen_there == []  # the credentials went nowhere else


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>hello</html>", "answered no JSON"),
        (b"[1, 2, 3]", "not a gpuwatch /status document"),
        (b'{"gpus": "none"}', "not a gpuwatch /status document"),
        (b'{"verdict": "ok", "gpus": [{"index": 0}]}', "not a /status document gpuwatch can read"),
        (b"[" * 100_000, "answered no JSON"),
        # parses (under Python's nesting limit), but nested deeper than cleaning it may recurse
        (b'{"gpus": [], "x": ' + b"[" * 600 + b"]" * 600 + b"}", "not a gpuwatch /status document"),
        (b" " * (9 * 2**20), "more than 8 MiB"),
    ],
)
def test_an_answer_that_is_not_a_status_document_is_unknown(body, message):
    server, _ = _fake_daemon(200, body)
    try:
        result = run("status", "--url", f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert result.exit_code == 3 and message in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1
