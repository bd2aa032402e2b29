"""Logging: journald format under systemd, terminal format elsewhere, repeated messages limited."""

from __future__ import annotations

import io
import logging
import os

from gpuwatch import logsetup


def record(msg: str, *args: object, level: int = logging.ERROR, name: str = "gpuwatch.sampler") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path):
    with (tmp_path / "stream").open("w") as stream:
        st = os.fstat(stream.fileno())
        assert logsetup.stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logsetup.stderr_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logsetup.stderr_is_journal(stream, {})


def test_journal_lines_carry_a_priority_and_no_timestamp():
    formatter = logsetup.JournalFormatter()
    assert formatter.format(record("GPU %d lost", 1)) == "<3>gpuwatch.sampler: GPU 1 lost"
    assert formatter.format(record("started", level=logging.INFO, name="gpuwatch")) == "<6>gpuwatch: started"
    assert formatter.format(record("hm", level=logging.WARNING)).startswith("<4>")


def test_terminal_lines_carry_a_timestamp_and_level(tmp_path):
    with (tmp_path / "stream").open("w+") as stream:
        logsetup.setup("info", stream, {})
        logging.getLogger("gpuwatch.test").info("hello")
        stream.seek(0)
        line = stream.read()
    logsetup.setup("info")
    assert line.endswith(" INFO gpuwatch.test: hello\n") and line[:4].isdigit()


def test_repeated_messages_are_rate_limited_and_the_count_reported():
    now = [0.0]
    limit = logsetup.RateLimit(interval_s=60, burst=3, clock=lambda: now[0])
    passed = [limit.filter(record("GPU %d lost: %s", i, "GpuIsLost")) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    assert limit.filter(record("another message"))  # a different template has its own budget
    now[0] = 61.0
    later = record("GPU %d lost: %s", 1, "GpuIsLost")
    assert limit.filter(later)
    assert "suppressed 7 similar messages" in later.getMessage()
    assert limit.filter(record("GPU %d lost: %s", 1, "x", level=logging.DEBUG))  # debug is never limited


def test_setup_replaces_handlers_rather_than_adding():
    stream = io.StringIO()
    logsetup.setup("warning", stream, {})
    logsetup.setup("warning", stream, {})
    logging.getLogger("gpuwatch.x").warning("once")
    logsetup.setup("info")
    assert stream.getvalue().count("once") == 1
