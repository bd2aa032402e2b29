"""--web.config.file: validation, and TLS, mTLS and basic auth against a real HTTPS client."""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import pytest
import requests
from certs import Pki, make_pki
from serving import get_from, serve
from waiting import wait_until

from gpuwatch import webconfig

# cost 4: the cheapest bcrypt, so the suite stays fast; gpuwatch accepts any cost
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- validation -----------------------------------------------------------------------------------


def test_an_empty_file_means_plain_http_and_no_auth(tmp_path):
    config = webconfig.load(write(tmp_path, ""))
    assert config.ssl_context is None and config.authorized(None)


def test_a_full_file_is_read(tmp_path, pki):
    path = write(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n  min_version: TLS13\n"
        "http_server_config:\n  http2: true\n  headers:\n    X-Frame-Options: deny\n"
        f"basic_auth_users:\n  prometheus: '{HASH}'\n",
    )
    config = webconfig.load(path)
    assert config.ssl_context is not None
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.headers == {"X-Frame-Options": "deny"}
    assert set(config.users) == {"prometheus"}


def test_paths_are_relative_to_the_file(tmp_path, pki):
    path = pki.server_cert.parent / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: {pki.server_cert.name}\n  key_file: {pki.server_key.name}\n")
    assert webconfig.load(path).ssl_context is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "tls_server_config:\n  cert_file: /nonexistent.crt\n  key_file: /nonexistent.key\n",
            ["cert_file", "/nonexistent.crt", "no such file"],
        ),
        ("tls_server_config:\n  key_file: x.key\n", ["tls_server_config.cert_file", "required"]),
        (
            "tls_server_config:\n  cert_file: SERVER\n  key_file: KEY\n  client_auth_type: Sometimes\n",
            ["client_auth_type", "'Sometimes'"],
        ),
        (
            "tls_server_config:\n  cert_file: SERVER\n  key_file: KEY\n  client_auth_type: RequireAnyClientCert\n",
            ["RequireAnyClientCert", "not supported"],
        ),
        (
            "tls_server_config:\n  cert_file: SERVER\n  key_file: KEY\n  client_auth_type: RequireAndVerifyClientCert\n",
            ["client_ca_file", "required"],
        ),
        (
            "tls_server_config:\n  cert_file: SERVER\n  key_file: KEY\n  client_ca_file: CA\n",
            ["client_auth_type", "'NoClientCert'"],
        ),
        (
            "tls_server_config:\n  cert_file: SERVER\n  key_file: KEY\n  min_version: SSL3\n",
            ["min_version", "'SSL3'", "TLS12"],
        ),
        (
            "tls_server_config:\n  cert_file: SERVER\n  key_file: KEY\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            ["cipher_suites", "not supported"],
        ),
        ("tls_server_config:\n  cert_file: KEY\n  key_file: KEY\n", ["cert_file", "cannot load"]),
        ("tls_config:\n  cert_file: x\n", ["unknown key tls_config"]),
        ("basic_auth_users:\n  alice: hunter2\n", ["basic_auth_users.alice", "bcrypt"]),
        ("basic_auth_users: [alice]\n", ["basic_auth_users", "mapping"]),
        ("rate_limit:\n  interval: 1s\n", ["rate_limit", "not supported"]),
        ("tls_server_config: [\n", ["not valid YAML"]),
    ],
)
def test_bad_files_name_file_key_and_value(tmp_path, pki, text, expected):
    text = text.replace("SERVER", str(pki.server_cert)).replace("KEY", str(pki.server_key)).replace("CA", str(pki.ca))
    path = write(tmp_path, text)
    with pytest.raises(webconfig.WebConfigError) as error:
        webconfig.load(path)
    message = str(error.value)
    assert message.startswith(f"web config file {path}: ") and "\n" not in message
    for part in expected:
        assert part in message
    assert "hunter2" not in message  # a password in the wrong place is not echoed


