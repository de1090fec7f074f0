"""The progress estimate of time left never exceeds what the time budget leaves."""

from __future__ import annotations

import time

from nasforge.experiment.loop import _time_left


def test_time_left_is_capped_by_the_time_budget() -> None:
    start = time.time() - 10.0  # 10 s for 2 trials: 5 s a trial
    pace = _time_left(start, 2, 8)
    assert pace is not None and pace >= 40.0  # 8 more at >= 5 s each
    assert _time_left(start, 2, 8, wall_left=12.0) == 12.0  # the run stops at its budget
    small = _time_left(start, 2, 1, wall_left=100.0)
    assert small is not None and 5.0 <= small < 100.0  # the pace wins when it is sooner
    assert _time_left(start, 0, 8) is None and _time_left(start, 0, 8, wall_left=30.0) == 30.0
