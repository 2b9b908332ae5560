"""Command-line options, each defined once.

``dtrain train``'s options are generated from the config dataclasses' fields (``TrainConfig``,
its ``ModelSpec`` and ``OptimizerConfig``, ``MetricsConfig``, ``ProgressConfig`` and
``TrackerConfig``): name, type, default, choices, bounds and help all come from the field, so
``train``, job files and ``submit`` cannot drift from the config. Options shared by several
commands (``--json``, ``--data-dir``) are here too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import secrets
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from dtrain.service.observe.metrics import MetricsConfig
from dtrain.service.observe.progress import ProgressConfig
from dtrain.service.observe.trackers import TrackerConfig
from dtrain.service.paths import read_small_text
from dtrain.service.train.config import TrainConfig

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# Keys a job file may hold: exactly the ``train`` options (dashes or underscores).
JOB_FILE_TABLE = "train"
# ctx.meta key: the option names a job file may set, where not all of the command's own.
JOB_FILE_NAMES_KEY = "dtrain.job_file_names"


class UserPath(click.Path):
    """click.Path that also refuses the empty string. Path("") is ".": an unset variable in
    `--run-dir "$RUN"` wrote a run into the current directory, beside the user's files."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value == "":
            self.fail("an empty path (a shell variable that expanded to nothing?)", param, ctx)
        return super().convert(value, param, ctx)


def json_option(what: str) -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=f"Print {what} as JSON.")


def data_dir_option(help: str) -> Decorator:
    return click.option(
        "--data-dir", type=UserPath(file_okay=False, path_type=Path), default=None, help=help
    )


# --- options generated from config fields ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigOption:
    """One generated option: click's declaration of it and the config field it sets."""

    decls: tuple[str, ...]
    attrs: dict[str, Any]
    # Dotted path into the config's ``to_dict()``: "epochs", "optimizer.learning_rate".
    field_path: str

    @property
    def name(self) -> str:
        """click's name for the parameter (the last declaration, an identifier)."""
        return self.decls[-1]


def _fields(cls: type, prefix: str = "") -> Iterator[tuple[dataclasses.Field[Any], Any, str]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            yield from _fields(hint, prefix + f.name + ".")
        elif "help" in f.metadata:
            yield f, hint, prefix + f.name


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None  # required fields (data_dir, run_dir) have defaults computed at run time


def _click_type(hint: Any, meta: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if isinstance(hint, types.UnionType) and len(args) == 1 else hint
    if "choices" in meta:
        return click.Choice(list(meta["choices"]))
    if base is int:
        return click.IntRange(min=meta.get("min"), max=meta.get("max"))
    if base is float:
        return FiniteFloat(
            min=meta.get("min"),
            max=meta.get("max"),
            min_open=meta.get("min_open", False),
            max_open=meta.get("max_open", False),
        )
    if base is Path:
        return UserPath(file_okay=False, path_type=Path)
    if hint == Path | str:
        # A string, not a Path: Path() would fold the "//" of a URI such as s3://bucket/mnist.
        return UserPath(file_okay=False)
    return click.STRING


class FiniteFloat(click.FloatRange):
    """A float range that also refuses nan and inf, which compare False with every bound."""

    name = "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        # Finiteness first: with a max bound, inf would otherwise read as merely out of range.
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)


class CountRange(click.ParamType):
    """``N`` or ``MIN:MAX`` (an elastic worker count): N stays an int, MIN:MAX a (min, max)
    pair; both are checked against the field's bounds here, so the error names the option."""

    name = "N|MIN:MAX"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple) or (isinstance(value, int) and not isinstance(value, bool)):
            parts = list(value) if isinstance(value, tuple) else [value]
        else:
            text = str(value).strip()
            try:
                parts = [int(p) for p in text.split(":")] if text.count(":") <= 1 else []
            except ValueError:
                parts = []
            if not parts:
                self.fail(f"{value!r} is not a count N or a range MIN:MAX", param, ctx)
        for p in parts:
            if not self.low <= p <= self.high:
                self.fail(f"{value!r}: each count must be in {self.low}..{self.high}", param, ctx)
        if len(parts) == 1:
            return parts[0]
        low, high = parts
        if low > high:
            self.fail(f"{value!r}: MIN must be <= MAX", param, ctx)
        return (low, high)


