"""The stall bookkeeping on its own: a read finishes for its generation, or is left behind, and
only once it has been blocked while the process was running. Every clock here is moved by hand."""

from __future__ import annotations

import pytest

from gpuwatch.stalls import HEARTBEAT_S, LATE_BEAT_S, PollSuperseded, StallWatch


class Clocks:
    """A manual monotonic clock and the reading thread's CPU clock, and a watch over them."""

    def __init__(self, cpu: float | None = 0.0) -> None:
        self.now = 0.0
        self.cpu = cpu
        self.watch = StallWatch(monotonic=lambda: self.now, now=lambda: 1000 + self.now, cpu_seconds=lambda _: self.cpu)

    def beats(self, seconds: float, every_s: float = HEARTBEAT_S, cpu_share: float = 0.0) -> None:
        """The watcher beats every ``every_s`` for ``seconds``; the reading thread gets ``cpu_share`` of the time."""
        for _ in range(round(seconds / every_s)):
            self.now += every_s
            if self.cpu is not None:
                self.cpu += cpu_share * every_s
            self.watch.heartbeat()


def test_a_read_is_left_behind_only_once_it_has_been_blocked_long_enough_and_frees_its_gpu_on_return():
    c = Clocks()
    watch = c.watch
    watch.begin(0, 3)
    c.beats(0.5)
    assert watch.end(0, 3) is None  # a read that returned in time
    watch.begin(0, 3)
    c.beats(0.9)
    assert watch.leave_behind(1.0) is None
    c.beats(0.1)
    stuck = watch.leave_behind(1.0)
    assert stuck is not None and (stuck.index, stuck.since) == (3, 1000.5)
    assert stuck.for_s == pytest.approx(1.0) and stuck.blocked_s == pytest.approx(1.0)
    assert watch.generation == 1 and watch.stuck_since(3) == 1000.5 and watch.any_stuck
    assert watch.leave_behind(1.0) is None  # nothing more to leave behind
    watch.begin(1, 4)  # the new loop thread reads another GPU
    assert watch.end(1, 4) is None
    c.now = 31.5
    with pytest.raises(PollSuperseded, match=r"GPU 3: the hung NVML call returned after 31\.0 s"):
        watch.end(0, 3)  # the old thread's call returns
    assert watch.stuck_since(3) is None and not watch.any_stuck


def test_a_read_of_the_new_generation_is_not_confused_with_the_one_left_behind():
    c = Clocks()
    watch = c.watch
    watch.begin(0, 0)
    c.beats(5.0)
    assert watch.leave_behind(1.0) is not None
    watch.begin(1, 1)  # generation 1 reads GPU 1 ...
    c.beats(0.5)
    assert watch.leave_behind(1.0) is None  # ... for 0.5 s only
    c.beats(1.5)
    stuck = watch.leave_behind(1.0)  # now it hangs too: a second GPU, a third generation
    assert stuck is not None and stuck.index == 1 and watch.generation == 2


def test_without_heartbeats_wall_time_alone_never_makes_a_read_hung():
    """The process was not scheduled (the watcher did not beat): nothing is held against the read."""
    c = Clocks()
    c.watch.begin(0, 0)
    c.now += 60.0
    assert c.watch.leave_behind(2.0) is None
    c.watch.heartbeat()  # the first beat after a minute-long freeze: late, so it proves nothing
    assert c.watch.leave_behind(0.01) is None
    c.beats(2.0)  # then the process runs, and the read stays blocked
    assert c.watch.leave_behind(2.0) is not None


def test_beats_that_come_late_count_for_nothing_so_a_starved_process_calls_no_read_hung():
    c = Clocks()
    c.watch.begin(0, 0)
    c.beats(60.0, every_s=LATE_BEAT_S + 0.01)  # every beat more than a period late
    assert c.watch.leave_behind(0.01) is None
    c.beats(1.05, every_s=1.5 * HEARTBEAT_S)  # late, but not that late: counted in full
    assert c.watch.leave_behind(1.0) is not None


def test_a_reading_thread_that_gets_cpu_is_starved_not_hung():
    """Scheduled beats, but the reading thread runs a little in each: it is making its way through
    the read on a crowded CPU, however long that takes."""
    c = Clocks()
    c.watch.begin(0, 0)
    c.beats(30.0, cpu_share=0.05)  # 5 % of a core: 1.5 s of CPU in 30 s
    assert c.watch.leave_behind(2.0) is None
    c.beats(2.0, cpu_share=0.0)  # then it blocks
    assert c.watch.leave_behind(2.0) is not None


def test_a_read_spinning_in_the_driver_is_hung_once_it_has_burnt_that_much_cpu():
    c = Clocks()
    c.watch.begin(0, 0)
    c.beats(1.9, cpu_share=1.0)
    assert c.watch.leave_behind(2.0) is None
    c.beats(0.1, cpu_share=1.0)
    assert c.watch.leave_behind(2.0) is not None


def test_without_a_thread_cpu_clock_the_heartbeat_alone_judges():
    c = Clocks(cpu=None)
    c.watch.begin(0, 0)
    c.beats(1.9)
    assert c.watch.leave_behind(2.0) is None
    c.beats(0.1)
    assert c.watch.leave_behind(2.0) is not None
