"""Trackers written for real and read back with the trackers' own readers."""

from __future__ import annotations

import dataclasses
import socket
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dtrain.cli.main import cli
from dtrain.service.errors import DtrainError
from dtrain.service.observe.background import Background
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats
from dtrain.service.observe.trackers import TrackerConfig

INFO = JobInfo(
    version="0.1.0",
    run_dir="/tmp/r",
    num_workers=2,
    batch_size=100,
    optimizer="nesterov",
    learning_rate=0.1,
    momentum=0.9,
    epochs=2,
    steps_per_epoch=3,
    hidden_sizes=(512,),
    num_params=407050,
    num_train_samples=300,
    num_test_samples=100,
)


def step(n: int) -> StepStats:
    return StepStats(
        epoch=(n - 1) // 3 + 1,
        step=n,
        samples=100,
        loss=1.0 / n,
        accuracy=0.1 * n,
        learning_rate=0.1,
        grad_norm=2.0 * n,
        update_norm=0.5,
        step_seconds=0.02,
        worker_compute_seconds=(0.004, 0.01),
        aggregate_seconds=0.001,
        update_seconds=0.002,
    )


def epoch(n: int, tested: bool = True) -> EpochStats:
    return EpochStats(
        epoch=n,
        steps=3 * n,
        train_loss=0.5 / n,
        train_accuracy=0.8,
        test_loss=0.4 / n if tested else None,
        test_accuracy=0.85 if tested else None,
        seconds=0.06,
        samples_per_second=5000.0,
    )