def test_an_unreadable_file_says_so(tmp_path):
    with pytest.raises(webconfig.WebConfigError, match="cannot read"):
        webconfig.load(tmp_path / "absent.yml")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (basic("prometheus", "s3cret"), True),
        (basic("prometheus", "wrong"), False),
        (basic("mallory", "s3cret"), False),
        ("Bearer s3cret", False),
        ("Basic !!!", False),
        (None, False),
    ],
)
def test_basic_auth(tmp_path, header, ok):
    config = webconfig.load(write(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n"))
    assert config.authorized(header) is ok
    assert config.authorized(header) is ok  # and again, through the cache


def test_a_changed_file_is_picked_up_and_a_bad_change_keeps_the_old(tmp_path):
    path = write(tmp_path, "")
    source = webconfig.WebConfigSource(path)
    assert not source.current().users
    path.write_text(f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    assert set(source.current().users) == {"prometheus"}
    path.write_text("basic_auth_users:\n  prometheus: not-a-hash\n  extra: x\n")
    assert set(source.current().users) == {"prometheus"}


# -- over HTTPS, against a running daemon ---------------------------------------------------------


def _client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


@pytest.mark.slow
def test_tls_with_basic_auth(tmp_path, pki):
    path = write(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"basic_auth_users:\n  prometheus: '{HASH}'\n",
    )
    ca = ssl.create_default_context(cafile=str(pki.ca))
    with serve(tmp_path, "--simulate", "--web.config.file", str(path), ready_context=ca) as d:
        assert d.url.startswith("https://")
        right = requests.get(d.url + "/metrics", auth=("prometheus", "s3cret"), verify=pki.ca, timeout=5)
        assert right.status_code == 200 and "gpuwatch_gpu_power_watts" in right.text
        wrong = requests.get(d.url + "/metrics", auth=("prometheus", "guess"), verify=pki.ca, timeout=5)
        assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
        none = requests.get(d.url + "/metrics", verify=pki.ca, timeout=5)
        assert none.status_code == 401 and "gpuwatch_" not in none.text
        with pytest.raises(requests.exceptions.ConnectionError):  # plain HTTP on the TLS port
            requests.get(f"http://127.0.0.1:{d.port}/metrics", auth=("prometheus", "s3cret"), timeout=5)
        assert "serving https://" in d.stderr


@pytest.mark.slow
def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(tmp_path, pki):
    path = write(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n",
    )
    with serve(tmp_path, "--simulate", "--web.config.file", str(path), ready_context=_client_context(pki)) as d:
        ok = requests.get(
            d.url + "/metrics", cert=(str(pki.client_cert), str(pki.client_key)), verify=pki.ca, timeout=5
        )
        assert ok.status_code == 200 and "gpuwatch_gpu_up" in ok.text
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(d.url + "/metrics", verify=pki.ca, timeout=5)  # no client certificate
        with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
            requests.get(
                d.url + "/metrics", cert=(str(pki.stranger_cert), str(pki.stranger_key)), verify=pki.ca, timeout=5
            )
        # the refused handshakes did not hurt the next scrape
        again = requests.get(
            d.url + "/metrics", cert=(str(pki.client_cert), str(pki.client_key)), verify=pki.ca, timeout=5
        )
        assert again.status_code == 200


# -- bounded request handling ----------------------------------------------------------------------


def _hog(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` that sends half a request head and never finishes it.

    One can still be refused for a moment while an earlier connection (the readiness probe) is
    closing; a hog refused for that reason is closed at once, so try again until one is held.
    """
    for _ in range(50):
        hog = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        hog.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        hog.settimeout(0.2)
        try:
            if hog.recv(1) == b"":
                hog.close()
                time.sleep(0.05)
                continue
        except TimeoutError:
            return hog  # still waiting for the rest of its head: the server holds it open
        raise AssertionError("a half-sent request head was answered before the read timeout")
    raise AssertionError("no connection was held")


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.slow
def test_slow_clients_hold_no_request_slot_and_cannot_fill_the_connections(tmp_path):
    # --web.max-requests 1: 10 connections in all, at most 5 unfinished from one client
    args = ("--simulate", "--web.max-requests", "1", "--web.read-timeout", "5s")
    with serve(tmp_path, *args) as d:
        hogs = [_hog(d.port)]  # as many hogs as request slots: a scrape is still answered at once
        assert requests.get(d.url + "/metrics", timeout=1).status_code == 200
        hogs += [_hog(d.port) for _ in range(4)]  # the most one client may hold unfinished
        extra = socket.create_connection(("127.0.0.1", d.port))
        assert _closed_by_server(extra, within_s=1)  # a sixth from the same client is closed at once
        assert "holds 5 unfinished connections" in d.stderr
        assert get_from("127.0.0.2", d.port, timeout_s=1)[0] == 200  # another client is served beside them
        hogs += [_hog(d.port, "127.0.0.3") for _ in range(5)]  # all 10 open: more than half is pressure
        assert get_from("127.0.0.2", d.port, timeout_s=1)[0] == 200  # the oldest hog made room
        # Under pressure the older hogs are closed after 1 s, well before the 5 s read timeout, until
        # no more than half the connections are open.
        started = time.monotonic()
        assert all(_closed_by_server(hog, within_s=3) for hog in hogs[:5])
        assert time.monotonic() - started < 4
        assert "with no complete, authorized request after 1 s" in d.stderr
        for hog in hogs:
            hog.close()
        assert wait_until(lambda: _answered(d.url + "/metrics"), every_s=0.1)


def _answered(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.exceptions.ConnectionError:
        return False


@pytest.mark.slow
def test_an_oversized_request_head_is_refused(tmp_path):
    with serve(tmp_path, "--simulate") as d:
        response = requests.get(d.url + "/metrics", headers={"X-Junk": "a" * 20_000}, timeout=5)
        assert response.status_code == 431
        assert requests.get(d.url + "/metrics", timeout=5).status_code == 200


@pytest.mark.slow
def test_basic_auth_over_plain_http_works_and_is_warned_about(tmp_path):
    path = write(tmp_path, f"basic_auth_users:\n  prometheus: '{HASH}'\n")
    with serve(tmp_path, "--simulate", "--web.config.file", str(path)) as d:
        assert requests.get(d.url + "/metrics", auth=("prometheus", "s3cret"), timeout=5).status_code == 200
        assert requests.get(d.url + "/status", auth=("prometheus", "nope"), timeout=5).status_code == 401
        assert "basic auth without TLS" in d.stderr
        # `gpuwatch status` cannot log in; it says so rather than pass off a direct sample as the daemon's
        status = subprocess.run(
            [sys.executable, "-m", "gpuwatch", "status", "--url", d.url, "--json"], capture_output=True, text=True
        )
        assert "answered 401 Unauthorized; sampling NVML directly" in status.stderr


@pytest.mark.slow
def test_a_trickled_tls_handshake_is_cut_off_at_the_read_timeout(tmp_path, pki):
    path = write(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.server_key}\n")
    ca = ssl.create_default_context(cafile=str(pki.ca))
    args = ("--simulate", "--web.config.file", str(path), "--web.read-timeout", "1s", "--web.max-requests", "1")
    with serve(tmp_path, *args, ready_context=ca) as d:
        hog = socket.create_connection(("127.0.0.1", d.port))
        started = time.monotonic()
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64  # a ClientHello, slowly
        closed = False
        for byte in hello:
            try:
                hog.send(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)  # each byte well inside the per-read timeout
        hog.settimeout(2)
        if not closed:
            try:
                closed = hog.recv(100) == b""
            except OSError:
                closed = True
        assert closed and time.monotonic() - started < 4
        hog.close()
        ok = requests.get(d.url + "/metrics", verify=pki.ca, timeout=5)  # the only slot is free again
        assert ok.status_code == 200


@pytest.mark.slow
def test_a_trickled_request_head_gets_408_at_the_read_timeout(tmp_path):
    with serve(tmp_path, "--simulate", "--web.read-timeout", "1s") as d:
        hog = socket.create_connection(("127.0.0.1", d.port))
        hog.setblocking(False)
        started = time.monotonic()
        answer = b""
        for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:  # 4 s of bytes, 0.1 s apart
            try:
                hog.send(bytes([byte]))
                answer += hog.recv(100)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer:
                break
            time.sleep(0.1)  # each byte well inside a per-read timeout; the head as a whole is not
        answered_after = time.monotonic() - started
        hog.close()
        assert answer.startswith(b"HTTP/1.0 408") and answered_after < 2, (answer, answered_after)
