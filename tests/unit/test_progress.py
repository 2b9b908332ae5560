"""What `dtrain train` prints: a live bar on a terminal, plain lines in a log, none if --quiet."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import pty
import select
import struct
import termios
import time
from pathlib import Path

from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.service.observe.observers import Observer
from dtrain.service.observe.progress import ConsoleProgress, ProgressConfig
from dtrain.service.observe.stats import EpochStats, JobInfo, RunSummary, StepStats

INFO = JobInfo(
    version="0.1.0",
    run_dir="/tmp/r",
    num_workers=2,
    batch_size=100,
    optimizer="nesterov",
    learning_rate=0.1,
    momentum=0.9,
    epochs=2,
    steps_per_epoch=4,
    hidden_sizes=(512,),
    num_params=407050,
    num_train_samples=400,
    num_test_samples=100,
)


def step(n: int, loss: float = 1.0, accuracy: float = 0.5) -> StepStats:
    return StepStats(
        epoch=(n - 1) // 4 + 1,
        step=n,
        samples=100,
        loss=loss,
        accuracy=accuracy,
        learning_rate=0.1,
        grad_norm=1.0,
        update_norm=0.1,
        step_seconds=0.01,
    )


def epoch(n: int) -> EpochStats:
    return EpochStats(
        epoch=n,
        steps=4 * n,
        train_loss=0.25,
        train_accuracy=0.75,
        test_loss=0.2,
        test_accuracy=0.8,
        seconds=2.0,
        samples_per_second=200.0,
    )


def run(progress: Observer, epochs: int = 2, pause: float = 0.0) -> None:
    progress.on_start(INFO)
    for n in range(1, 4 * epochs + 1):
        progress.on_step(step(n, loss=1.0 if n % 2 else 3.0, accuracy=0.5))
        time.sleep(pause)
        if n % 4 == 0:
            progress.on_epoch(epoch(n // 4))


def test_a_log_gets_one_line_per_epoch_and_no_carriage_return() -> None:
    out = io.StringIO()
    run(ConsoleProgress(out, interval=60))
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].startswith("dtrain: 2 workers, batch 100, 2 epochs x 4 steps")
    assert lines[1:] == [
        "epoch 1/2  loss 0.2500 acc 0.7500  test loss 0.2000 acc 0.8000  200 samples/s  2.0s",
        "epoch 2/2  loss 0.2500 acc 0.7500  test loss 0.2000 acc 0.8000  200 samples/s  2.0s",
    ]


def test_a_long_epoch_in_a_log_shows_progress_lines_with_running_loss_and_eta() -> None:
    out = io.StringIO()
    run(ConsoleProgress(out, interval=0.05), epochs=1, pause=0.06)
    lines = out.getvalue().splitlines()
    inside = [line for line in lines if " step " in line]
    # The interval counts from the epoch's first step; its last step does not repeat what the
    # epoch line says.
    assert [line.split("  ")[1] for line in inside] == ["step 2/4 (50%)", "step 3/4 (75%)"]
    # The running loss is the epoch's sample-weighted mean so far: (1 + 3) / 2 after step 2.
    assert "loss 2.0000 acc 0.5000" in inside[0] and "loss 1.6667 acc 0.5000" in inside[1]
    assert all(" ETA 00:0" in line for line in inside), inside
    assert lines[-1].startswith("epoch 1/2  loss 0.2500")


def test_a_terminal_gets_a_live_bar_that_the_epoch_line_replaces() -> None:
    """On a real pseudo-terminal 100 columns wide, as an interactive shell's stderr is."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with open(terminal, "w", encoding="utf-8", closefd=True) as stream:
        progress = ConsoleProgress(stream)
        assert progress.live
        run(progress, pause=0.21)  # past tqdm's 0.2 s between redraws
    chunks = []
    while select.select([controller], [], [], 0.5)[0]:
        try:
            data = os.read(controller, 65536)
        except OSError:  # the terminal side is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    text = b"".join(chunks).decode()
    assert "\r" in text  # the bar redraws in place
    bar = [part for part in text.split("\r") if part.startswith("epoch 1/2:")]
    # The epoch's running loss: (1 + 3 + 1 + 3) / 4 after its 4 steps.
    assert any("4/4" in part and "loss 2.0000, acc 0.5000" in part for part in bar), bar
    assert any("samples/s" in part and "<" in part for part in bar), bar  # rate and ETA
    # The bar is cleared (leave=False), and the epoch's own line is what stays.
    assert "epoch 1/2  loss 0.2500 acc 0.7500  test loss 0.2000 acc 0.8000" in text


