"""The stall bookkeeping on its own: a read finishes for its generation, or is left behind."""

from __future__ import annotations

import pytest

from gpuwatch.stalls import PollSuperseded, StallWatch


def test_a_read_is_left_behind_only_once_it_has_run_long_enough_and_frees_its_gpu_on_return():
    now = [0.0]
    watch = StallWatch(monotonic=lambda: now[0], now=lambda: 1000 + now[0])
    watch.begin(0, 3)
    assert watch.end(0, 3) is None  # a read that returned in time
    watch.begin(0, 3)
    now[0] = 0.9
    assert watch.leave_behind(1.0) is None
    now[0] = 1.0
    stuck = watch.leave_behind(1.0)
    assert stuck is not None and (stuck.index, stuck.since, stuck.for_s) == (3, 1000.0, 1.0)
    assert watch.generation == 1 and watch.stuck_since(3) == 1000.0 and watch.any_stuck
    assert watch.leave_behind(1.0) is None  # nothing more to leave behind
    watch.begin(1, 4)  # the new loop thread reads another GPU
    assert watch.end(1, 4) is None
    now[0] = 31.0
    with pytest.raises(PollSuperseded, match=r"GPU 3: the hung NVML call returned after 31\.0 s"):
        watch.end(0, 3)  # the old thread's call returns
    assert watch.stuck_since(3) is None and not watch.any_stuck


def test_a_read_of_the_new_generation_is_not_confused_with_the_one_left_behind():
    now = [0.0]
    watch = StallWatch(monotonic=lambda: now[0], now=lambda: now[0])
    watch.begin(0, 0)
    now[0] = 5.0
    assert watch.leave_behind(1.0) is not None
    watch.begin(1, 1)  # generation 1 reads GPU 1 ...
    now[0] = 5.5
    assert watch.leave_behind(1.0) is None  # ... for 0.5 s only
    now[0] = 7.0
    stuck = watch.leave_behind(1.0)  # now it hangs too: a second GPU, a third generation
    assert stuck is not None and stuck.index == 1 and watch.generation == 2
