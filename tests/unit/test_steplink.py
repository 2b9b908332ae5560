"""The per-step pipes between the server and the workers: order, content, bounded waits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dtrain.workers import steplink
from dtrain.workers.core import GradStats
from dtrain.workers.steplink import PeerTimeout, ServerLink, WorkerLink


def links(tmp_path: Path, num_workers: int, timeout: float = 5.0) -> tuple[ServerLink, list]:
    steplink.make_fifos(tmp_path, num_workers)
    server = ServerLink(tmp_path, num_workers, timeout)
    return server, [WorkerLink(tmp_path, r, timeout) for r in range(num_workers)]


def test_records_arrive_in_rank_order_with_their_sums(tmp_path: Path) -> None:
    server, workers = links(tmp_path, 3)
    for rank in (2, 0, 1):  # arrival order does not matter: the server reads by rank
        workers[rank].send(7, GradStats(rank, 1.5 * rank, 10 + rank, 64, 0.25))
    got = server.receive(7)
    assert got == [GradStats(r, 1.5 * r, 10 + r, 64, 0.25) for r in range(3)]


def test_a_record_for_the_wrong_step_is_refused(tmp_path: Path) -> None:
    server, workers = links(tmp_path, 1)
    workers[0].send(3, GradStats(0, 0.0, 0, 1, 0.0))
    with pytest.raises(RuntimeError, match="sent step 3, expected step 4"):
        server.receive(4)


def test_a_worker_learns_the_newest_update_and_skips_older_tokens(tmp_path: Path) -> None:
    server, (worker,) = links(tmp_path, 1)
    worker.start(0)
    worker.wait_update(0)  # already there: returns without reading
    for step in (1, 2, 3):
        server.publish(step)
    worker.wait_update(2)
    assert worker.known == 3  # every token that was there, newest kept


def test_a_silent_peer_times_out_instead_of_hanging(tmp_path: Path) -> None:
    server, workers = links(tmp_path, 2, timeout=0.2)
    workers[0].send(1, GradStats(0, 0.0, 0, 1, 0.0))
    start = time.monotonic()
    with pytest.raises(PeerTimeout, match=r"no gradient from worker 1 for step 1 within 0\.2s"):
        server.receive(1)
    with pytest.raises(PeerTimeout, match=r"worker 0 heard of no update 5 within 0\.2s"):
        workers[0].wait_update(5)
    assert time.monotonic() - start < 2.0