def parse_int_list(ctx: click.Context, param: click.Parameter, value: Any) -> tuple[int, ...]:
    """ "512,256" -> (512, 256); "none" or "" -> (); a tuple (a job file's list) passes."""
    if isinstance(value, tuple | list):
        parts = list(value)
    else:
        text = str(value).strip()
        if text in ("", "none"):
            return ()
        parts = text.split(",")
    try:
        sizes = tuple(int(part) for part in parts)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not a comma-separated list of integers", ctx, param
        ) from None
    if any(s < 1 for s in sizes):
        raise click.BadParameter(f"every value must be >= 1, got {value!r}", ctx, param)
    return sizes


def _option(f: dataclasses.Field[Any], hint: Any, path: str) -> ConfigOption:
    meta = f.metadata
    name = (meta.get("option") or f.name).replace("_", "-")
    dest = name.replace("-", "_")
    default = _default(f)
    attrs: dict[str, Any] = {"help": meta["help"], "show_default": default is not None}
    if hint is bool:
        return ConfigOption((f"--{name}/--no-{name}", dest), {**attrs, "default": default}, path)
    if typing.get_origin(hint) is tuple:
        attrs |= {
            "default": ",".join(map(str, default)) if default else "none",
            "callback": parse_int_list,
        }
        return ConfigOption((f"--{name}", dest), attrs, path)
    attrs |= {"type": _click_type(hint, meta), "default": default}
    if "lower_bound" in meta:
        attrs["type"] = CountRange(meta.get("min", 1), meta["max"])
    if "flag_value" in meta:
        # An option whose value may be left out: `--mlflow` alone means flag_value.
        attrs |= {"is_flag": False, "flag_value": meta["flag_value"]}
    if "metavar" in meta:
        attrs["metavar"] = meta["metavar"]
    return ConfigOption((f"--{name}", *meta.get("aliases", ()), dest), attrs, path)


def config_options(cls: type) -> list[ConfigOption]:
    return [_option(f, hint, path) for f, hint, path in _fields(cls)]


TRAIN_OPTIONS = config_options(TrainConfig)
METRICS_OPTIONS = config_options(MetricsConfig)
PROGRESS_OPTIONS = config_options(ProgressConfig)
TRACKER_OPTIONS = config_options(TrackerConfig)
# Option name (click's dest) -> dotted field of TrainConfig.to_dict().
TRAIN_FIELDS = {o.name: o.field_path for o in TRAIN_OPTIONS}
# Field -> the field its MIN:MAX option also sets (num_workers -> min_workers).
LOWER_BOUNDS = {
    f.name: f.metadata["lower_bound"]
    for f in dataclasses.fields(TrainConfig)
    if "lower_bound" in f.metadata
}


def with_options(options: list[ConfigOption]) -> Decorator:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        # Applied last to first, as stacked decorators are, so --help lists them in field order.
        for o in reversed(options):
            fn = click.option(*o.decls, **o.attrs)(fn)
        return fn

    return decorate


# --- job files ---------------------------------------------------------------------------------


def load_job_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read a TOML job file into click's default_map, so options given on the command line win."""
    if value is None:
        return None
    path = Path(value)
    try:
        data = tomllib.loads(read_small_text(path))
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", ctx, param) from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{path} is not valid TOML: {e}", ctx, param) from e
    table = data.get(JOB_FILE_TABLE, data)
    if not isinstance(table, dict):
        raise click.BadParameter(f"{path}: [{JOB_FILE_TABLE}] must be a table", ctx, param)
    if JOB_FILE_TABLE in data and len(data) > 1:
        # Keys beside [train] would be ignored: say so rather than run without them.
        beside = ", ".join(repr(k) for k in data if k != JOB_FILE_TABLE)
        raise click.BadParameter(
            f"{path}: keys outside the [{JOB_FILE_TABLE}] table: {beside}; move them into it",
            ctx,
            param,
        )
    params = {p.name: p for p in ctx.command.params if p.name and p.name != "config"}
    # `submit` takes a `train` job file: only `train`'s options, not submit's own.
    allowed = ctx.meta.get(JOB_FILE_NAMES_KEY)
    if allowed is not None:
        params = {name: p for name, p in params.items() if name in allowed}
    defaults: dict[str, Any] = {}
    for key, val in table.items():
        name = key.replace("-", "_")
        if name not in params:
            raise click.BadParameter(f"{path}: unknown option {key!r}", ctx, param)
        check_job_value(path, key, val, params[name], ctx, param)
        defaults[name] = ",".join(map(str, val)) if isinstance(val, list) else val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def job_value_kind(option: click.Parameter) -> str:
    """The TOML type a job file must use for ``option``: no coercion, so 1.7 is not 1."""
    kind = option.type
    if (isinstance(option, click.Option) and option.is_flag) or isinstance(
        kind, click.types.BoolParamType
    ):
        return "boolean"
    if isinstance(kind, CountRange):
        return "count"
    if isinstance(kind, click.types.IntParamType):
        return "integer"
    if isinstance(kind, click.types.FloatParamType):
        return "number"
    if option.callback is parse_int_list:
        return "list of integers"
    return "string"


