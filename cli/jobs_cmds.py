"""`dtrain submit` and `dtrain jobs list|status|logs|stop|fetch`: training as Ray jobs on a
cluster.

``submit`` carries every ``train`` option (copies of the ``train`` command's own parameters, so
the two cannot drift apart) and forwards the ones the user set, on the command line or in a
``--config`` job file, into the job's entrypoint: ``python -m dtrain.cli.job_entry train ...``
in the uploaded project. The job's command line therefore holds the whole configuration, visible in
``jobs status`` and ``ray job list``.

``submit``'s parameters are deep copies of ``train``'s (cli/train_cmd.py), so the two cannot
drift apart.
"""

from __future__ import annotations

import copy
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from dtrain.cli.group import DtrainGroup
from dtrain.cli.options import (
    JOB_FILE_NAMES_KEY,
    CountRange,
    FiniteFloat,
    UserPath,
    build_config,
    json_option,
)
from dtrain.cli.train_cmd import train
from dtrain.service.errors import first_line
from dtrain.service.train import stopping
from dtrain.service.train.config import MAX_CPUS_PER_WORKER

ADDRESS_HELP = (
    "Ray Jobs API of the cluster (the head's dashboard port), e.g. http://10.0.0.1:8265; a bare "
    "HOST:PORT is the cluster's GCS address. [default: $RAY_API_SERVER_ADDRESS, $RAY_ADDRESS, "
    "else http://127.0.0.1:8265]"
)
# `python` is the one on the PATH of the node's Ray (submit --python names another); job_entry
# checks it can run dtrain before running `dtrain train`.
ENTRYPOINT = ("python", "-m", "dtrain.cli.job_entry", "train")
# The job joins its cluster through the RAY_ADDRESS the Jobs API sets, so train's --address is
# not forwarded; the job always prints its summary as JSON (the last line of its logs), so
# submit's own --json is about submit's output.
NOT_FORWARDED = frozenset({"address", "as_json"})
FORWARDED_SOURCES = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.DEFAULT_MAP)
# Without --run-dir a job writes under the head's $DTRAIN_RUNS_DIR (default ~/dtrain-runs), not
# under its working directory, which Ray deletes when no job uses it any more.
RUNS_DIR = "${DTRAIN_RUNS_DIR:-$HOME/dtrain-runs}"
# Exit statuses of `submit --wait` and `jobs logs --follow`; 2 stays click's usage error.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
# `jobs stop` waits at most a day: a finite bound, so inf is a usage error, not a hang.
MAX_STOP_TIMEOUT_SECONDS = 24 * 3600.0


def exit_code(status: str) -> int:
    return EXIT_CODES.get(status, 1)


def option_words(param: click.Option, value: Any) -> list[str]:
    """The command-line words that give ``param`` the (already converted) ``value``."""
    if param.is_flag:
        if value:
            return [param.opts[0]]
        return [param.secondary_opts[0]] if param.secondary_opts else []
    if value is None:
        return []
    if isinstance(param.type, CountRange) and isinstance(value, tuple):
        return [param.opts[0], ":".join(map(str, value))]  # --num-workers MIN:MAX
    if isinstance(value, tuple | list):
        # --hidden-sizes comes back as a tuple of ints; () is spelled "none".
        return [param.opts[0], ",".join(map(str, value)) if value else "none"]
    return [param.opts[0], str(value)]


def build_entrypoint(
    ctx: click.Context,
    forwarded: set[str],
    submission_id: str,
    extra: tuple[str, ...] = (),
    python: str = "python",
) -> str:
    """``python -m dtrain.cli.job_entry train`` with the options the user set, quoted for the
    shell; ``python`` is the interpreter the node runs it with.

    ``forwarded`` names the ``train`` options among ``ctx``'s; ``extra`` (the words after
    ``--``) follow verbatim, unchecked here: the job says what it does not accept.
    """
    words: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name not in forwarded:
            continue
        if ctx.get_parameter_source(param.name) in FORWARDED_SOURCES:
            words += option_words(param, ctx.params[param.name])
    # The summary as JSON is always asked for once, whether or not the words after -- ask too.
    json_flag = [] if "--json" in extra else ["--json"]
    command = [python, *ENTRYPOINT[1:]]
    line = " ".join(shlex.quote(w) for w in [*command, *words, *extra, *json_flag])
    if ctx.params.get("run_dir") is None:
        # Left unquoted on purpose: the head's shell expands it (the id is [a-z0-9-] only).
        line += f' --run-dir "{RUNS_DIR}/{submission_id}"'
    return line


