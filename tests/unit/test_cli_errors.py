"""User mistakes get a one-line error and a non-zero exit, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dtrain.cli.main import cli


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["train", "--batch-size", "0"], 2, "--batch-size"),
        (["train", "--learning-rate", "-0.1"], 2, "'--learning-rate' / '--lr': -0.1 is not in"),
        (["train", "--lr", "nan"], 2, "'nan' is not a finite number"),
        (["train", "--momentum", "1.5"], 2, "'--momentum': 1.5 is not in the range 0<=x<1"),
        (["train", "--cpus-per-worker", "inf"], 2, "'inf' is not a finite number"),
        (["train", "--step-timeout", "nan"], 2, "'--step-timeout': 'nan' is not a finite"),
        (["train", "--metrics-grace", "inf"], 2, "'--metrics-grace': 'inf' is not a finite"),
        (["train", "--seed", "-1"], 2, "'--seed': -1 is not in the range 0<=x<=4294967295"),
        (["train", "--num-workers", "0"], 2, "--num-workers"),
        (["train", "--optimizer", "adam"], 2, "'adam' is not one of"),
        (["train", "--hidden-sizes", "512,x"], 2, "not a comma-separated list"),
        (["train", "--num-workers", "8", "--batch-size", "4"], 2, "batch_size (4) must be >="),
        (["train", "--config", "/nonexistent/job.toml"], 2, "cannot read"),
        (["evaluate", "/nonexistent/ckpt.npz"], 1, "does not exist"),
        (["predict", "/nonexistent/ckpt.npz"], 2, "give image files"),
    ],
)
def test_bad_options(args: list[str], code: int, message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_job_file_with_unknown_key(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text("[train]\nepochz = 3\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(job)])
    assert result.exit_code == 2 and "unknown option 'epochz'" in result.output


def test_job_file_that_is_not_toml(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text("epochs = = 3\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(job)])
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def test_every_option_has_help() -> None:
    def walk(cmd):
        yield cmd
        for sub in getattr(cmd, "commands", {}).values():
            yield from walk(sub)

    for cmd in walk(cli):
        for param in cmd.params:
            if param.param_type_name == "option" and param.name not in ("help", "version"):
                assert param.help, f"{cmd.name} --{param.name} has no help"
