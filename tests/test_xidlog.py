"""The kernel-log Xid reader (gpuwatch.xidlog): lines and records it takes, those it skips, a file
followed across truncation, bounded reads; the catalogue's advice and the recovery-action check."""

from __future__ import annotations

import os

import pytest
from waiting import wait_until

from gpuwatch.analysis.health import GpuFacts, HealthThresholds, gpu_verdict
from gpuwatch.analysis.xid_catalogue import recommended_action, xid_class
from gpuwatch.xidlog import MAX_LINE_BYTES, XidLog, parse_kmsg_record, parse_line, pci_location


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (
            b"[  123.456789] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, name=, GPU has fallen off the bus.",
            ((0, 0x3B, 0), 79, 123.456789),
        ),
        (b"[ 5.0] myhost kernel: NVRM: Xid (PCI:0001:c1:00): 48, pid=12, name=python3, DBE", ((1, 0xC1, 0), 48, 5.0)),
        (b"NVRM: Xid (0000:03:00): 14, Channel 00000001", ((0, 3, 0), 14, None)),  # an old driver, no stamp
        (
            b"[  1.0] NVRM: Xid (PCI:0000:3b:00.0): 119, pid=1, Timeout after 6s of waiting for RPC",
            ((0, 0x3B, 0), 119, 1.0),
        ),
        (b"[  1.0] NVRM: GPU at PCI:0000:3b:00: GPU-b850f46d", None),
        (b"[  1.0] NVRM: Xid (PCI:0000:3b:00): 4\x00\xff garbled", None),
        (b"[  1.0] NVRM: Xid (PCI:zzzz:3b:00): 79, pid=0", None),
        (b"\xff\xfe" * 100, None),
        (b"", None),
    ],
)
def test_lines(line, parsed):
    assert parse_line(line) == parsed


def test_kmsg_records_carry_their_own_microsecond_stamp():
    record = (
        b"3,1234,98765432,-;NVRM: Xid (PCI:0000:1b:00): 79, pid=0, name=, GPU has fallen off the bus.\n SUBSYSTEM=pci\n"
    )
    assert parse_kmsg_record(record) == ((0, 0x1B, 0), 79, 98.765432)
    assert parse_kmsg_record(b"6,1,2,-;eth0: link up\n") is None
    assert parse_kmsg_record(b"no semicolon at all") is None
    assert parse_kmsg_record(b"x,y;NVRM: Xid (PCI:0000:1b:00): 13, pid=5, name=a") == ((0, 0x1B, 0), 13, None)


def test_pci_locations_match_nvml_bus_ids():
    assert pci_location("00000000:1B:00.0") == (0, 0x1B, 0)
    assert pci_location("00000001:C1:00.0") == (1, 0xC1, 0)
    assert pci_location("") is None and pci_location("00000000:XX:00.0") is None


class Clocks:
    """Daemon time and seconds since boot, stepped by hand."""

    def __init__(self, since_boot: float) -> None:
        self.boot = since_boot

    def time(self) -> float:
        return 1_700_000_000.0 + self.boot

    def since_boot(self) -> float:
        return self.boot


def test_a_file_is_backfilled_then_followed_across_truncation(tmp_path):
    path = tmp_path / "kern.log"
    path.write_bytes(b"[   10.0] NVRM: Xid (PCI:0000:1b:00): 48, pid=1, name=a, DBE\n[   11.0] unrelated\n")
    clocks = Clocks(100.0)
    log = XidLog(str(path), clocks.time, clocks.since_boot)
    assert log.kind == "file" and log.readable is None
    log.pump()
    (old,) = log.take()
    assert log.readable is True
    assert (old.xid, old.timestamp) == (48, clocks.time() - 90.0)  # logged 90 s ago
    with path.open("ab") as f:
        f.write(
            b"[  101.0] NVRM: Xid (PCI:0000:1b:00): 79, pid=0, name=, GPU has fallen off the bus.\n[  102.0] NVRM: Xid"
        )
    clocks.boot = 103.0
    log.pump()
    (new,) = log.take()
    assert (new.xid, new.timestamp) == (79, clocks.time() - 2.0)
    with path.open("ab") as f:  # the partial line completes
        f.write(b" (PCI:0000:1b:00): 13, pid=5, name=b, Graphics Exception\n")
    log.pump()
    assert [x.xid for x in log.take()] == [13]
    path.write_bytes(b"[  104.0] NVRM: Xid (PCI:0000:1b:00): 31, pid=5, name=b, MMU Fault\n")  # truncated, rewritten
    log.pump()
    assert [x.xid for x in log.take()] == [31]
    log.close()


def test_endless_lines_are_skipped_and_one_pump_reads_a_bounded_amount(tmp_path):
    path = tmp_path / "kern.log"
    junk = b"x" * (MAX_LINE_BYTES * 3) + b" NVRM: Xid (PCI:0000:1b:00): 79, pid=0\n"
    path.write_bytes(junk * 400 + b"[ 1.0] NVRM: Xid (PCI:0000:1b:00): 13, pid=5, name=b\n")
    clocks = Clocks(100.0)
    log = XidLog(str(path), clocks.time, clocks.since_boot)
    log.pump()  # ~5 MiB of junk: read a MiB at a time, over several pumps, never all at once
    first = log.take()
    assert first == []
    for _ in range(10):
        log.pump()
    assert [x.xid for x in log.take()] == [13]
    log.close()


