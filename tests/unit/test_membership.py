"""The elastic membership policy (service/train/membership.py), without Ray."""

from __future__ import annotations

import pytest

from dtrain.service.train.membership import (
    GREW,
    LOST,
    BelowMinimum,
    Membership,
)


def test_starts_with_as_many_as_the_cluster_places_up_to_max() -> None:
    assert Membership.start(fewest=1, most=4, wanted=4, capacity=2).size == 2
    assert Membership.start(fewest=1, most=4, wanted=4, capacity=9).size == 4
    # A resumed run asks for the size it had.
    assert Membership.start(fewest=1, most=4, wanted=3, capacity=9).size == 3


def test_start_below_min_names_the_minimum() -> None:
    with pytest.raises(BelowMinimum, match=r"can place 1 worker, fewer than the minimum 2"):
        Membership.start(fewest=2, most=4, wanted=4, capacity=1)


def test_a_worker_lost_for_good_shrinks_and_is_not_replaced_on_the_same_cpus() -> None:
    m = Membership.start(fewest=1, most=2, wanted=2, capacity=2)
    size = m.after_loss(num_lost=1, restart=False, capacity=2, step=57)
    change = m.change(size, 57, LOST)
    assert change is not None
    assert (change.step, change.before, change.after, change.reason) == (57, 2, 1, LOST)
    assert m.size == 1
    # Same capacity as before the loss: no growth back onto the CPUs the lost worker had.
    assert m.grown(2) is None


def test_a_restarted_loss_keeps_the_size_unless_the_cluster_shrank() -> None:
    m = Membership.start(fewest=1, most=4, wanted=4, capacity=4)
    assert m.after_loss(num_lost=1, restart=True, capacity=4, step=10) == 4
    # The node with two of them is gone: rebuild with what fits.
    assert m.after_loss(num_lost=2, restart=True, capacity=2, step=10) == 2


def test_below_min_after_a_loss_is_an_error_naming_it() -> None:
    m = Membership.start(fewest=2, most=2, wanted=2, capacity=2)
    with pytest.raises(BelowMinimum, match="1 of 2 workers were lost with no restart left"):
        m.after_loss(num_lost=1, restart=False, capacity=2, step=5)
    m = Membership.start(fewest=2, most=3, wanted=3, capacity=3)
    with pytest.raises(BelowMinimum, match="can now place 1 worker"):
        m.after_loss(num_lost=1, restart=True, capacity=1, step=5)


def test_grows_when_room_appears_up_to_max() -> None:
    m = Membership.start(fewest=1, most=3, wanted=3, capacity=1)
    assert m.grown(1) is None
    assert m.grown(2) == 2  # a node joined
    assert m.change(2, 300, GREW) is not None
    assert m.grown(2) is None  # nothing new since
    assert m.grown(8) == 3  # never above MAX
    assert m.change(3, 400, GREW) is not None
    assert m.grown(9) is None


def test_a_node_that_leaves_and_returns_counts_as_new_room() -> None:
    m = Membership.start(fewest=1, most=2, wanted=2, capacity=2)
    assert m.change(m.after_loss(num_lost=1, restart=True, capacity=1, step=9), 9, LOST)
    assert m.size == 1
    assert m.grown(1) is None
    assert m.grown(2) == 2


def test_no_change_records_nothing() -> None:
    m = Membership.start(fewest=1, most=2, wanted=2, capacity=2)
    assert m.change(2, 3, GREW) is None


def test_an_uneven_split_is_a_change_of_its_own_and_a_resize_resets_it() -> None:
    from dtrain.service.train.membership import STRAGGLER

    m = Membership.start(fewest=1, most=2, wanted=2, capacity=2)
    change = m.change(2, 201, STRAGGLER, [43, 21])
    assert change is not None and (change.before, change.after, change.parts) == (2, 2, [43, 21])
    assert m.change(2, 301, STRAGGLER, [43, 21]) is None  # the same split again: no change
    shrunk = m.change(1, 401, LOST)
    assert shrunk is not None and shrunk.parts == [] and m.parts == []


def test_a_resumed_run_keeps_its_split_only_at_its_size() -> None:
    assert Membership.start(fewest=1, most=2, wanted=2, capacity=2, parts=[43, 21]).parts == [
        43,
        21,
    ]
    assert Membership.start(fewest=1, most=2, wanted=2, capacity=1, parts=[43, 21]).parts == []
