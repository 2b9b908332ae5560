"""Optimizers against the chapter's formulas, literally, over several steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dtrain.service.ps.optim import OPTIMIZERS, Optimizer, OptimizerConfig

LR, M, STEPS = 0.05, 0.9, 6


def grads(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.normal(size=n).astype(np.float32) for _ in range(STEPS)]


def run(name: str) -> np.ndarray:
    w = np.linspace(-1, 1, 50, dtype=np.float32)
    opt = Optimizer(OptimizerConfig(name=name, learning_rate=LR, momentum=M), w.size)
    for g in grads(w.size):
        opt.step(w, g)
    return w


def test_sgd_is_w_minus_lr_g() -> None:
    w = np.linspace(-1, 1, 50, dtype=np.float32)
    for gradient in grads(w.size):
        w = w - np.float32(LR) * gradient  # W -= learning_rate * gradient
    np.testing.assert_array_equal(run("sgd"), w)


def test_classical_momentum_formula() -> None:
    w = np.linspace(-1, 1, 50, dtype=np.float32)
    velocity = np.zeros_like(w)
    momentum, learning_rate = np.float32(M), np.float32(LR)
    for gradient in grads(w.size):
        velocity = momentum * velocity - learning_rate * gradient
        w = w + velocity
    np.testing.assert_array_equal(run("momentum"), w)


def test_nesterov_is_the_chapters_form() -> None:
    w = np.linspace(-1, 1, 50, dtype=np.float32)
    velocity = np.zeros_like(w)
    momentum, learning_rate = np.float32(M), np.float32(LR)
    for gradient in grads(w.size):
        velocity = momentum * velocity - learning_rate * gradient
        w = w + momentum * velocity - learning_rate * gradient
    np.testing.assert_array_equal(run("nesterov"), w)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_step_into_gives_the_bits_of_step_and_only_reads_params_and_velocity(name: str) -> None:
    cfg = OptimizerConfig(name=name, learning_rate=LR, momentum=M)
    in_place = Optimizer(cfg, 50)
    w = np.linspace(-1, 1, 50, dtype=np.float32)
    params, velocity = w.copy(), np.zeros_like(w)
    for gradient in grads(w.size):
        in_place.step(w, gradient)
        # Read-only inputs: a write to them raises; the gradient is step_into's to spend.
        params.flags.writeable = velocity.flags.writeable = False
        out, velocity_out = np.empty_like(params), np.empty_like(velocity)
        Optimizer(cfg, 50).step_into(params, out, gradient.copy(), None, velocity, velocity_out)
        params, velocity = out, velocity_out
    np.testing.assert_array_equal(params, w)
    if name != "sgd":
        np.testing.assert_array_equal(velocity, in_place.velocity)


def test_the_three_optimizers_differ() -> None:
    a, b, c = run("sgd"), run("momentum"), run("nesterov")
    assert not np.array_equal(a, b) and not np.array_equal(b, c)


def test_cosine_schedule_decays_from_lr_towards_zero() -> None:
    cfg = OptimizerConfig(learning_rate=0.1, schedule="cosine")
    assert cfg.learning_rate_at(0, 100) == pytest.approx(0.1)
    assert cfg.learning_rate_at(50, 100) == pytest.approx(0.05)
    assert cfg.learning_rate_at(99, 100) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(math.pi * 0.99))
    )
    assert OptimizerConfig(schedule="constant").learning_rate_at(99, 100) == 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"learning_rate": -0.1}, "learning_rate"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.5}, "momentum"),
        ({"name": "adam"}, "optimizer"),
        ({"schedule": "step"}, "schedule"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OptimizerConfig(**kwargs)