def _job_file_callback(
    load: Callable[[click.Context, click.Parameter, Any], Any], names: set[str]
) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """``train``'s job-file loader, held to ``train``'s options (not submit's own)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        ctx.meta[JOB_FILE_NAMES_KEY] = names
        result = load(ctx, param, value)
        extra = sorted(set(ctx.default_map or {}) - names)
        if extra:
            name = extra[0].replace("_", "-")
            raise click.BadParameter(
                f"{value}: unknown option {name!r} (a job file holds `dtrain train` options)",
                ctx,
                param,
            )
        return result

    return callback


# submit carries copies of train's own parameters: one definition, so the two cannot drift;
# build_config checks them here, so a bad combination is a usage error before any upload.
_forwarded = [copy.deepcopy(p) for p in train.params if p.name not in NOT_FORWARDED]
# --config is eager and not exposed: its values arrive as the other options' defaults.
FORWARDED_NAMES = {p.name for p in _forwarded if p.name and p.name != "config"}
for param in _forwarded:
    if param.name == "config" and param.callback is not None:
        param.callback = _job_file_callback(param.callback, FORWARDED_NAMES)
    if param.name == "run_dir" and isinstance(param, click.Option):
        # train's default (runs/<time>-<id> under the working directory) is not a job's.
        param.help = (
            "Where the checkpoint, history and summary go, on the node the job's driver runs "
            "on (the head unless --entrypoint-num-cpus places it elsewhere). "
            "[default: $DTRAIN_RUNS_DIR/<job id> there, ~/dtrain-runs/<job id> if unset]"
        )


@click.command("submit", epilog="Words after -- go to `dtrain train` in the job unchanged.")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the job's logs until it ends, then exit 0 if it succeeded, 1 if it failed, "
    "3 if it was stopped.",
)
@click.option(
    "--entrypoint-num-cpus",
    type=FiniteFloat(min=0, max=MAX_CPUS_PER_WORKER),
    default=None,
    help="CPUs reserved for the job's driver (dtrain train itself) on the cluster. "
    "[default: none reserved]",
)
@click.option(
    "--python",
    "python",
    default="python",
    show_default=True,
    help="The interpreter that runs the job on the cluster: a path on the node (the venv Ray "
    "runs from, say) when the first `python` on its Ray's PATH lacks dtrain's dependencies.",
)
@json_option("the job id (and with --wait how it ended)")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def submit(
    ctx: click.Context,
    /,
    address: str | None,
    wait: bool,
    entrypoint_num_cpus: float | None,
    python: str,
    as_json: bool,
    train_args: tuple[str, ...],
    **opts: Any,
) -> None:
    """Run `dtrain train` as a job on a Ray cluster, with the project as its working dir.

    Takes every `dtrain train` option; the job gets those you set (here or in --config).
    Prints the job id; --wait follows the logs and exits with the job's outcome.
    """
    from dtrain.service.jobs.client import JobsClient, new_submission_id
    from dtrain.service.jobs.staging import stage_working_dir

    try:
        build_config(opts)
    except click.UsageError as e:
        e.ctx = ctx  # so that click names `dtrain submit`, not `dtrain train`, in the usage
        raise
    client = JobsClient(address)
    job_id = new_submission_id()
    entrypoint = build_entrypoint(ctx, FORWARDED_NAMES, job_id, train_args, python)
    with tempfile.TemporaryDirectory(prefix="dtrain-job-") as tmp:
        client.submit(
            entrypoint=entrypoint,
            working_dir=stage_working_dir(Path(tmp)),
            submission_id=job_id,
            entrypoint_num_cpus=entrypoint_num_cpus,
        )
    where = {"job_id": job_id, "address": client.url, "entrypoint": entrypoint}
    if as_json and not wait:
        click.echo(json.dumps(where))
    elif not as_json:
        click.echo(job_id)
        click.echo(f"dtrain: submitted to {client.url}: {entrypoint}", err=True)
    if not wait:
        if not as_json:
            click.echo(f"dtrain: follow it with `dtrain jobs logs {job_id} --follow`", err=True)
        return
    record = _follow(client, job_id, quiet=as_json)
    if as_json:
        click.echo(json.dumps({**where, **record.to_dict()}))
    sys.exit(exit_code(record.status))


submit.params.extend(_forwarded)


def _follow(client: Any, job_id: str, quiet: bool = False) -> Any:
    """Print the job's logs as they come (to stderr when ``quiet``); its final record.

    A job that did not succeed ends with one line saying so, with the last error line of its
    logs, so the cause is on screen even when the logs were long.
    """
    tail: list[str] = []

    def write(text: str) -> None:
        tail[:] = (tail + text.splitlines())[-200:]
        click.echo(text, nl=False, err=quiet)

    try:
        record = client.follow(job_id, write)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (cli/group.py takes both)
        click.echo(
            f"\ndtrain: stopped following {job_id} ({stopping.signal_name(e)}); it keeps "
            f"running (`dtrain jobs stop {job_id}` ends it)",
            err=True,
        )
        sys.exit(stopping.exit_code(e))
    if record.status == "SUCCEEDED":
        click.echo(f"dtrain: job {job_id} succeeded", err=True)
    else:
        cause = next((line for line in reversed(tail) if line.startswith("Error: ")), "")
        reason = cause.removeprefix("Error: ") or first_line(record.message or "") or record.status
        click.echo(f"dtrain: error: job {job_id} {record.status}: {reason}", err=True)
    return record


# --- dtrain jobs ------------------------------------------------------------------------------


@click.group("jobs", cls=DtrainGroup)
def jobs() -> None:
    """List, inspect, follow and stop jobs on a Ray cluster (e.g. those `dtrain submit` ran)."""


def _common(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = json_option("the result")(fn)
    return click.option("--address", default=None, help=ADDRESS_HELP)(fn)


@jobs.command("list")
@_common
def list_cmd(address: str | None, as_json: bool) -> None:
    """Jobs submitted to the cluster, oldest first, with each dtrain job's run dir and test
    accuracy (read from its logs)."""
    from dtrain.service.jobs.client import JobsClient
    from dtrain.service.jobs.format import format_table

    records = JobsClient(address).list()
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in records]))
    else:
        click.echo(format_table(records))


@jobs.command("status")
@click.argument("job_id")
@_common
def status_cmd(job_id: str, address: str | None, as_json: bool) -> None:
    """One job's status, times, entrypoint, run dir, test accuracy and message (exit 0
    whatever the status)."""
    from dtrain.service.jobs.client import JobsClient
    from dtrain.service.jobs.format import format_record

    record = JobsClient(address).get(job_id, results=True)
    click.echo(json.dumps(record.to_dict()) if as_json else format_record(record))


@jobs.command("logs")
@click.argument("job_id")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing until the job ends, then exit with its outcome (0, 1 failed, 3 stopped).",
)
def logs_cmd(job_id: str, address: str | None, follow: bool) -> None:
    """A job's output (its driver's stdout and stderr)."""
    from dtrain.service.jobs.client import JobsClient

    client = JobsClient(address)
    if not follow:
        click.echo(client.logs(job_id), nl=False)
        return
    sys.exit(exit_code(_follow(client, job_id).status))


@jobs.command("stop")
@click.argument("job_id")
@_common
@click.option(
    "--timeout",
    type=FiniteFloat(min=0, min_open=True, max=MAX_STOP_TIMEOUT_SECONDS),
    default=30.0,
    show_default=True,
    help="Seconds to wait for the job to end before giving up with an error.",
)
def stop_cmd(job_id: str, address: str | None, as_json: bool, timeout: float) -> None:
    """Stop a running or pending job and wait until it has ended."""
    from dtrain.service.jobs.client import JobsClient

    record, what = JobsClient(address).stop(job_id, timeout=timeout)
    if as_json:
        click.echo(json.dumps({**record.to_dict(), "outcome": what}))
    else:
        click.echo(f"{job_id}: {what}")


@jobs.command("fetch")
@click.argument("job_id")
@click.option("--address", default=None, help=ADDRESS_HELP)
@click.option(
    "--out",
    type=UserPath(file_okay=False, path_type=Path),
    default=None,
    help="Directory to create for the run (it must not exist). [default: ./JOB_ID]",
)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Bring the step checkpoints (checkpoints/) too, not only the final checkpoint, "
    "config, history and summary.",
)
@click.option(
    "--python",
    default="python",
    show_default=True,
    help="The interpreter (with Ray) that runs the short helper job on the cluster.",
)
def fetch_cmd(
    job_id: str, address: str | None, out: Path | None, everything: bool, python: str
) -> None:
    """Copy a job's run directory (checkpoint, config, history, summary) from the cluster.

    A short helper job packs it on the node the job's driver ran on and prints it into its
    logs, which this reads back through the Jobs API (Ray's Jobs API cannot download files).
    """
    from dtrain.service.jobs.client import JobsClient
    from dtrain.service.jobs.fetch import check_dest, fetch_run

    dest = out or Path(job_id)
    check_dest(dest)  # before JobsClient, which reaches the cluster
    remote, names = fetch_run(
        JobsClient(address), job_id, dest, python=python, everything=everything
    )
    click.echo(str(dest))
    click.echo(f"dtrain: {len(names)} files of {remote} copied into {dest}", err=True)