def test_a_missing_file_is_unreadable_until_it_appears(tmp_path, caplog):
    path = tmp_path / "later.log"
    clocks = Clocks(5.0)
    log = XidLog(str(path), clocks.time, clocks.since_boot)
    log.pump()
    log.pump()
    assert log.readable is False
    assert len([r for r in caplog.records if "kernel log not readable" in r.message]) == 1
    path.write_bytes(b"[ 6.0] NVRM: Xid (PCI:0000:1b:00): 79, pid=0, name=, GPU has fallen off the bus.\n")
    log.pump()
    assert log.readable is True and [x.xid for x in log.take()] == [79]
    log.close()


def test_off_reads_nothing():
    clocks = Clocks(1.0)
    log = XidLog("off", clocks.time, clocks.since_boot)
    log.pump()
    assert log.kind == "off" and log.readable is None and log.take() == []


@pytest.mark.parametrize(
    ("xid", "kind", "words"),
    [
        (79, "reboot", "reboot the node"),
        (48, "reset", "reset the GPU"),
        (13, "application", "restart the application"),
        (63, "reset_later", "when convenient"),
        (154, "recovery_action", "recovery action"),
        (9999, "unknown", "Xid catalogue"),
    ],
)
def test_the_catalogue_recommends_an_action_per_class(xid, kind, words):
    assert xid_class(xid) == kind
    assert words in recommended_action(xid)


@pytest.mark.parametrize(
    ("action", "state", "reason"),
    [
        (None, None, None),
        ("none", "ok", None),
        ("reset", "critical", "GPU 3: driver asks for a reset"),
        ("reboot", "critical", "GPU 3: driver asks for a node reboot"),
        ("drain_and_reset", "critical", "GPU 3: driver asks for a drain and a reset"),
        ("drain_p2p", "warning", "GPU 3: driver asks for peer-to-peer traffic drained"),
        ("unknown", "warning", "recovery action gpuwatch does not know"),
    ],
)
def test_the_recovery_action_check(action, state, reason):
    verdict = gpu_verdict(
        GpuFacts(index=3, up=True, temperature_celsius=40.0, recovery_action=action), HealthThresholds()
    )
    assert verdict.checks.get("recovery_action") == state
    if reason is not None:
        assert any(reason in r for r in verdict.reasons), verdict.reasons


def test_a_critical_xid_reason_carries_the_catalogue_advice():
    facts = GpuFacts(index=1, up=True, temperature_celsius=40.0, recent_xids=[(10.0, 79), (11.0, 48)], now=20.0)
    (reason,) = gpu_verdict(facts, HealthThresholds()).reasons
    assert "critical Xid 48, 79" in reason and "reset the GPU" in reason and "reboot the node" in reason


def test_the_journal_is_read_through_journalctl_on_a_thread_of_its_own(tmp_path, monkeypatch):
    # A stand-in journalctl that prints what `journalctl --dmesg --output=short-monotonic` prints.
    fake = tmp_path / "journalctl"
    fake.write_text(
        "#!/bin/sh\n"
        "echo '[   12.500000] gpu-host kernel: NVRM: Xid (PCI:0000:3b:00): 79, pid=0, name=, GPU has fallen off the bus.'\n"
        "echo '[   12.600000] gpu-host kernel: eth0: link up'\n"
        "exec sleep 30\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    clocks = Clocks(100.0)
    log = XidLog("journal", clocks.time, clocks.since_boot)
    try:
        log.pump()
        found: list = []
        assert wait_until(lambda: found.extend(log.take()) or found, 10)
        assert [(x.pci, x.xid, x.timestamp) for x in found] == [((0, 0x3B, 0), 79, clocks.time() - 87.5)]
        assert log.readable is True
    finally:
        log.close()


def test_a_journalctl_that_exits_leaves_the_log_unreadable(tmp_path, monkeypatch):
    fake = tmp_path / "journalctl"
    fake.write_text("#!/bin/sh\necho 'No journal files were opened due to insufficient permissions.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    clocks = Clocks(1.0)
    log = XidLog("journal", clocks.time, clocks.since_boot)
    try:
        log.pump()
        assert wait_until(lambda: log.pump() or log.readable is False, 10)
    finally:
        log.close()


def test_dev_kmsg_named_as_a_path_is_read_as_records(tmp_path):
    """`--xid-log /dev/kmsg` (or a link to it) is the kmsg source: as a file it has no size, and a
    size check read its whole ring again on every pump, counting an old Xid 79 every second."""

    def named(source: str) -> str:
        return XidLog(source, lambda: 0.0, lambda: 0.0).kind

    link = tmp_path / "kmsg"
    link.symlink_to("/dev/kmsg")
    assert named("/dev/kmsg") == named(str(link)) == "kmsg"
    assert named(str(tmp_path / "kern.log")) == "file"