def test_a_resumed_epoch_starts_its_bar_where_the_checkpoint_was() -> None:
    out = io.StringIO()
    p = ConsoleProgress(out, interval=0.0001, live=False)
    p.on_start(INFO)
    time.sleep(0.001)
    p.on_step(step(2))  # the run resumed after step 1 of epoch 1
    time.sleep(0.001)
    p.on_step(step(3))
    p.on_step(step(4))
    p.on_epoch(epoch(1))
    lines = out.getvalue().splitlines()
    assert lines[1].split("  ")[1] == "step 3/4 (75%)"
    assert lines[2].startswith("epoch 1/2  loss")


def test_the_summary_line_and_plural() -> None:
    out = io.StringIO()
    p = ConsoleProgress(out)
    p.on_start(dataclasses.replace(INFO, epochs=1))
    summary = RunSummary(
        test_accuracy=0.9,
        test_loss=0.3,
        train_accuracy=0.9,
        train_loss=0.3,
        epochs=1,
        steps=1,
        num_workers=2,
        batch_size=100,
        learning_rate=0.1,
        optimizer="nesterov",
        wall_seconds=3.0,
        train_seconds=1.0,
        samples_per_second=100.0,
        checkpoint="/tmp/r/checkpoint.npz",
        run_dir="/tmp/r",
    )
    p.on_end(summary, None)
    first, last = out.getvalue().splitlines()
    assert "1 epoch x 4 steps" in first
    assert last.startswith("done: test accuracy 0.9000 (loss 0.3000), 1 step in 1.0s")
    # A failed run prints no summary: the error is the CLI's one line.
    out2 = io.StringIO()
    ConsoleProgress(out2).on_end(None, RuntimeError("x"))
    assert out2.getvalue() == ""


def test_quiet_prints_nothing() -> None:
    quiet = ProgressConfig(quiet=True).build(io.StringIO())
    assert type(quiet) is Observer
    out = io.StringIO()
    loud = ProgressConfig(progress_interval=5).build(out)
    assert isinstance(loud, ConsoleProgress) and loud.interval == 5


def test_the_options_come_from_the_config(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["train", "--help"])
    assert r.exit_code == 0
    assert "--quiet / --no-quiet" in r.output and "--progress-interval" in r.output
    bad = CliRunner().invoke(
        cli, ["train", "--run-dir", str(tmp_path / "r"), "--progress-interval", "0"]
    )
    assert bad.exit_code == 2 and "--progress-interval" in bad.output
    assert not (tmp_path / "r").exists()


def test_max_steps_shows_in_the_header_and_the_epochs_length() -> None:
    out = io.StringIO()
    p = ConsoleProgress(out, interval=0.0001)
    p.on_start(dataclasses.replace(INFO, total_steps=3))
    for n in (1, 2):
        time.sleep(0.001)
        p.on_step(step(n))
    first, *lines = out.getvalue().splitlines()
    assert "3 steps (--max-steps) of 2 epochs x 4 steps" in first
    # The epoch stops after 3 of its 4 steps: the progress says so (a loaded machine may also
    # print step 1's line, 0.1 ms being the interval).
    assert lines and lines[-1].split("  ")[1] == "step 2/3 (67%)", lines
