"""The simulator on a real local Ray: one server and 1 or 3 shards end with the same weights."""

from __future__ import annotations

import pytest

from dtrain.workers.model import ModelSpec

SPEC = ModelSpec(input_size=30, hidden_sizes=(17,), num_classes=10)  # 707 params: uneven slices


@pytest.mark.usefixtures("ray_local")
def test_simulation_on_ray_ends_with_the_same_weights_for_every_layout() -> None:
    """Fixed fake gradients: one server and 1 or 3 Ray shards must end bit for bit alike."""
    from dtrain.service.perf.simulate import format_simulation, run_simulation

    report = run_simulation(
        spec=SPEC,
        worker_counts=(1, 2),
        servers=(("ps", 1), ("sharded", 1), ("sharded", 3)),
        steps=3,
        warmup_steps=1,
    )
    assert [(s.num_workers, s.server, s.num_shards) for s in report.sims] == [
        (m, kind, k) for m in (1, 2) for kind, k in (("ps", 1), ("sharded", 1), ("sharded", 3))
    ]
    for m in (1, 2):
        digests = {s.weights_sha256 for s in report.sims if s.num_workers == m}
        assert len(digests) == 1, f"{m} workers: the layouts disagree"
    for s in report.sims:
        assert s.steps == 3 and s.step_seconds > 0 and s.updates_per_second > 0
        assert s.gradient_bytes_per_step == s.num_workers * SPEC.num_params * 4
    assert [c.num_workers for c in report.capacity] == [1, 2]
    assert all(c.aggregate_seconds > 0 for c in report.capacity)
    assert "sharded" in format_simulation(report)
