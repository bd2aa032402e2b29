"""sd_notify over a real unix datagram socket: READY after the first poll, WATCHDOG on progress."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving import serve

from gpuwatch.sdnotify import Notifier, Watchdog, watchdog_interval_s


class Listener:
    """The manager's end: a bound AF_UNIX datagram socket, as systemd creates."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.01)

    def messages(self) -> list[dict[str, str]]:
        out = []
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return out
            out.append(dict(line.split("=", 1) for line in data.decode().splitlines()))

    def wait_for(self, key: str, value: str, timeout_s: float = 10.0) -> list[dict[str, str]]:
        """Every message until one with ``key=value`` arrives."""
        seen: list[dict[str, str]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            seen += self.messages()
            if any(m.get(key) == value for m in seen):
                return seen
        raise AssertionError(f"no {key}={value} within {timeout_s} s; got {seen}")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, Listener]]:
    path = str(tmp_path / "notify.sock")
    lst = Listener(path)
    yield path, lst
    lst.sock.close()


def test_notifier_sends_to_a_path_socket(listener):
    path, lst = listener
    assert Notifier({"NOTIFY_SOCKET": path}).send(READY=1, STATUS="polling 4 GPUs")
    assert lst.messages() == [{"READY": "1", "STATUS": "polling 4 GPUs"}]


def test_notifier_sends_to_an_abstract_socket():
    name = f"gpuwatch-test-{os.getpid()}-{time.monotonic_ns()}"
    lst = Listener("\0" + name)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).send(WATCHDOG=1)
        assert lst.messages() == [{"WATCHDOG": "1"}]
    finally:
        lst.sock.close()


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.send(READY=1)


def test_a_missing_socket_is_warned_about_once(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.send(READY=1) and not notifier.send(READY=1)
    assert len([r for r in caplog.records if "cannot notify systemd" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(environ, seconds):
    assert watchdog_interval_s(environ) == seconds


def test_watchdog_pings_only_while_polls_progress(listener):
    path, lst = listener
    now, polls = [0.0], [0]
    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), 10.0, lambda: polls[0], lambda: 1.0, monotonic=lambda: now[0])
    assert dog.stall_after_s == 5.0
    for _ in range(8):  # a healthy loop: one poll a second
        now[0] += 1.0
        polls[0] += 1
        assert dog.check()
    now[0] += 5.5  # wedged: no poll for longer than half the watchdog interval
    assert not dog.check()
    assert lst.messages() == [{"WATCHDOG": "1"}] * 8
    polls[0] += 1  # unwedged
    assert dog.check()


def test_a_slow_poll_interval_is_not_a_stall(listener):
    path, _ = listener
    now, polls = [0.0], [0]
    dog = Watchdog(Notifier({"NOTIFY_SOCKET": path}), 10.0, lambda: polls[0], lambda: 30.0, monotonic=lambda: now[0])
    assert dog.stall_after_s == 60.0
    now[0] = 45.0
    assert dog.check()
    now[0] = 61.0
    assert not dog.check()


def _wedge_scenario(tmp_path: Path) -> Path:
    """GPU 0 hangs after 1 s (the loop goes on without it, from at least 2 s later); at 4 s the
    driver reloads and the loop's own nvmlInit then hangs (the loop itself is stuck)."""
    path = tmp_path / "wedge.toml"
    path.write_text(
        'name = "wedge"\ndescription = "GPU 0 hangs at 1 s; the driver reloads at 4 s and nvmlInit hangs"\n'
        '[[fault]]\nkind = "driver_reload"\nat_s = 4\nduration_s = 0.5\n'
        '[[fault]]\nkind = "init_hang"\nat_s = 4\nhang_s = 60\nduration_s = 600\n'
        '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
        '[[gpu.fault]]\nkind = "hang"\nat_s = 1\nhang_s = 60\nduration_s = 600\n'
        '[[gpu]]\nprofile = "rtx-a6000"\nload = 0.9\n'
    )
    return path


@pytest.mark.slow
def test_serve_sends_ready_then_watchdog_pings_and_stopping(tmp_path, listener):
    path, lst = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    with serve(tmp_path, "--simulate", "xid-79", "--sim-speed", "60", "--poll-interval", "100ms", env=env) as d:
        seen = lst.wait_for("READY", "1")
        ready = next(m for m in seen if m.get("READY") == "1")
        assert ready["STATUS"].startswith("polling 4 GPUs")
        # GPU 1 falls off the bus at 40 simulated s (< 1 s here); the loop goes on, so do the pings
        time.sleep(1.5)
        lst.messages()
        assert "GPU 1" in d.stderr and "lost" in d.stderr
        assert lst.wait_for("WATCHDOG", "1", timeout_s=1.0)  # still pinging with GPU 1 gone
        d.proc.terminate()
        assert d.proc.wait(5) == 0
        assert {"STOPPING": "1"} in lst.messages()


@pytest.mark.slow
def test_a_hung_gpu_keeps_the_watchdog_fed_and_only_a_wedged_loop_stops_it(tmp_path, listener):
    path, lst = listener
    # A hung read is left behind after 2 s; the watchdog gives the loop half of WatchdogSec=6s.
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "6000000"}
    args = ("--simulate", str(_wedge_scenario(tmp_path)), "--poll-interval", "100ms")
    with serve(tmp_path, *args, env=env) as d:
        lst.wait_for("READY", "1")
        d.wait_for_log("GPU 0: an NVML call has not returned", timeout_s=8)
        lst.messages()
        assert lst.wait_for("WATCHDOG", "1", timeout_s=3.0)  # GPU 0 hangs, the loop goes on: still fed
        d.wait_for_log("no longer pinging the systemd watchdog", timeout_s=10)  # stuck in nvmlInit
        assert "NVML stopped answering" in d.stderr
        assert "poll loop is moving again" not in d.stderr  # the hung GPU alone never stopped the pings
        lst.messages()
        time.sleep(3.0)  # two of the watchdog's checks with no ping
        assert {"WATCHDOG": "1"} not in lst.messages()
