"""The chapter's network: Dense(relu) layers then Dense(softmax), trained with cross-entropy.

All arithmetic goes through an array module ``xp`` (numpy, or cupy on a GPU worker) so the math
is written once. Parameters live in one flat float32 vector; layers read views of it, which keeps
the server's optimizer step and the object-store transfer a single contiguous buffer.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np

Array = Any  # numpy.ndarray or cupy.ndarray


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Layer sizes of a multilayer perceptron: input -> hidden... -> classes."""

    input_size: int = 784
    # metadata: the `dtrain train` option (see service/train/config.py's option()).
    hidden_sizes: tuple[int, ...] = field(
        default=(512,),
        metadata={"help": "Comma-separated hidden layer widths (none: no hidden layer).", "min": 1},
    )
    num_classes: int = 10

    def __post_init__(self) -> None:
        # Strict types: a config.json or checkpoint header of the wrong JSON type ("512" for
        # [512], 7.5, true) must be refused by name, not iterated or truncated into a model.
        for name in ("input_size", "num_classes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        sizes = self.hidden_sizes
        if not isinstance(sizes, (list, tuple)) or any(
            not isinstance(h, int) or isinstance(h, bool) for h in sizes
        ):
            raise TypeError(f"hidden_sizes must be a list of integers, got {sizes!r}")
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        if self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {self.input_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        for size in self.hidden_sizes:
            if int(size) < 1:
                raise ValueError(f"hidden_sizes must all be >= 1, got {list(self.hidden_sizes)}")

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        sizes = [self.input_size, *self.hidden_sizes, self.num_classes]
        return list(itertools.pairwise(sizes))

    @property
    def num_params(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in self.layer_shapes)


@dataclass(frozen=True)
class LayerView:
    """Offsets of one layer's weight matrix and bias inside the flat parameter vector."""

    w_start: int
    b_start: int
    end: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class Layout:
    spec: ModelSpec
    layers: tuple[LayerView, ...] = field(init=False)

    def __post_init__(self) -> None:
        views, offset = [], 0
        for n_in, n_out in self.spec.layer_shapes:
            b_start = offset + n_in * n_out
            views.append(LayerView(offset, b_start, b_start + n_out, (n_in, n_out)))
            offset = b_start + n_out
        object.__setattr__(self, "layers", tuple(views))

    def unflatten(self, flat: Array) -> list[tuple[Array, Array]]:
        """Views (W, b) per layer into ``flat``; writing to a view writes to ``flat``."""
        return [
            (flat[v.w_start : v.b_start].reshape(v.shape), flat[v.b_start : v.end])
            for v in self.layers
        ]


def init_params(spec: ModelSpec, seed: int) -> np.ndarray:
    """Glorot-uniform weights and zero biases, the Keras Dense defaults the chapter trains with."""
    rng = np.random.default_rng(seed)
    flat = np.zeros(spec.num_params, dtype=np.float32)
    for w, _b in Layout(spec).unflatten(flat):
        n_in, n_out = w.shape
        limit = np.sqrt(6.0 / (n_in + n_out))
        w[...] = rng.uniform(-limit, limit, size=w.shape)
    return flat


# --- one Dense layer: forward and backward side by side ------------------------------------


def dense_forward(xp: ModuleType, x: Array, w: Array, b: Array, relu: bool) -> tuple[Array, Array]:
    """``relu(dot(x, W) + b)`` (or the affine part alone for the output layer).

    Returns (output, z) where z is kept for the backward pass.
    """
    z = x @ w + b  # (B, n_in) @ (n_in, n_out) -> (B, n_out)
    return (xp.maximum(z, 0) if relu else z), z


def dense_backward(
    xp: ModuleType,
    grad_out: Array,
    x: Array,
    w: Array,
    z: Array,
    relu: bool,
    grad_w: Array,
    grad_b: Array,
    need_grad_x: bool = True,
) -> Array | None:
    """Chain rule through one layer; writes dL/dW and dL/db into the given buffers.

    grad_out: (B, n_out) = dL/d(output). Returns dL/dx (B, n_in), or None for the first layer.
    """
    grad_z = grad_out * (z > 0) if relu else grad_out  # relu'(z) is 1 where z > 0, else 0
    xp.matmul(x.T, grad_z, out=grad_w)  # (n_in, B) @ (B, n_out) -> (n_in, n_out)
    xp.sum(grad_z, axis=0, out=grad_b)  # (B, n_out) -> (n_out,)
    if not need_grad_x:
        return None
    return grad_z @ w.T  # (B, n_out) @ (n_out, n_in) -> (B, n_in)


# --- softmax and cross-entropy -----------------------------------------------------------------


def softmax(xp: ModuleType, logits: Array) -> Array:
    """Row-wise softmax; subtracting the row max keeps exp() from overflowing."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = xp.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy_sum(xp: ModuleType, logits: Array, labels: Array) -> tuple[Array, Array]:
    """Sum over the batch of ``-log softmax(logits)[label]`` and the softmax probabilities.

    Computed as ``logsumexp(logits) - logits[label]`` so a confident wrong answer gives a large
    finite loss rather than ``-log(0) = inf``.
    """
    m = logits.max(axis=1, keepdims=True)
    shifted = logits - m
    e = xp.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = xp.arange(logits.shape[0])
    loss = (xp.log(s[:, 0]) - shifted[rows, labels]).sum()
    return loss, e / s


def cross_entropy_backward(xp: ModuleType, probs: Array, labels: Array) -> Array:
    """d(sum of cross-entropy)/d(logits) = softmax - onehot(label), (B, C)."""
    grad = probs.copy()
    grad[xp.arange(probs.shape[0]), labels] -= 1
    return grad


# --- the whole network ----------------------------------------------------------------------------


class Network:
    """Forward, loss and backward of the MLP over a flat parameter vector."""

    def __init__(self, spec: ModelSpec, xp: ModuleType = np) -> None:
        self.spec = spec
        self.layout = Layout(spec)
        self.xp = xp

    def logits(self, params: Array, x: Array) -> Array:
        layers = self.layout.unflatten(params)
        h = x
        for i, (w, b) in enumerate(layers):
            h, _ = dense_forward(self.xp, h, w, b, relu=i < len(layers) - 1)
        return h  # (B, num_classes)

    def predict_proba(self, params: Array, x: Array) -> Array:
        return softmax(self.xp, self.logits(params, x))

    def loss_and_grad(
        self, params: Array, x: Array, labels: Array, grad_out: Array | None = None
    ) -> tuple[float, int, Array]:
        """Summed loss, number correct, and the gradient of the *summed* loss w.r.t. params.

        Returning sums (not means) lets the server average gradients from workers with unequal
        slices exactly: ``sum(grad_i) / sum(count_i)``. ``grad_out`` is an optional flat buffer
        to write the gradient into (saves one allocation per step).
        """
        xp = self.xp
        layers = self.layout.unflatten(params)
        grad = xp.empty_like(params) if grad_out is None else grad_out
        grad_layers = self.layout.unflatten(grad)
        if x.shape[0] == 0:
            grad[...] = 0
            return 0.0, 0, grad
        inputs, zs = [], []
        h = x
        last = len(layers) - 1
        for i, (w, b) in enumerate(layers):
            inputs.append(h)
            h, z = dense_forward(xp, h, w, b, relu=i < last)
            zs.append(z)
        loss, probs = cross_entropy_sum(xp, h, labels)
        correct = int((probs.argmax(axis=1) == labels).sum())
        g = cross_entropy_backward(xp, probs, labels)  # (B, C)
        for i in range(last, -1, -1):
            w, _ = layers[i]
            gw, gb = grad_layers[i]
            g = dense_backward(xp, g, inputs[i], w, zs[i], i < last, gw, gb, need_grad_x=i > 0)
        return float(loss), correct, grad

    def evaluate(
        self, params: Array, x: Array, labels: Array, batch: int = 2048
    ) -> tuple[float, float]:
        """Mean loss and accuracy over a dataset, in chunks to bound memory."""
        total_loss, correct = 0.0, 0
        for start in range(0, x.shape[0], batch):
            xb, yb = x[start : start + batch], labels[start : start + batch]
            loss, probs = cross_entropy_sum(self.xp, self.logits(params, xb), yb)
            total_loss += float(loss)
            correct += int((probs.argmax(axis=1) == yb).sum())
        n = max(int(x.shape[0]), 1)
        return total_loss / n, correct / n
