"""`dtrain train`: build the config from the options, train, print the summary."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from dtrain.cli.jsonout import stdout_to_stderr
from dtrain.cli.options import (
    METRICS_OPTIONS,
    PROGRESS_OPTIONS,
    TRACKER_OPTIONS,
    TRAIN_OPTIONS,
    UserPath,
    build_config,
    config_file_option,
    json_option,
    metrics_config,
    progress_config,
    tracker_config,
    with_options,
)
from dtrain.service.errors import DtrainError
from dtrain.service.paths import read_small_text


@click.command()
@config_file_option
@with_options(TRAIN_OPTIONS)
@click.option(
    "--resume",
    "resume_dir",
    type=UserPath(file_okay=False, path_type=Path),
    default=None,
    help="Continue the run in this run directory from its newest whole checkpoint.",
)
# Like --resume, how this invocation treats the run directory, not part of the run's config:
# a config.json or job file that said "overwrite" would make every later --resume conflict.
@click.option(
    "--overwrite",
    is_flag=True,
    help="If --run-dir already holds a run, move it aside to RUN_DIR.old-<time> (nothing is "
    "deleted) and start afresh; without it such a directory is refused.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join, e.g. 10.0.0.1:6379. [default: $RAY_ADDRESS, else a new local Ray]",
)
@with_options(METRICS_OPTIONS)
@with_options(PROGRESS_OPTIONS)
@with_options(TRACKER_OPTIONS)
@json_option("the summary")
@click.pass_context
def train(
    ctx: click.Context, /, as_json: bool, resume_dir: Path | None, overwrite: bool, **opts: Any
) -> None:
    """Train the network on a local Ray or a cluster, then save a checkpoint."""
    from dtrain.service.observe.observers import HistoryWriter
    from dtrain.service.train import stopping
    from dtrain.service.train.trainer import Trainer

    check_run_dir_options(ctx, resume_dir, overwrite)
    if resume_dir is not None:
        given = {name: value for name, value in opts.items() if chosen(ctx, name)}
        config = build_config(given, base=saved_config(resume_dir), run_dir=resume_dir)
    else:
        config = build_config(opts)
    observers: list[Any] = [
        HistoryWriter(config.run_dir / "history.jsonl"),
        progress_config(opts).build(),
        # Before Ray starts: a tracker's missing package is an error that costs no waiting.
        *tracker_config(opts).build(run_id=config.run_dir.name),
    ]
    metrics = metrics_config(opts)
    if metrics.enabled:
        # Before Ray starts: a port in use is an error that costs the user no waiting.
        exporter = metrics.build(run_id=config.run_dir.name)
        if exporter.port is not None:
            click.echo(
                f"dtrain: metrics at http://{exporter.host}:{exporter.port}/metrics", err=True
            )
        observers.append(exporter)
    try:
        # With --json, stdout carries the summary alone: Ray's (raylet) lines after a worker
        # kill would otherwise come first and the output would not parse.
        with stdout_to_stderr(as_json):
            summary = Trainer(
                config,
                observers,
                address=opts["address"],
                resume=resume_dir is not None,
                overwrite=overwrite,
            ).run()
    except KeyboardInterrupt as e:
        saved = list((config.run_dir / "checkpoints").glob("step-*.npz"))
        hint = f"; resume with: dtrain train --resume {shlex.quote(str(config.run_dir))}"
        step = getattr(e, "step", None)
        how = stopping.signal_name(e)
        if step is not None:
            how += f": stopped after step {step}, which is checkpointed"
        click.echo(f"dtrain: interrupted{hint if saved else ''} ({how})", err=True)
        sys.exit(stopping.exit_code(e))
    if as_json:
        out = summary.to_dict()
        out.pop("history")
        click.echo(json.dumps(out))


def check_run_dir_options(ctx: click.Context, resume_dir: Path | None, overwrite: bool) -> None:
    """--resume names the run directory itself: a different --run-dir, or --overwrite, conflicts."""
    if resume_dir is None:
        return
    if overwrite:
        raise click.UsageError(
            "--overwrite starts a new run, --resume continues one: give one of them", ctx
        )
    if not chosen(ctx, "run_dir"):
        return
    run_dir = ctx.params.get("run_dir")
    if run_dir is not None and Path(run_dir).resolve() != resume_dir.resolve():
        where = "--run-dir" if from_command_line(ctx, "run_dir") else "the job file's run-dir"
        raise click.UsageError(
            f"--resume {resume_dir} continues the run in {resume_dir}, but {where} names "
            f"{run_dir}: drop it (a resumed run stays in its directory)",
            ctx,
        )


def from_command_line(ctx: click.Context, name: str) -> bool:
    return ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE


def chosen(ctx: click.Context, name: str) -> bool:
    """The user gave option ``name``: on the command line, or in the --config job file (click's
    default_map). A job file's values count on --resume as the command line's do: they are
    checked against the run's, never dropped in silence."""
    return from_command_line(ctx, name) or (
        ctx.get_parameter_source(name) == click.core.ParameterSource.DEFAULT_MAP
    )


def saved_config(run_dir: Path) -> dict[str, Any]:
    from dtrain.service.train.config import TrainConfig

    path = run_dir / "config.json"
    try:
        saved = json.loads(read_small_text(path))
    except FileNotFoundError:
        raise DtrainError(f"{run_dir} is not a dtrain run directory (no config.json)") from None
    except OSError as e:
        raise DtrainError(f"{path} is unreadable: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DtrainError(f"{path} is unreadable: {' '.join(str(e).split())}") from None
    # Checked alone first, so a damaged file is named as the culprit, not the options.
    try:
        TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise DtrainError(f"{path}: {' '.join(str(e).split())}") from None
    return dict(saved)
