"""`dtrain report` draws a run's history to a PNG, and says clearly when it cannot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.errors import Diverged
from dtrain.service.observe.observers import HistoryWriter
from dtrain.service.observe.report import (
    PHASE_COLORS,
    PHASE_NOTES,
    phase_label,
    phases,
    read_end,
    read_history,
    smooth,
    title,
)


def write_history(run_dir: Path, steps: int = 40, replayed: tuple[int, ...] = ()) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for step in [*range(1, steps + 1), *replayed]:
        lines.append(
            {
                "kind": "step",
                "epoch": 1 + (step - 1) // 20,
                "step": step,
                "samples": 128,
                "loss": 2.0 / step,
                "accuracy": min(0.99, 0.1 + step / 40),
                "learning_rate": 0.1,
                "grad_norm": 1.0,
                "update_norm": 0.1,
                "step_seconds": 0.01,
                "worker_compute_seconds": [0.004, 0.005],
                "aggregate_seconds": 0.001,
                "update_seconds": 0.002,
            }
        )
        if step % 20 == 0 and step not in replayed:
            lines.append(
                {
                    "kind": "epoch",
                    "epoch": step // 20,
                    "steps": step,
                    "train_loss": 0.3,
                    "train_accuracy": 0.9,
                    "test_loss": 0.2,
                    "test_accuracy": 0.95,
                    "seconds": 0.2,
                    "samples_per_second": 12800.0,
                }
            )
    (run_dir / "history.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_report_writes_a_png(tmp_path: Path) -> None:
    write_history(tmp_path / "run")
    out = tmp_path / "r.png"
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a real picture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.png", "run"]  # no temp file left


def test_a_report_replaces_its_own_picture_and_no_other(tmp_path: Path) -> None:
    """Drawn again, a report replaces the one it drew before; a user's own PNG stays as it is."""
    write_history(tmp_path / "run")
    out = tmp_path / "r.png"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(out)])
        assert result.exit_code == 0, result.output
    import matplotlib.pyplot as plt

    photo = tmp_path / "photo.png"
    plt.imsave(photo, np.zeros((4, 4)))  # a PNG dtrain did not draw
    before = photo.read_bytes()
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "run"), "--out", str(photo)])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {photo} exists and is not a report dtrain drew: give --out a new file"
    )
    assert photo.read_bytes() == before


def test_a_replayed_step_counts_once_and_phases_add_up(tmp_path: Path) -> None:
    write_history(tmp_path / "run", replayed=(15, 16))
    steps, epochs = read_history(tmp_path / "run")
    assert [s["step"] for s in steps] == list(range(1, 41)) and len(epochs) == 2
    parts = phases(steps)
    total = sum(parts.values())
    np.testing.assert_allclose(total, 0.01)
    np.testing.assert_allclose(parts["wait"], 0.01 - 0.005 - 0.001 - 0.002)


def test_smooth_is_a_trailing_mean() -> None:
    np.testing.assert_allclose(smooth(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1, 2, 4, 6])


def test_missing_or_empty_history_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "is not a directory" in r.output
    (tmp_path / "run").mkdir()
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert r.exit_code == 1 and "has no history.jsonl" in r.output
    (tmp_path / "run" / "history.jsonl").write_text("{not json\n")
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "run")])
    assert r.exit_code == 1 and "history.jsonl:1 is not JSON" in r.output


def test_the_title_says_how_the_run_ended(tmp_path: Path) -> None:
    steps = [{"step": n} for n in range(1, 6)]
    summary = {
        "epochs": 1,
        "steps": 1,
        "num_workers": 2,
        "batch_size": 128,
        "test_accuracy": 0.9,
        "samples_per_second": 1000.0,
    }
    done = title(tmp_path / "r1", steps, summary, {"kind": "end", "ok": True, "error": None})
    assert done.startswith("dtrain run r1: 1 epoch, 1 step, 2 workers, batch 128")
    error = "training diverged at step 6 (epoch 1): the loss or gradient is not finite"
    stopped = title(tmp_path / "r1", steps, None, {"kind": "end", "ok": False, "error": error})
    assert stopped == f"dtrain run r1: stopped after step 5\n{error}"
    going = title(tmp_path / "r1", steps, None, None)
    assert going == "dtrain run r1: 5 steps so far, no summary (still running, or killed)"


def test_every_phase_is_explained_in_the_legend() -> None:
    assert set(PHASE_NOTES) == set(PHASE_COLORS)
    assert phase_label("wait", 1.234) == (
        "wait 1.23 ms: the rest: moving weights and gradients, Ray scheduling, the driver"
    )


def test_the_history_records_how_the_run_ended_and_the_report_reads_it(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    write_history(run_dir)
    writer = HistoryWriter(run_dir / "history.jsonl")
    writer._file = (run_dir / "history.jsonl").open("a", encoding="utf-8")
    writer.on_end(None, Diverged("training diverged at step 41 (epoch 3)\nmore", step=41, loss=1.0))
    end = read_end(run_dir)
    assert end == {"kind": "end", "ok": False, "error": "training diverged at step 41 (epoch 3)"}
    # A resumed run appends a later end: the last one counts.
    writer._file = (run_dir / "history.jsonl").open("a", encoding="utf-8")
    writer.on_end(None, KeyboardInterrupt())
    assert read_end(run_dir) == {"kind": "end", "ok": False, "error": "KeyboardInterrupt"}
    # The steps and epochs read as before, and the report draws it.
    steps, epochs = read_history(run_dir)
    assert len(steps) == 40 and len(epochs) == 2
    out = tmp_path / "r.png"
    assert CliRunner().invoke(cli, ["report", str(run_dir), "--out", str(out)]).exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