def test_tensorboard_events_read_back_with_tensorboards_reader(tmp_path: Path) -> None:
    (writer,) = TrackerConfig(tensorboard=tmp_path / "tb").build(run_id="run-1")
    writer.on_start(INFO)
    for n in range(1, 7):
        writer.on_step(step(n))
        if n % 3 == 0:
            writer.on_epoch(epoch(n // 3, tested=n == 6))
    writer.on_end(None, None)

    events = EventAccumulator(str(tmp_path / "tb" / "run-1"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in (
        "train/loss",
        "train/accuracy",
        "optimizer/learning_rate",
        "optimizer/gradient_norm",
        "optimizer/update_norm",
        "step_seconds/total",
        "step_seconds/compute",
        "step_seconds/aggregate",
        "step_seconds/update",
        "step_seconds/wait",
    ):
        assert [e.step for e in events.Scalars(tag)] == [1, 2, 3, 4, 5, 6], tag

    def values(tag: str) -> list[float]:
        return [e.value for e in events.Scalars(tag)]

    assert values("train/loss") == pytest.approx([1.0 / n for n in range(1, 7)])
    assert values("optimizer/gradient_norm") == pytest.approx([2.0 * n for n in range(1, 7)])
    # The slowest worker is the compute phase; wait is the rest of the step.
    assert values("step_seconds/compute") == pytest.approx([0.01] * 6)
    assert values("step_seconds/wait") == pytest.approx([0.02 - 0.01 - 0.001 - 0.002] * 6)
    # Per epoch, keyed by the epoch; the test set only where it was evaluated.
    assert [(e.step, e.value) for e in events.Scalars("epoch/train_loss")] == [
        (1, pytest.approx(0.5)),
        (2, pytest.approx(0.25)),
    ]
    assert [(e.step, e.value) for e in events.Scalars("epoch/test_accuracy")] == [
        (2, pytest.approx(0.85))
    ]
    assert "epoch/test_loss" in scalars and "epoch/samples_per_second" in scalars
    assert "config" in "".join(events.Tags()["tensors"])


def test_no_option_no_tracker() -> None:
    assert TrackerConfig().build(run_id="r") == []


def test_a_missing_tracker_package_is_one_line_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # None in sys.modules makes `import tensorboardX` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(DtrainError, match=r"pip install 'dtrain\[tensorboard\]'"):
        TrackerConfig(tensorboard=tmp_path / "tb").build(run_id="r")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["train", "--run-dir", str(run_dir), "--tensorboard", str(tmp_path / "tb")],
    )
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: --tensorboard needs the tensorboardX package: pip install 'dtrain[tensorboard]'"
    ]
    assert not run_dir.exists() and not (tmp_path / "tb").exists()


def test_phase_seconds_add_up_to_the_step() -> None:
    phases = step(1).phase_seconds()
    assert list(phases) == ["compute", "aggregate", "update", "wait"]
    assert sum(phases.values()) == pytest.approx(0.02)
    slow = StepStats(**{**step(1).to_dict(), "step_seconds": 0.001})
    assert slow.phase_seconds()["wait"] == 0.0  # pipelined steps overlap: never negative


# --- MLflow -------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The variables MlflowRun sets if unset, set here so that the test leaves none behind."""
    for name, value in (
        ("MLFLOW_ALLOW_FILE_STORE", "true"),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0"),
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10"),
    ):
        monkeypatch.setenv(name, value)


def summary_of(run_dir: Path) -> RunSummary:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoint.npz").write_bytes(b"weights")
    (run_dir / "summary.json").write_text('{"test_accuracy": 0.9}')
    return RunSummary(
        test_accuracy=0.9,
        test_loss=0.3,
        train_accuracy=0.9,
        train_loss=0.3,
        epochs=2,
        steps=6,
        num_workers=2,
        batch_size=100,
        learning_rate=0.1,
        optimizer="nesterov",
        wall_seconds=2.0,
        train_seconds=1.0,
        samples_per_second=600.0,
        checkpoint=str(run_dir / "checkpoint.npz"),
        run_dir=str(run_dir),
    )


@pytest.mark.usefixtures("mlflow_env")
def test_an_mlflow_run_read_back_with_mlflows_client(tmp_path: Path) -> None:
    store = str(tmp_path / "mlruns")
    for name, ok in (("run-ok", True), ("run-failed", False)):
        (tracker,) = TrackerConfig(mlflow=store).build(run_id=name)
        tracker.on_start(INFO)
        for n in range(1, 7):
            tracker.on_step(step(n))
            if n % 3 == 0:
                tracker.on_epoch(epoch(n // 3))
        if ok:
            tracker.on_end(summary_of(tmp_path / name), None)
        else:
            tracker.on_end(None, DtrainError("training diverged at step 7"))

    client = MlflowClient(tracking_uri=store)
    (experiment,) = client.search_experiments(filter_string="name = 'dtrain'")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"run-ok", "run-failed"}
    run = runs["run-ok"]
    assert run.info.status == "FINISHED" and runs["run-failed"].info.status == "FAILED"
    assert run.data.params["optimizer"] == "nesterov" and run.data.params["batch_size"] == "100"
    assert run.data.tags["dtrain.run_id"] == "run-ok"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (n, pytest.approx(1.0 / n)) for n in range(1, 7)
    ]
    waits = client.get_metric_history(run.info.run_id, "step_seconds/wait")
    assert [m.value for m in waits] == pytest.approx([0.007] * 6)
    tests = client.get_metric_history(run.info.run_id, "epoch/test_accuracy")
    assert sorted(m.step for m in tests) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"checkpoint.npz", "summary.json"}
    assert client.list_artifacts(runs["run-failed"].info.run_id) == []


def test_mlflow_alone_means_a_local_mlruns_store(tmp_path: Path) -> None:
    from dtrain.cli.main import train

    given = ["--run-dir", str(tmp_path / "r"), "--mlflow", "--epochs", "1"]
    params = train.make_context("train", given).params
    assert params["mlflow"] == "mlruns" and params["epochs"] == 1
    params = train.make_context("train", ["--mlflow", "http://127.0.0.1:5000"]).params
    assert params["mlflow"] == "http://127.0.0.1:5000"
    assert train.make_context("train", []).params["mlflow"] is None


@pytest.mark.usefixtures("mlflow_env")
def test_an_unreachable_tracking_server_is_one_line_in_seconds(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nobody listens on once the socket is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    began = time.monotonic()
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(
        cli, ["train", "--run-dir", str(run_dir), "--mlflow", f"http://127.0.0.1:{port}"]
    )
    assert time.monotonic() - began < 30
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: --mlflow http://127.0.0.1:{port}: "), line
    assert not run_dir.exists()


@pytest.mark.usefixtures("mlflow_env")
def test_a_missing_mlflow_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    result = CliRunner().invoke(cli, ["train", "--run-dir", str(tmp_path / "r"), "--mlflow"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: --mlflow needs the mlflow package: pip install 'dtrain[mlflow]'"
    ]


@pytest.mark.usefixtures("mlflow_env")
def test_a_local_mlflow_store_keeps_about_100_steps_an_epoch(tmp_path: Path) -> None:
    store = str(tmp_path / "mlruns")
    (tracker,) = TrackerConfig(mlflow=store).build(run_id="long")
    tracker.on_start(dataclasses.replace(INFO, steps_per_epoch=400, epochs=1))
    for n in range(1, 401):
        tracker.on_step(dataclasses.replace(step(1), step=n))
    tracker.on_end(None, None)
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("dtrain").experiment_id])
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    assert steps == list(range(1, 401, 4))


def test_background_writes_in_order_and_keeps_the_first_error() -> None:
    done: list[int] = []

    def write(n: int) -> None:
        if n == 3:
            raise OSError("disk full")
        done.append(n)

    bg = Background("test")
    for n in range(1, 6):
        bg.submit(write, n)
    error = bg.close()
    assert done == [1, 2] and isinstance(error, OSError)  # nothing after the failure


def test_a_failing_tensorboard_dir_is_one_line_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (writer,) = TrackerConfig(tensorboard=tmp_path / "tb").build(run_id="r")
    writer.on_start(INFO)
    writer._writer.add_scalar = None  # a writer that breaks
    writer.on_step(step(1))  # returns at once: the failure surfaces at the end
    writer.on_end(None, None)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"dtrain: TensorBoard events in {tmp_path / 'tb' / 'r'}: ")
