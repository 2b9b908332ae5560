"""``dtrain``: a thin click front end. Commands parse options and call into ``service``."""

from __future__ import annotations

import datetime as dt
import json
import secrets
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
import numpy as np
from dtrain.cli.errors import user_errors
from dtrain.service import __version__
from dtrain.service.errors import DtrainError

# Keys a job file may hold: exactly the ``train`` options (dashes or underscores).
JOB_FILE_TABLE = "train"


def load_job_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read a TOML job file into click's default_map, so options given on the command line win."""
    if value is None:
        return None
    path = Path(value)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", ctx, param) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{path} is not valid TOML: {e}", ctx, param) from e
    table = data.get(JOB_FILE_TABLE, data)
    if not isinstance(table, dict):
        raise click.BadParameter(f"{path}: [{JOB_FILE_TABLE}] must be a table", ctx, param)
    known = {p.name for p in ctx.command.params if p.name and p.name != "config"}
    defaults: dict[str, Any] = {}
    for key, val in table.items():
        name = key.replace("-", "_")
        if name not in known:
            raise click.BadParameter(f"{path}: unknown option {key!r}", ctx, param)
        defaults[name] = ",".join(map(str, val)) if isinstance(val, list) else val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def parse_hidden_sizes(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    text = str(value).strip()
    if text in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers", ctx, param
        ) from None
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"every hidden size must be >= 1, got {value!r}", ctx, param)
    return sizes


def default_run_dir() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{secrets.token_hex(2)}"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="dtrain")
def cli() -> None:
    """Distributed batch training on Ray: NumPy workers, a parameter server, momentum SGD."""


