"""`dtrain data prepare|inspect` through click's runner: exit codes and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner, Result

from dtrain.cli.data_cmds import data


@pytest.fixture
def npz_source(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8),
        y_train=(np.arange(20) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, size=(6, 784), dtype=np.uint8),
        y_test=(np.arange(6) % 10).astype(np.uint8),
    )
    return path


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(data, [str(a) for a in args])


def assert_one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert fragment in lines[0]


def prepare_small(source: Path, out: Path, *extra: str) -> Result:
    return invoke(
        "prepare",
        "--source",
        source,
        "--out",
        out,
        "--num-shards",
        "2",
        "--num-test-shards",
        "1",
        *extra,
    )


def test_prepare_then_inspect(tmp_path: Path, npz_source: Path) -> None:
    out = tmp_path / "out"
    result = prepare_small(npz_source, out)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("prepared 20 train samples in 2 shards and 6 test samples")
    assert len(result.stdout.strip().splitlines()) == 1

    result = invoke("inspect", out)
    assert result.exit_code == 0, result.output
    assert "train: 20 samples in 2 shards" in result.stdout
    assert f"source:  {npz_source.resolve()}" in result.stdout

    result = invoke("inspect", out, "--json", "--verify")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["splits"]["test"]["num_samples"] == 6
    assert "verified 3 shards" in result.stderr


def test_prepare_twice_needs_force(tmp_path: Path, npz_source: Path) -> None:
    out = tmp_path / "out"
    assert prepare_small(npz_source, out).exit_code == 0
    assert_one_line_error(prepare_small(npz_source, out), "already prepared, use --force")
    assert prepare_small(npz_source, out, "--force").exit_code == 0


def test_prepare_defaults_to_data_dir_env(
    tmp_path: Path, npz_source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DTRAIN_DATA_DIR", str(tmp_path / "env-dir"))
    result = invoke("prepare", "--source", npz_source, "--num-shards", "3")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env-dir" / "train-00002-of-00003.arrow").is_file()
    assert invoke("inspect").exit_code == 0


@pytest.mark.parametrize("option", ["--num-shards", "--num-test-shards"])
def test_zero_shards_is_a_usage_error(tmp_path: Path, npz_source: Path, option: str) -> None:
    result = invoke("prepare", "--source", npz_source, "--out", tmp_path / "out", option, "0")
    assert result.exit_code == 2
    assert "0 is not in the range x>=1" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    result = invoke("prepare", "--source", tmp_path / "nope", "--out", tmp_path / "out")
    assert_one_line_error(result, "source does not exist")
    evil = tmp_path / "evil.npz"
    np.savez(evil, x_train=np.array([None], dtype=object))
    result = invoke("prepare", "--source", evil, "--out", tmp_path / "out")
    assert_one_line_error(result, "array 'x_train' is an object array that needs pickle")


def test_too_many_shards_is_an_error(tmp_path: Path, npz_source: Path) -> None:
    result = invoke(
        "prepare", "--source", npz_source, "--out", tmp_path / "o", "--num-shards", "21"
    )
    assert_one_line_error(result, "21 train shards requested but the source has only 20")


def test_inspect_unprepared_directory(tmp_path: Path) -> None:
    assert_one_line_error(invoke("inspect", tmp_path), "not prepared: run `dtrain data prepare`")
    assert_one_line_error(invoke("inspect", tmp_path / "absent"), "does not exist")


def test_inspect_verify_names_a_damaged_shard(tmp_path: Path, npz_source: Path) -> None:
    out = tmp_path / "out"
    assert prepare_small(npz_source, out).exit_code == 0
    shard = out / "train-00001-of-00002.arrow"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")
    assert invoke("inspect", out).exit_code == 0  # describing does not read the shards
    assert_one_line_error(invoke("inspect", out, "--verify"), "train-00001-of-00002.arrow")


def test_every_option_has_help() -> None:
    for command in data.commands.values():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"{command.name} {param.name} has no help"
