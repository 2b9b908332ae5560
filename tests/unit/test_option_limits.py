"""Every numeric option of every command is checked while parsing: NaN and infinity are usage
errors naming the option, as is a job-file value of the wrong TOML type for any option."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli
from dtrain.cli.options import FiniteFloat, job_value_kind
from dtrain.service.errors import DtrainError
from dtrain.service.train import session


def commands(
    group: click.Group, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def float_options() -> list[tuple[tuple[str, ...], click.Command, click.Option]]:
    return [
        (path, command, param)
        for path, command in commands(cli)
        for param in command.params
        if isinstance(param, click.Option) and isinstance(param.type, click.types.FloatParamType)
    ]


def required_arguments(command: click.Command) -> list[str]:
    return ["x" for p in command.params if isinstance(p, click.Argument) and p.required]


def test_the_walk_finds_the_float_options() -> None:
    names = {(" ".join(path), param.opts[0]) for path, _, param in float_options()}
    assert ("train", "--metrics-grace") in names and ("train", "--cpus-per-worker") in names
    assert ("submit", "--cpus-per-worker") in names and ("jobs stop", "--timeout") in names


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_every_float_option_refuses_non_finite_values(text: str) -> None:
    for path, command, param in float_options():
        args = [*path, *required_arguments(command), f"{param.opts[0]}={text}"]
        result = CliRunner().invoke(cli, args)
        where = f"{' '.join(args)}: {result.output}"
        assert result.exit_code == 2, where
        assert "Traceback" not in result.output, where
        errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and param.opts[0] in errors[0], where


def test_finite_float_range_keeps_finite_values() -> None:
    kind = FiniteFloat(min=0, max=10)
    assert kind.convert("2.5", None, None) == 2.5
    for bad in ("nan", "inf", "11", "-0.5"):
        with pytest.raises(click.BadParameter):
            kind.convert(bad, None, None)
    assert math.isfinite(kind.convert("0", None, None))


WRONG_VALUE = {
    "integer": "1.5",
    "number": "true",
    "boolean": "1",
    "string": "5",
    "list of integers": "true",
    "count": "1.5",
}


def test_every_job_file_key_refuses_a_value_of_the_wrong_type(tmp_path: Path) -> None:
    train = cli.commands["train"]
    checked = 0
    for param in train.params:
        if not isinstance(param, click.Option) or param.name in ("config", None):
            continue
        key = param.name.replace("_", "-")
        kind = job_value_kind(param)
        job = tmp_path / f"{key}.toml"
        job.write_text(f"[train]\n{key} = {WRONG_VALUE[kind]}\n")
        result = CliRunner().invoke(cli, ["train", "--config", str(job)])
        where = f"{key} = {WRONG_VALUE[kind]}: {result.output}"
        assert result.exit_code == 2 and f"{key!r} must be" in result.output, where
        assert "Traceback" not in result.output, where
        checked += 1
    assert checked >= 25


def test_more_workers_than_cores_warns_and_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    cores = os.cpu_count() or 1
    session.check_local_workers(cores, None)
    assert capsys.readouterr().err == ""
    session.check_local_workers(cores + 1, None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cores + 1} workers on {cores} CPU cores" in err
    with pytest.raises(DtrainError, match="at most"):
        session.check_local_workers(4 * cores + 1, None)
    session.check_local_workers(10 * cores, "10.0.0.1:6379")  # a cluster: its own resources


@pytest.mark.parametrize(
    ("address", "fragment"),
    [
        ("127.0.0.1:99999", "port 99999 is not in 1..65535"),
        ("127.0.0.1:0", "port 0 is not in 1..65535"),
        (":6379", "expected HOST:PORT"),
        ("ray://host:", "expected HOST:PORT"),
        ("127.0.0.1:-5", "expected HOST:PORT"),
    ],
)
def test_bad_addresses_are_refused_without_connecting(address: str, fragment: str) -> None:
    with pytest.raises(DtrainError, match=fragment.replace(".", r"\.")):
        session.parse_address(address)


def test_good_addresses_parse() -> None:
    assert session.parse_address("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert session.parse_address("ray://head:10001") == ("head", 10001)
    assert session.parse_address("auto") is None


def test_num_workers_takes_a_count_or_an_elastic_range(tmp_path: Path) -> None:
    from dtrain.cli.options import build_config

    fixed = build_config({"num_workers": 3})
    assert (fixed.num_workers, fixed.min_workers, fixed.elastic) == (3, None, False)
    elastic = build_config({"num_workers": (1, 4)})
    assert (elastic.num_workers, elastic.min_workers, elastic.elastic) == (4, 1, True)
    assert elastic.fewest_workers == 1
    # A job file spells the range as a string (TOML has no range type).
    job = tmp_path / "job.toml"
    job.write_text('[train]\nnum-workers = "3:2"\n')
    result = CliRunner().invoke(cli, ["train", "--config", str(job)])
    assert result.exit_code == 2 and "'3:2': MIN must be <= MAX" in result.output, result.output
    for bad, why in (("0:2", "each count must be in 1..64"), ("1:x", "not a count N or a range")):
        result = CliRunner().invoke(cli, ["train", "--num-workers", bad])
        assert result.exit_code == 2 and why in result.output, result.output


def test_a_config_json_with_min_above_max_is_refused() -> None:
    from dtrain.service.train.config import TrainConfig

    with pytest.raises(ValueError, match="num_workers MIN:MAX must have MIN <= MAX, got 3:2"):
        TrainConfig(data_dir="d", run_dir="r", num_workers=2, min_workers=3)
