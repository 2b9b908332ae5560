"""The network's math against finite differences (float64) and the chapter's formulas."""

from __future__ import annotations

import numpy as np
import pytest

from dtrain.workers.model import (
    Layout,
    ModelSpec,
    Network,
    cross_entropy_backward,
    cross_entropy_sum,
    dense_backward,
    dense_forward,
    init_params,
    softmax,
)

EPS = 1e-6


def numeric_grad(f, x: np.ndarray) -> np.ndarray:
    """Central differences of scalar f with respect to every entry of x (float64)."""
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + EPS
        up = f()
        x[i] = old - EPS
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * EPS)
    return g


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


@pytest.mark.parametrize("relu", [True, False])
def test_dense_backward_matches_finite_differences(rng: np.random.Generator, relu: bool) -> None:
    x = rng.normal(size=(5, 7))
    w = rng.normal(size=(7, 4))
    b = rng.normal(size=4)
    upstream = rng.normal(size=(5, 4))  # dL/d(out) for L = sum(out * upstream)

    def loss() -> float:
        out, _ = dense_forward(np, x, w, b, relu)
        return float((out * upstream).sum())

    _, z = dense_forward(np, x, w, b, relu)
    gw, gb = np.empty_like(w), np.empty_like(b)
    gx = dense_backward(np, upstream, x, w, z, relu, gw, gb)
    np.testing.assert_allclose(gw, numeric_grad(loss, w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gb, numeric_grad(loss, b), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gx, numeric_grad(loss, x), rtol=1e-6, atol=1e-8)


def test_dense_forward_is_the_chapters_formula(rng: np.random.Generator) -> None:
    x, w, b = rng.random((3, 6)), rng.normal(size=(6, 2)), rng.normal(size=2)
    literal = np.maximum(np.dot(x, w) + b, 0)  # output = relu(dot(input, W) + b)
    out, _ = dense_forward(np, x, w, b, relu=True)
    np.testing.assert_array_equal(out, literal)
    assert (out >= 0).all() and (out == 0).any()


def test_cross_entropy_gradient_matches_finite_differences(rng: np.random.Generator) -> None:
    logits = rng.normal(size=(6, 10)) * 3
    labels = rng.integers(0, 10, size=6)

    def loss() -> float:
        return float(cross_entropy_sum(np, logits, labels)[0])

    _, probs = cross_entropy_sum(np, logits, labels)
    analytic = cross_entropy_backward(np, probs, labels)
    np.testing.assert_allclose(analytic, numeric_grad(loss, logits), rtol=1e-6, atol=1e-8)


def test_cross_entropy_is_the_textbook_formula(rng: np.random.Generator) -> None:
    logits = rng.normal(size=(4, 10))
    labels = np.array([0, 3, 9, 3])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    literal = -np.log(p[np.arange(4), labels]).sum()
    loss, probs = cross_entropy_sum(np, logits, labels)
    assert loss == pytest.approx(literal, rel=1e-12)
    np.testing.assert_allclose(probs, p, rtol=1e-12)


def test_softmax_rows_sum_to_one_and_survive_huge_logits(rng: np.random.Generator) -> None:
    logits = rng.normal(size=(50, 10)) * 1000  # exp(1000) overflows without the max shift
    probs = softmax(np, logits)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
    loss, _ = cross_entropy_sum(np, logits, rng.integers(0, 10, size=50))
    assert np.isfinite(loss)


@pytest.mark.parametrize("hidden", [(), (8,), (8, 5)])
def test_network_gradient_matches_finite_differences(
    rng: np.random.Generator, hidden: tuple[int, ...]
) -> None:
    spec = ModelSpec(input_size=6, hidden_sizes=hidden, num_classes=4)
    net = Network(spec)
    params = init_params(spec, seed=1).astype(np.float64)
    params += rng.normal(scale=0.1, size=params.shape)  # non-zero biases, no exact relu kinks
    x = rng.random((5, 6))
    y = rng.integers(0, 4, size=5)
    _, _, grad = net.loss_and_grad(params, x, y)
    num = numeric_grad(lambda: net.loss_and_grad(params, x, y)[0], params)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7)


def test_layout_views_write_through_to_the_flat_vector() -> None:
    spec = ModelSpec(input_size=3, hidden_sizes=(2,), num_classes=2)
    flat = np.zeros(spec.num_params, dtype=np.float32)
    (w1, b1), (w2, b2) = Layout(spec).unflatten(flat)
    assert (w1.shape, b1.shape, w2.shape, b2.shape) == ((3, 2), (2,), (2, 2), (2,))
    w2[1, 0] = 7
    assert flat[3 * 2 + 2 + 2] == 7
    assert spec.num_params == 3 * 2 + 2 + 2 * 2 + 2


@pytest.mark.parametrize("batch", [1, 4096])
def test_batch_of_one_and_of_thousands(batch: int) -> None:
    spec = ModelSpec()  # the chapter's 784-512-10
    net = Network(spec)
    params = init_params(spec, seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, size=batch)
    loss, correct, grad = net.loss_and_grad(params, x, y)
    assert grad.dtype == np.float32 and grad.shape == (spec.num_params,)
    assert np.isfinite(grad).all() and 0 <= correct <= batch
    assert loss / batch == pytest.approx(np.log(10), rel=0.2)  # near-uniform at init
    probs = net.predict_proba(params, x)
    assert probs.shape == (batch, 10)


def test_empty_batch_gives_zero_gradient() -> None:
    spec = ModelSpec(input_size=4, hidden_sizes=(3,), num_classes=2)
    loss, correct, grad = Network(spec).loss_and_grad(
        init_params(spec, 0), np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
    )
    assert (loss, correct) == (0.0, 0) and not grad.any()


def test_init_is_glorot_uniform_and_seeded() -> None:
    spec = ModelSpec()
    a, b = init_params(spec, 3), init_params(spec, 3)
    np.testing.assert_array_equal(a, b)
    (w1, b1), _ = Layout(spec).unflatten(a)
    limit = np.sqrt(6 / (784 + 512))
    assert np.abs(w1).max() <= limit and np.abs(w1).max() > 0.99 * limit
    assert not b1.any()
    assert not np.array_equal(a, init_params(spec, 4))


@pytest.mark.parametrize(
    "kwargs", [{"input_size": 0}, {"num_classes": 1}, {"hidden_sizes": (5, 0)}]
)
def test_model_spec_rejects_bad_sizes(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ModelSpec(**kwargs)