@cli.command()
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_job_file,
    help="TOML job file whose keys are these options' names; options on the command line win.",
)
@click.option(
    "--data-dir",
    # A string, not a Path: Path() would fold the "//" of a URI such as s3://bucket/mnist.
    type=click.Path(file_okay=False),
    default=None,
    help="Prepared Arrow dataset: a directory (the embedded MNIST is prepared there if missing) "
    "or a pyarrow.fs URI every node can read, e.g. s3://bucket/mnist or file:///shared/mnist. "
    "[default: $DTRAIN_DATA_DIR or ~/.cache/dtrain/mnist]",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the checkpoint, history and summary go. [default: runs/<time>-<id>]",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Passes over the training set.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Global mini-batch size, split across the workers.",
)
@click.option(
    "--num-workers",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Worker actors computing gradients.",
)
@click.option(
    "--hidden-sizes",
    default="512",
    show_default=True,
    callback=parse_hidden_sizes,
    help="Comma-separated hidden layer widths.",
)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "momentum", "nesterov"]),
    default="nesterov",
    show_default=True,
    help="sgd: w -= lr*g; momentum: classical; nesterov: the chapter's form.",
)
@click.option(
    "--learning-rate",
    "--lr",
    type=float,
    default=0.1,
    show_default=True,
    help="Peak learning rate (must be > 0).",
)
@click.option(
    "--momentum", type=float, default=0.9, show_default=True, help="Momentum factor in [0, 1)."
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["cosine", "constant"]),
    default="cosine",
    show_default=True,
    help="Learning-rate schedule over the run.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for the initial weights and every epoch's shuffle.",
)
@click.option(
    "--cpus-per-worker",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Ray CPUs reserved by each worker actor.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many updates (a quick smoke run).",
)
@click.option(
    "--eval-every-epoch/--no-eval-every-epoch",
    default=True,
    show_default=True,
    help="Evaluate on the test set after every epoch, not only at the end.",
)
@click.option(
    "--step-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=120.0,
    show_default=True,
    help="Seconds a step may take before its actors are declared hung and rebuilt.",
)
@click.option(
    "--staleness",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Asynchronous steps: gradients may use weights up to this many updates old, so workers "
    "compute while the server updates (0: synchronous).",
)
@click.option(
    "--exchange",
    type=click.Choice(["auto", "shared-memory", "object-store"]),
    default="auto",
    show_default=True,
    help="How weights and gradients move per step: shared memory on one node, Ray's object "
    "store on any cluster; auto picks shared memory on a single-node cluster.",
)
@click.option(
    "--data-transport",
    type=click.Choice(["auto", "local", "object-store"]),
    default="auto",
    show_default=True,
    help="How training rows reach the workers: local: each reads --data-dir itself (a path on "
    "its node, or the URI); object-store: the driver ships them through Ray's object store, for "
    "nodes that cannot see its disk; auto: object-store for a path on a multi-node cluster.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "gpu", "auto"]),
    default="cpu",
    show_default=True,
    help="Where workers compute: NumPy on CPUs, CuPy on GPUs (one each), or GPUs where present.",
)
@click.option(
    "--gpu-workers",
    type=click.IntRange(min=0),
    default=None,
    help="With --device gpu: how many workers use a GPU; the rest compute on CPUs. [default: all]",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=200,
    show_default=True,
    help="Steps between checkpoints of the full training state (0: only the final one).",
)
@click.option(
    "--max-restarts",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Actor restarts (per worker, and rebuilds from a checkpoint) before giving up.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Continue the run in this run directory from its newest whole checkpoint.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join, e.g. 10.0.0.1:6379. [default: $RAY_ADDRESS, else a new local Ray]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve Prometheus metrics on this port while training (0 picks a free one and prints "
    "it). [default: no endpoint]",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds to; 0.0.0.0 exposes it beyond this machine.",
)
@click.option(
    "--metrics-grace",
    type=click.FloatRange(min=0),
    default=15.0,
    show_default=True,
    help="Seconds the metrics endpoint stays up after the job ends, so the last values are "
    "scraped (not after Ctrl-C).",
)
@click.option(
    "--pushgateway",
    default=None,
    help="Push the final metrics to this Prometheus Pushgateway (e.g. http://127.0.0.1:9091) "
    "when the job ends.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
@user_errors
def train(ctx: click.Context, as_json: bool, resume_dir: Path | None, **opts: Any) -> None:
    """Train the network on a local Ray or a cluster, then save a checkpoint."""
    from dtrain.service.observe.observers import ConsoleProgress, HistoryWriter
    from dtrain.service.train.trainer import Trainer

    if resume_dir is not None:
        given = {
            name: value
            for name, value in opts.items()
            if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
        }
        config = build_config(given, base=saved_config(resume_dir), run_dir=resume_dir)
    else:
        config = build_config(opts)
    observers: list[Any] = [HistoryWriter(config.run_dir / "history.jsonl"), ConsoleProgress()]
    port, pushgateway = opts["metrics_port"], opts["pushgateway"]
    if port is not None or pushgateway:
        from dtrain.service.observe.metrics import PrometheusMetrics

        metrics = PrometheusMetrics(
            grace_seconds=opts["metrics_grace"] if port is not None else 0.0,
            pushgateway=pushgateway,
        )
        if port is not None:
            # Before Ray starts: a port in use is an error that costs the user no waiting.
            bound = metrics.serve(opts["metrics_host"], port)
            click.echo(
                f"dtrain: metrics at http://{opts['metrics_host']}:{bound}/metrics", err=True
            )
        observers.append(metrics)
    try:
        summary = Trainer(
            config, observers, address=opts["address"], resume=resume_dir is not None
        ).run()
    except KeyboardInterrupt:
        saved = list((config.run_dir / "checkpoints").glob("step-*.npz"))
        hint = f"; resume with: dtrain train --resume {config.run_dir}" if saved else ""
        click.echo(f"dtrain: interrupted{hint}", err=True)
        sys.exit(130)
    if as_json:
        out = summary.to_dict()
        out.pop("history")
        click.echo(json.dumps(out))


# `dtrain train` option -> field of TrainConfig.to_dict() ("a.b" for nested configs).
OPTION_FIELDS = {
    "data_dir": "data_dir",
    "run_dir": "run_dir",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "num_workers": "num_workers",
    "hidden_sizes": "model.hidden_sizes",
    "optimizer": "optimizer.name",
    "learning_rate": "optimizer.learning_rate",
    "momentum": "optimizer.momentum",
    "lr_schedule": "optimizer.schedule",
    "seed": "seed",
    "cpus_per_worker": "num_cpus_per_worker",
    "max_steps": "max_steps",
    "eval_every_epoch": "eval_every_epoch",
    "step_timeout": "step_timeout_seconds",
    "checkpoint_every": "checkpoint_every",
    "max_restarts": "max_restarts",
    "device": "device",
    "exchange": "exchange",
    "data_transport": "data_transport",
    "staleness": "staleness",
    "gpu_workers": "num_gpu_workers",
}


def saved_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DtrainError(f"{run_dir} is not a dtrain run directory (no config.json)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DtrainError(f"{path} is unreadable: {e}") from e


def build_config(
    opts: dict[str, Any], base: dict[str, Any] | None = None, run_dir: Path | None = None
) -> Any:
    """A TrainConfig from options laid over ``base`` (a saved config.json) or the defaults."""
    from dtrain.service.data.dataset import default_data_dir
    from dtrain.service.train.config import TrainConfig

    d: dict[str, Any] = {"model": {}, "optimizer": {}, **(base or {})}
    d["model"], d["optimizer"] = dict(d["model"]), dict(d["optimizer"])
    for option, value in opts.items():
        target = OPTION_FIELDS.get(option)
        if target is None or (value is None and option in ("data_dir", "run_dir")):
            continue
        if "." in target:
            section, key = target.split(".")
            d[section][key] = value
        else:
            d[target] = value
    d.setdefault("data_dir", default_data_dir())
    if d.get("run_dir") is None:
        d["run_dir"] = default_run_dir()
    if run_dir is not None:
        d["run_dir"] = run_dir
    try:
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise click.UsageError(str(e)) from e


@cli.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prepared dataset whose test split is evaluated. [default: as for train]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def evaluate(checkpoint_path: Path, data_dir: Path | None, as_json: bool) -> None:
    """Test loss and accuracy of a checkpoint."""
    from dtrain.service.data import dataset
    from dtrain.service.train import checkpoint
    from dtrain.workers.model import Network
    from dtrain.workers.shards import ShardError, read_rows, to_float

    ckpt = checkpoint.load(checkpoint_path)
    data_dir = data_dir or dataset.default_data_dir()
    manifest = dataset.ensure_prepared(data_dir)
    n = int(manifest["splits"]["test"]["num_samples"])
    try:
        x, y = read_rows(data_dir, manifest, "test", 0, n)
    except ShardError as e:
        raise DtrainError(str(e)) from e
    check_input_size(ckpt.spec.input_size, x.shape[1])
    loss, acc = Network(ckpt.spec).evaluate(ckpt.params, to_float(x), y.astype(np.int64))
    if as_json:
        click.echo(json.dumps({"test_accuracy": acc, "test_loss": loss, "num_samples": n}))
    else:
        click.echo(f"test accuracy {acc:.4f}  loss {loss:.4f}  ({n} samples)")


def check_input_size(expected: int, got: int) -> None:
    if expected != got:
        raise DtrainError(f"the checkpoint expects {expected} inputs per image, the data has {got}")


@cli.command()
@click.argument("checkpoint_path", metavar="CHECKPOINT", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--test-samples",
    type=click.IntRange(min=1),
    default=None,
    help="Predict the first N images of the prepared test set (shows the true label).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prepared dataset for --test-samples. [default: as for train]",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per image.")
@user_errors
def predict(
    checkpoint_path: Path,
    inputs: tuple[Path, ...],
    test_samples: int | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Predict digits for images in INPUTS (.npy, .npz or IDX files of 28x28 uint8 images)."""
    from dtrain.service.data import dataset
    from dtrain.service.data.images import load_images
    from dtrain.service.train import checkpoint
    from dtrain.workers.model import Network
    from dtrain.workers.shards import ShardError, read_rows

    if not inputs and test_samples is None:
        raise click.UsageError("give image files as INPUTS or --test-samples N")
    ckpt = checkpoint.load(checkpoint_path)
    batches: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for path in inputs:
        batches.append((str(path), load_images(path), None))
    if test_samples is not None:
        data_dir = data_dir or dataset.default_data_dir()
        manifest = dataset.ensure_prepared(data_dir)
        n = min(test_samples, int(manifest["splits"]["test"]["num_samples"]))
        try:
            x, y = read_rows(data_dir, manifest, "test", 0, n)
        except ShardError as e:
            raise DtrainError(str(e)) from e
        batches.append(("test", x, y))
    net = Network(ckpt.spec)
    for source, images, labels in batches:
        check_input_size(ckpt.spec.input_size, images.shape[1])
        probs = net.predict_proba(ckpt.params, images.astype(np.float32) / np.float32(255))
        for i, row in enumerate(probs):
            digit = int(row.argmax())
            rec: dict[str, Any] = {
                "source": source,
                "index": i,
                "prediction": digit,
                "probability": round(float(row[digit]), 6),
            }
            if labels is not None:
                rec["label"] = int(labels[i])
            if as_json:
                click.echo(json.dumps(rec))
            else:
                truth = f"  (label {rec['label']})" if labels is not None else ""
                click.echo(f"{source}[{i}]: {digit}  p={rec['probability']:.4f}{truth}")


def main() -> None:
    cli(prog_name="dtrain")


def _attach_subcommands() -> None:
    from dtrain.cli.bench_cmd import bench
    from dtrain.cli.data_cmds import data
    from dtrain.cli.jobs_cmds import jobs, make_submit
    from dtrain.cli.report_cmd import report

    cli.add_command(data)
    cli.add_command(bench)
    cli.add_command(report)
    # Handed over, not imported there: the job's entrypoint runs this module as __main__.
    cli.add_command(make_submit(train, build_config))
    cli.add_command(jobs)


_attach_subcommands()

if __name__ == "__main__":
    main()
