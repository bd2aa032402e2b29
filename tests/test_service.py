"""The daemon as systemd runs it: bad config exits 78, SIGHUP reloads, the unit verifies and scores."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests
from serving import serve
from test_sdnotify import Listener

from gpuwatch import install

pytestmark = pytest.mark.slow


def gpuwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gpuwatch", *args], capture_output=True, text=True, timeout=30, env=environ
    )


def polls(url: str) -> float:
    text = requests.get(url + "/metrics", timeout=5).text
    return float(re.search(r"^gpuwatch_polls_total (\S+)$", text, re.M)[1])  # type: ignore[index]


# -- a config that cannot be used: exit 78 and one line ------------------------------------------


@pytest.mark.parametrize("command", ["serve", "check-config"])
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('poll_interval = "soon"\n', ["poll_interval", "'soon'"]),
        ("[web]\nmax_requests = 100000\n", ["web.max_requests", "100000", "out of range"]),
        ("[web]\nlisten_adress = ':1'\n", ["unknown key", "web.listen_adress"]),
        ('[web]\nmax_requests = "many"\n', ["web.max_requests", "'many'", "expected an integer"]),
        ("[log]\nlevel = 3\n", ["log.level", "3", "expected a non-empty string"]),
        ("poll_interval = \n", ["not valid TOML", "line 1"]),
    ],
)
def test_a_bad_config_exits_78_with_one_line(tmp_path, command, text, expected):
    path = tmp_path / "gpuwatch.toml"
    path.write_text(text)
    extra = ["--simulate"] if command == "serve" else []
    result = gpuwatch(command, "--config", str(path), *extra)
    assert result.returncode == 78, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr
    assert str(path) in result.stderr
    for part in expected:
        assert part in result.stderr


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_an_unreadable_config_and_a_bad_web_config_and_environment_exit_78(tmp_path, command):
    extra = ["--simulate"] if command == "serve" else []
    missing = gpuwatch(command, "--config", str(tmp_path / "absent.toml"), *extra)
    assert missing.returncode == 78 and "absent.toml" in missing.stderr and "cannot read" in missing.stderr
    good = tmp_path / "gpuwatch.toml"
    good.write_text("")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: plaintext\n")
    bad_web = gpuwatch(command, "--config", str(good), "--web.config.file", str(web), *extra)
    assert bad_web.returncode == 78 and len(bad_web.stderr.splitlines()) == 1
    assert str(web) in bad_web.stderr and "basic_auth_users.alice" in bad_web.stderr
    bad_env = gpuwatch(command, "--config", str(good), *extra, env={"GPUWATCH_LOG_LEVEL": "chatty"})
    assert bad_env.returncode == 78 and "GPUWATCH_LOG_LEVEL" in bad_env.stderr and "'chatty'" in bad_env.stderr


def test_check_config_prints_the_settings_in_force(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text(install.packaged("gpuwatch.toml"))
    result = gpuwatch("check-config", "--config", str(path), env={"GPUWATCH_POLL_INTERVAL": "250ms"})
    assert result.returncode == 0, result.stderr
    assert f"{path}: OK" in result.stdout and "poll_interval = 0.25" in result.stdout


def test_check_config_checks_the_scenario_too(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text('[simulate]\nscenario = "no-such-host"\n')
    result = gpuwatch("check-config", "--config", str(path))
    assert result.returncode == 78 and "no-such-host" in result.stderr and len(result.stderr.splitlines()) == 1


def test_under_journald_lines_carry_a_priority_and_no_timestamp(tmp_path):
    log = tmp_path / "journal.log"
    with log.open("w") as stderr:
        st = os.fstat(stderr.fileno())
        environ = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
        environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"  # as systemd sets it for StandardError=journal
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuwatch", "serve", "--simulate", "--web.listen-address", "127.0.0.1:0"],
            stderr=stderr,
            env=environ,
        )
        deadline = time.monotonic() + 10
        while "serving" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    lines = log.read_text().splitlines()
    assert any(line.startswith("<6>gpuwatch: gpuwatch ") and "serving" in line for line in lines), lines
    assert all(re.match(r"<[0-7]>gpuwatch", line) for line in lines), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\dT", line) for line in lines)


# -- SIGHUP --------------------------------------------------------------------------------------


def test_sighup_reloads_without_dropping_metrics_and_a_bad_reload_keeps_the_old(tmp_path):
    path = tmp_path / "gpuwatch.toml"
    path.write_text('poll_interval = "1s"\n')
    notify = Listener(str(tmp_path / "notify.sock"))
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
    with serve(tmp_path, "--config", str(path), "--simulate", env=env) as d:
        notify.wait_for("READY", "1")
        before = polls(d.url)
        path.write_text('poll_interval = "50ms"\n[web]\nmax_requests = 7\n[log]\nlevel = "debug"\n')
        d.proc.send_signal(signal.SIGHUP)
        codes = [requests.get(d.url + "/metrics", timeout=5).status_code for _ in range(20)]  # across the reload
        d.wait_for_log("reloaded: polling every 0.05s")
        messages = notify.wait_for("READY", "1")
        assert messages[0]["RELOADING"] == "1" and "MONOTONIC_USEC" in messages[0]
        assert "web.max_requests changed to 7; this takes effect after a restart" in d.stderr
        assert codes == [200] * 20
        deadline = time.monotonic() + 3  # at the old 1 s interval, 10 more polls would take 10 s
        while (after := polls(d.url)) < before + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after >= before + 10  # counters kept counting, now 20 times a second

        path.write_text('poll_interval = "often"\n')
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for_log("reload failed, keeping the running config")
        line = next(x for x in d.stderr.splitlines() if "reload failed" in x)
        assert str(path) in line and "poll_interval" in line and "'often'" in line
        assert notify.wait_for("STATUS", f"reload failed: {line.split('config: ', 1)[1]}")
        deadline = time.monotonic() + 3
        while polls(d.url) < after + 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert polls(d.url) >= after + 10 and d.proc.poll() is None  # still polling at 50 ms
    notify.sock.close()


# -- nothing sensitive in labels ------------------------------------------------------------------


def test_process_labels_carry_no_command_line_or_environment(tmp_path):
    secret = "hunter2-do-not-leak"
    worker = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"--api-key={secret}"],
        env={**os.environ, "HF_TOKEN": secret},
    )
    scenario = tmp_path / "proc.toml"
    scenario.write_text(
        'name = "proc"\ndescription = "a real process on GPU 0"\nseed = 1\n'
        f'[[gpu]]\nprofile = "rtx-a6000"\nload = 0.5\n[[gpu.process]]\npid = {worker.pid}\nname = "x"\n'
        "used_memory_mib = 1000\n"
    )
    try:
        with serve(tmp_path, "--simulate", str(scenario), "--process-interval", "100ms") as d:
            time.sleep(0.5)
            metrics = requests.get(d.url + "/metrics", timeout=5).text
            status = requests.get(d.url + "/status", timeout=5).text
    finally:
        worker.kill()
        worker.wait()
    line = next(x for x in metrics.splitlines() if x.startswith("gpuwatch_gpu_process_memory_used_bytes{"))
    assert f'pid="{worker.pid}"' in line and 'process="python' in line
    assert secret not in metrics and secret not in status and "import time" not in metrics


# -- the unit -------------------------------------------------------------------------------------


def test_install_service_writes_the_unit_user_defaults_and_config(tmp_path):
    executable = tmp_path / "bin" / "gpuwatch"  # under /tmp and missing: refused without --force-path
    result = gpuwatch("install-service", "--root", str(tmp_path / "root"), "--bin", str(executable), "--force-path")
    assert result.returncode == 0, result.stderr
    root = tmp_path / "root"
    unit = (root / "etc/systemd/system/gpuwatch.service").read_text()
    assert f"ExecStart={executable} serve --config /etc/gpuwatch/gpuwatch.toml $GPUWATCH_OPTS" in unit
    assert (root / "etc/sysusers.d/gpuwatch.conf").read_text().startswith("# sysusers.d")
    config = root / "etc/gpuwatch/gpuwatch.toml"
    assert gpuwatch("check-config", "--config", str(config)).returncode == 0
    config.write_text("# mine\n")
    again = gpuwatch("install-service", "--root", str(root), "--bin", str(executable), "--force-path")
    assert "kept" in again.stdout and config.read_text() == "# mine\n"  # an operator's config survives


def test_the_unit_verifies_and_its_exposure_is_at_most_2(tmp_path, systemd_analyze):
    executable = tmp_path / "gpuwatch"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    install.install(tmp_path / "root", str(executable))
    unit = tmp_path / "root/etc/systemd/system/gpuwatch.service"
    verify = subprocess.run([systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "gpuwatch.service" not in verify.stderr, verify.stderr
    security = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for gpuwatch.service: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    assert float(match[1]) <= 2.0, security.stdout


def test_the_shipped_unit_has_what_the_issue_asks_for():
    unit = install.packaged("gpuwatch.service")
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "RestartPreventExitStatus=78",
        "User=gpuwatch",
        "DeviceAllow=char-nvidia* rw",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "MemoryMax=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "/etc/gpuwatch/gpuwatch.toml",
    ]:
        assert line in unit, line


def test_the_sysusers_entry_creates_the_user_in_group_video(tmp_path, systemd_analyze):
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers not installed")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    entry = tmp_path / "gpuwatch.conf"
    entry.write_text(install.packaged("gpuwatch.sysusers"))
    result = subprocess.run([sysusers, f"--root={tmp_path}", str(entry)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^gpuwatch:x:\d+:\d+:.*:/usr/sbin/nologin$", (tmp_path / "etc/passwd").read_text(), re.M)
    assert "video:x:44:gpuwatch" in (tmp_path / "etc/group").read_text()
