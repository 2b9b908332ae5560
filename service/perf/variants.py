"""The single-process variants dtrain is timed against: the sgemm floor, the NumPy and torch loops.

Each draws the batches a 1-worker dtrain run draws and starts from its initial weights, so the
numbers and the final weights compare like with like.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import numpy as np

from dtrain.service.data import dataset
from dtrain.service.errors import DtrainError
from dtrain.service.ps.optim import Optimizer, OptimizerConfig
from dtrain.workers import sampling
from dtrain.workers.model import ModelSpec, Network, init_params
from dtrain.workers.shards import ShardError, read_rows, to_float


def matmul_shapes(spec: ModelSpec, batch: int) -> list[tuple[str, int, int, int]]:
    """(role, m, k, n) of every (m, k) @ (k, n) product in one training step.

    Forward ``x @ W`` per layer; backward ``x.T @ grad_z`` (dW) per layer and ``grad_z @ W.T``
    (dx) for every layer but the first, whose input needs no gradient.
    """
    shapes = [
        (f"forward {i}", batch, n_in, n_out) for i, (n_in, n_out) in enumerate(spec.layer_shapes)
    ]
    for i, (n_in, n_out) in enumerate(spec.layer_shapes):
        shapes.append((f"dW {i}", n_in, batch, n_out))
        if i > 0:
            shapes.append((f"dx {i}", batch, n_out, n_in))
    return shapes


def step_flops(spec: ModelSpec, batch: int) -> int:
    """Floating-point operations of the step's matrix products (2 per multiply-add)."""
    return sum(2 * m * k * n for _, m, k, n in matmul_shapes(spec, batch))


@dataclass(frozen=True)
class Timed:
    """Per-step wall times of one variant and what it ended with."""

    step_seconds: list[float]
    params: np.ndarray | None = None
    test_accuracy: float | None = None


def time_floor(spec: ModelSpec, batch: int, total_steps: int, seed: int = 0) -> Timed:
    """The step's matrix products alone, with preallocated outputs and the same transposes."""
    rng = np.random.default_rng(seed)
    ops: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i, (n_in, n_out) in enumerate(spec.layer_shapes):
        x = rng.random((batch, n_in), dtype=np.float32)
        w = rng.random((n_in, n_out), dtype=np.float32)
        gz = rng.random((batch, n_out), dtype=np.float32)
        ops.append((x, w, np.empty((batch, n_out), np.float32)))  # (B, in) @ (in, out)
        ops.append((x.T, gz, np.empty((n_in, n_out), np.float32)))  # (in, B) @ (B, out)
        if i > 0:
            ops.append((gz, w.T, np.empty((batch, n_in), np.float32)))  # (B, out) @ (out, in)
    times = []
    for _ in range(total_steps):
        t0 = time.perf_counter()
        for a, b, out in ops:
            np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return Timed(times)


@dataclass(frozen=True)
class TrainData:
    train_x: np.ndarray  # (n, 784) float32 in [0, 1]
    train_y: np.ndarray  # (n,) int64
    test_x: np.ndarray
    test_y: np.ndarray  # (n,) uint8, as the driver evaluates

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])


def load_data(data_dir: Path) -> TrainData:
    manifest = dataset.ensure_prepared(data_dir)
    try:
        x, y = read_rows(data_dir, manifest, "train", 0, manifest["splits"]["train"]["num_samples"])
        tx, ty = read_rows(data_dir, manifest, "test", 0, manifest["splits"]["test"]["num_samples"])
    except ShardError as e:
        raise DtrainError(str(e)) from e
    return TrainData(to_float(x), y.astype(np.int64), to_float(tx), ty)


def single_worker_batches(
    num_samples: int, batch: int, total_steps: int, seed: int
) -> list[tuple[int, np.ndarray]]:
    """(epoch, sorted row indices) of each step, drawn as the only worker of a 1-worker run
    draws them (``workers.sampling``), so the loops and dtrain see the same batches."""
    spe = sampling.steps_per_epoch(num_samples, batch)
    out: list[tuple[int, np.ndarray]] = []
    epoch = 0
    perm = np.arange(0)
    every_part = sampling.worker_parts(1, 0)
    for step in range(total_steps):
        if step % spe == 0:
            epoch += 1
            perm = sampling.epoch_permutation(seed, epoch, num_samples)
        out.append((epoch, sampling.step_rows(perm, batch, step % spe, every_part)))
    return out