def check_job_value(
    path: Path,
    key: str,
    value: Any,
    option: click.Parameter,
    ctx: click.Context,
    param: click.Parameter,
) -> None:
    """Refuse a job-file value of the wrong TOML type for ``option``, naming file and key."""
    kind = job_value_kind(option)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    ok = {
        "boolean": isinstance(value, bool),
        "integer": is_int,
        "number": is_int or isinstance(value, float),
        "list of integers": is_int
        or (
            isinstance(value, list)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ),
        # A string of the option's own syntax is fine ("five" then fails the option's check).
        "string": isinstance(value, str),
        # 2, or "1:2" (TOML has no range type).
        "count": is_int or isinstance(value, str),
    }[kind]
    if kind in ("integer", "number") and isinstance(value, str):
        ok = True  # the option's own parser names the bad text, as on the command line
    if not ok:
        article = "an" if kind == "integer" else "a"
        raise click.BadParameter(
            f"{path}: {key!r} must be {article} {kind}, got {type(value).__name__} {value!r}",
            ctx,
            param,
        )


config_file_option = click.option(
    "--config",
    type=UserPath(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=load_job_file,
    help="TOML job file whose keys are these options' names; options on the command line win.",
)


# --- from options to a config ------------------------------------------------------------------


def default_run_dir() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{secrets.token_hex(2)}"


def build_config(
    opts: dict[str, Any], base: dict[str, Any] | None = None, run_dir: Path | None = None
) -> TrainConfig:
    """A TrainConfig from options laid over ``base`` (a saved config.json) or the defaults."""
    from dtrain.service.data.dataset import default_data_dir

    d: dict[str, Any] = {"model": {}, "optimizer": {}, **(base or {})}
    d["model"], d["optimizer"] = dict(d["model"]), dict(d["optimizer"])
    for option, value in opts.items():
        target = TRAIN_FIELDS.get(option)
        if target is None or (value is None and option in ("data_dir", "run_dir")):
            continue
        if "." in target:
            section, key = target.split(".")
            d[section][key] = value
        elif target in LOWER_BOUNDS:
            # N (a fixed size) or a (MIN, MAX) pair: the option sets both fields.
            low, high = value if isinstance(value, tuple) else (None, value)
            d[LOWER_BOUNDS[target]], d[target] = low, high
        else:
            d[target] = value
    gpu_option = next(o for o, field in TRAIN_FIELDS.items() if field == "num_gpu_workers")
    if d.get("device") != "gpu" and opts.get(gpu_option) is None:
        # A GPU run resumed with --device cpu or auto: its saved GPU worker count no longer
        # applies (TrainConfig refuses one given with another device).
        d["num_gpu_workers"] = None
    d.setdefault("data_dir", default_data_dir())
    if d.get("run_dir") is None:
        d["run_dir"] = default_run_dir()
    if run_dir is not None:
        d["run_dir"] = run_dir
    try:
        return TrainConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise click.UsageError(name_the_option(str(e))) from e


def name_the_option(message: str) -> str:
    """Prefix a TrainConfig message ("num_cpus_per_worker must be ...") with its option."""
    for option, target in TRAIN_FIELDS.items():
        if message.startswith(f"{target.rpartition('.')[2]} "):
            return f"--{option.replace('_', '-')}: {message}"
    return message


def metrics_config(opts: dict[str, Any]) -> MetricsConfig:
    names = {o.name for o in METRICS_OPTIONS}
    return MetricsConfig(**{k: v for k, v in opts.items() if k in names})


def progress_config(opts: dict[str, Any]) -> ProgressConfig:
    names = {o.name for o in PROGRESS_OPTIONS}
    return ProgressConfig(**{k: v for k, v in opts.items() if k in names})


def tracker_config(opts: dict[str, Any]) -> TrackerConfig:
    names = {o.name for o in TRACKER_OPTIONS}
    return TrackerConfig(**{k: v for k, v in opts.items() if k in names})
