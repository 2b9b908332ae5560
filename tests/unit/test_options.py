"""Each `dtrain train` option is defined once, by a config field: name, type, default, help."""

from __future__ import annotations

import dataclasses

import click
import pytest

from dtrain.cli.jobs_cmds import submit
from dtrain.cli.options import METRICS_OPTIONS, TRAIN_FIELDS, TRAIN_OPTIONS, build_config
from dtrain.cli.train_cmd import train
from dtrain.service.observe.metrics import MetricsConfig
from dtrain.service.observe.progress import ProgressConfig
from dtrain.service.observe.trackers import TrackerConfig
from dtrain.service.train.config import TrainConfig

# train's options that configure the command, not the run.
COMMAND_OPTIONS = {"config", "resume_dir", "overwrite", "address", "as_json", "help"}


def field_at(path: str) -> dataclasses.Field:
    cls: type = TrainConfig
    *parents, leaf = path.split(".")
    for name in parents:
        cls = {f.name: f for f in dataclasses.fields(cls)}[name].default_factory().__class__
    return {f.name: f for f in dataclasses.fields(cls)}[leaf]


def test_every_train_option_comes_from_a_config_field() -> None:
    metrics = {f.name for f in dataclasses.fields(MetricsConfig)}
    progress = {f.name for f in dataclasses.fields(ProgressConfig)}
    progress |= {f.name for f in dataclasses.fields(TrackerConfig)}
    for param in train.params:
        if param.name in COMMAND_OPTIONS:
            continue
        assert param.name in set(TRAIN_FIELDS) | metrics | progress, param.name


def test_defaults_help_and_choices_are_the_fields_own() -> None:
    for option in TRAIN_OPTIONS:
        f = field_at(option.field_path)
        param = next(p for p in train.params if p.name == option.name)
        assert param.help == f.metadata["help"]
        if "choices" in f.metadata:
            assert isinstance(param.type, click.Choice)
            assert tuple(param.type.choices) == tuple(f.metadata["choices"])
        if f.default is not dataclasses.MISSING and not isinstance(f.default, tuple):
            assert param.default == f.default, option.name
    for option in METRICS_OPTIONS:
        f = {f.name: f for f in dataclasses.fields(MetricsConfig)}[option.name]
        param = next(p for p in train.params if p.name == option.name)
        assert param.default == f.default and param.help == f.metadata["help"]


def test_the_options_defaults_build_the_configs_defaults(tmp_path) -> None:
    ctx = train.make_context("train", ["--data-dir", str(tmp_path), "--run-dir", str(tmp_path)])
    config = build_config(ctx.params)
    assert config == TrainConfig(data_dir=tmp_path, run_dir=tmp_path)


def test_submit_carries_exactly_trains_run_options() -> None:
    submit_names = {p.name for p in submit.params}
    for name in TRAIN_FIELDS:
        assert name in submit_names


def test_a_config_json_from_before_the_step_engine_still_loads(tmp_path) -> None:
    """Runs written with the per-step engine's pipeline_depth resume; other strays do not."""
    d = TrainConfig(data_dir=tmp_path, run_dir=tmp_path / "run").to_dict()
    assert "pipeline_depth" not in d
    assert TrainConfig.from_dict({**d, "pipeline_depth": 2}) == TrainConfig.from_dict(d)
    with pytest.raises(TypeError, match="no_such_field"):
        TrainConfig.from_dict({**d, "no_such_field": 1})
