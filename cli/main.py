"""``dtrain``: a thin click front end. Commands parse options and call into ``service``."""

from __future__ import annotations

import datetime as dt
import functools
import json
import secrets
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from service import __version__
from service.errors import DtrainError

# Keys a job file may hold: exactly the ``train`` options (dashes or underscores).
JOB_FILE_TABLE = "train"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``DtrainError`` into click's one-line ``Error: ...`` and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DtrainError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("dtrain: interrupted", err=True)
            sys.exit(130)

    return wrapper


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
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Prepared Arrow dataset; the embedded MNIST is prepared there if missing. "
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
    help="Seconds a step may take before the run is declared hung.",
)
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join, e.g. 10.0.0.1:6379. [default: $RAY_ADDRESS, else a new local Ray]",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@user_errors
def train(as_json: bool, **opts: Any) -> None:
    """Train the network on a local Ray or a cluster, then save a checkpoint."""
    from service.config import TrainConfig
    from service.dataset import default_data_dir
    from service.driver import Trainer
    from service.observers import ConsoleProgress, HistoryWriter
    from service.optim import OptimizerConfig
    from workers.model import ModelSpec

    try:
        config = TrainConfig(
            data_dir=opts["data_dir"] or default_data_dir(),
            run_dir=opts["run_dir"] or default_run_dir(),
            epochs=opts["epochs"],
            batch_size=opts["batch_size"],
            num_workers=opts["num_workers"],
            model=ModelSpec(hidden_sizes=opts["hidden_sizes"]),
            optimizer=OptimizerConfig(
                name=opts["optimizer"],
                learning_rate=opts["learning_rate"],
                momentum=opts["momentum"],
                schedule=opts["lr_schedule"],
            ),
            seed=opts["seed"],
            num_cpus_per_worker=opts["cpus_per_worker"],
            max_steps=opts["max_steps"],
            eval_every_epoch=opts["eval_every_epoch"],
            step_timeout_seconds=opts["step_timeout"],
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    observers = [HistoryWriter(config.run_dir / "history.jsonl"), ConsoleProgress()]
    summary = Trainer(config, observers, address=opts["address"]).run()
    if as_json:
        out = summary.to_dict()
        out.pop("history")
        click.echo(json.dumps(out))


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
    from service import checkpoint, dataset
    from workers.model import Network
    from workers.shards import ShardError, read_rows, to_float

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
    from service import checkpoint, dataset
    from service.predict import load_images
    from workers.model import Network
    from workers.shards import ShardError, read_rows

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
    from cli.data_cmds import data

    cli.add_command(data)


_attach_subcommands()

if __name__ == "__main__":
    main()
