"""Straggler detection (service/train/stragglers.py) on made-up compute times."""

from __future__ import annotations

from dtrain.service.train.stragglers import PERSISTENT_WINDOWS, SLOW_FACTOR, StragglerWatch


def feed(watch: StragglerWatch, times: tuple[float, ...], steps: int) -> list:
    verdicts = []
    for _ in range(steps):
        v = watch.add(times)
        if v is not None:
            verdicts.append(v)
    return verdicts


def test_a_persistently_slow_worker_is_flagged_once() -> None:
    watch = StragglerWatch(["a", "b", "c"], window=10)
    windows = feed(watch, (0.002, 0.002, 0.002 * (SLOW_FACTOR + 0.5)), 10 * 4)
    assert len(windows) == 4
    flags = [[v.straggler for v in w] for w in windows]
    first = PERSISTENT_WINDOWS - 1
    assert flags[first - 1] == [False, False, False]  # one slow window is not enough
    assert flags[first] == [False, False, True]
    assert [w[2].new for w in windows] == [i == first for i in range(4)]
    assert windows[-1][2].ratio == SLOW_FACTOR + 0.5 and windows[-1][2].node == "c"


def test_noise_below_the_factor_and_a_single_worker_flag_nobody() -> None:
    watch = StragglerWatch(["a", "b"], window=5)
    windows = feed(watch, (0.002, 0.0026), 50)
    assert windows and not any(v.straggler for w in windows for v in w)
    assert feed(StragglerWatch(["a"], window=5), (0.002,), 50) == []


def test_a_worker_that_recovers_is_no_longer_a_straggler() -> None:
    watch = StragglerWatch(["a", "b", "c"], window=4)
    slow = feed(watch, (0.001, 0.001, 0.004), 4 * PERSISTENT_WINDOWS)
    assert slow[-1][2].straggler
    fast = feed(watch, (0.001, 0.001, 0.001), 4)
    assert not fast[-1][2].straggler and fast[-1][2].ratio == 1.0
