"""`dtrain train` on a real local Ray feeds TensorBoard and MLflow through the observer hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dtrain.cli.main import cli


@pytest.mark.usefixtures("ray_local")
def test_a_real_run_is_tracked_in_tensorboard_and_mlflow(
    prepared_mnist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    run_dir = tmp_path / "run"
    store = tmp_path / "mlruns"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data-dir",
            str(prepared_mnist),
            "--run-dir",
            str(run_dir),
            "--max-steps",
            "12",
            "--hidden-sizes",
            "32",
            "--tensorboard",
            str(tmp_path / "tb"),
            "--mlflow",
            str(store),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    events = EventAccumulator(str(tmp_path / "tb" / "run"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 13))
    (test_accuracy,) = events.Scalars("epoch/test_accuracy")
    assert test_accuracy.step == 1
    assert test_accuracy.value == pytest.approx(summary["test_accuracy"], abs=1e-6)

    client = MlflowClient(tracking_uri=str(store))
    (run,) = client.search_runs([client.get_experiment_by_name("dtrain").experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    # The local file store keeps about 100 points an epoch: every 4th step of 469.
    assert sorted(m.step for m in history) == [1, 5, 9]
    tb_loss = {e.step: e.value for e in losses}
    assert {m.step: m.value for m in history} == pytest.approx({n: tb_loss[n] for n in (1, 5, 9)})
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "checkpoint.npz",
        "summary.json",
    }