@dataclass(frozen=True, kw_only=True)
class Loop:
    """What every single-process loop trains: the same data, model, optimizer, batches, seed."""

    data: TrainData
    spec: ModelSpec
    optimizer: OptimizerConfig
    batch: int
    total_steps: int
    seed: int

    def batches(self) -> list[tuple[int, np.ndarray]]:
        return single_worker_batches(self.data.num_train, self.batch, self.total_steps, self.seed)

    def learning_rate_at(self, step: int) -> float:
        return self.optimizer.learning_rate_at(step, self.total_steps)


def numpy_loop(loop: Loop) -> Timed:
    """The plain loop: the parameter server's arithmetic on the whole batch, one process.

    Mean gradient as ``ServerCore`` forms it (summed, then times 1/count in float32) and the
    cosine learning rate over ``total_steps``: a 1-worker dtrain run's arithmetic exactly, up to
    how many BLAS threads each runs sgemm with.
    """
    data, spec = loop.data, loop.spec
    net = Network(spec)
    params = init_params(spec, loop.seed)
    opt = Optimizer(loop.optimizer, spec.num_params)
    grad = np.empty_like(params)
    times = []
    for step, (_, idx) in enumerate(loop.batches()):
        t0 = time.perf_counter()
        _, _, g = net.loss_and_grad(params, data.train_x[idx], data.train_y[idx], grad)
        g *= np.float32(1.0 / len(idx))
        opt.step(params, g, loop.learning_rate_at(step))
        times.append(time.perf_counter() - t0)
    _, acc = net.evaluate(params, data.test_x, data.test_y)
    return Timed(times, params, acc)


def import_torch() -> ModuleType | None:
    try:
        import torch
    except ImportError:
        return None
    return cast(ModuleType, torch)


def torch_loop(torch: ModuleType, loop: Loop, threads: int) -> Timed:
    """``nn.Sequential(Linear, ReLU, ..., Linear)`` with ``torch.optim.SGD``, same batches.

    Starts from dtrain's initial weights. torch's Nesterov and classical momentum are the
    chapter's formulas rewritten for a constant learning rate; under the cosine schedule they
    differ slightly, which shows only in the last digits of the accuracy.
    """
    data, spec, optimizer = loop.data, loop.spec, loop.optimizer
    torch.set_num_threads(threads)
    nn = torch.nn
    layers: list[Any] = []
    last = len(spec.layer_shapes) - 1
    init = Network(spec).layout.unflatten(init_params(spec, loop.seed))
    for i, ((n_in, n_out), (w, b)) in enumerate(zip(spec.layer_shapes, init, strict=True)):
        linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))  # (out, in)
            linear.bias.copy_(torch.from_numpy(b.copy()))
        layers.append(linear)
        if i < last:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    momentum = 0.0 if optimizer.name == "sgd" else optimizer.momentum
    opt = torch.optim.SGD(
        model.parameters(),
        lr=optimizer.learning_rate,
        momentum=momentum,
        nesterov=optimizer.name == "nesterov",
    )
    loss_fn = nn.CrossEntropyLoss()
    x_all = torch.from_numpy(data.train_x)
    y_all = torch.from_numpy(data.train_y)
    times = []
    for step, (_, idx) in enumerate(loop.batches()):
        t0 = time.perf_counter()
        rows = torch.from_numpy(idx)
        for group in opt.param_groups:
            group["lr"] = loop.learning_rate_at(step)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x_all[rows]), y_all[rows])
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        pred = model(torch.from_numpy(data.test_x)).argmax(dim=1).numpy()
    return Timed(times, None, float((pred == data.test_y).mean()))


def torch_for(use_torch: bool | None) -> tuple[ModuleType | None, dict[str, Any]]:
    """torch (or None) and what the report says of it: ``use_torch`` None means "if it imports"."""
    if use_torch is False:
        return None, {"used": False, "reason": "--no-torch"}
    torch = import_torch()
    if torch is None and use_torch:
        raise DtrainError("--torch: PyTorch is not installed (pip install torch)")
    return torch, {
        "used": torch is not None,
        "reason": None if torch is not None else "torch is not installed",
    }
