"""What a run is rebuilt from: snapshots, checkpoints on disk, resume checks, restart policy.

A snapshot is the server's state and the driver's progress at the same step. The newest whole
snapshot is where a run continues after a lost actor (``RestartPolicy``) or a ``--resume``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.service.errors import Diverged, DtrainError
from dtrain.service.train import checkpoint
from dtrain.service.train.config import TrainConfig, check_float, check_int
from dtrain.workers.model import init_params
from dtrain.workers.sampling import MAX_WORKERS, NUM_PARTITIONS

FINAL_CHECKPOINT = "checkpoint.npz"
CHECKPOINT_DIR = "checkpoints"

# Fields of the config that decide the weights: a resumed run must match them exactly.
RESUME_MUST_MATCH = (
    "staleness",
    "batch_size",
    "num_workers",
    "model",
    "optimizer",
    "seed",
    "epochs",
    "max_steps",
)


@dataclass
class Progress:
    """Everything besides the server's arrays that a resumed run needs to continue exactly."""

    step: int = 0
    epoch_loss: float = 0.0
    epoch_correct: int = 0
    epoch_samples: int = 0
    epoch_seconds: float = 0.0
    total_samples: int = 0
    train_seconds: float = 0.0
    restarts: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    # An elastic run's workers at ``step`` (0: the config's num_workers) and every change of
    # that number so far (MembershipChange dicts): a resumed run continues with the same size.
    num_workers: int = 0
    membership: list[dict[str, Any]] = field(default_factory=list)
    # Parts of every batch per worker after a straggler's were moved (empty: an even split).
    parts: list[int] = field(default_factory=list)

    def copy(self) -> Progress:
        return Progress(
            **{
                **asdict(self),
                "history": [dict(h) for h in self.history],
                "membership": [dict(m) for m in self.membership],
                "parts": list(self.parts),
            }
        )

    @classmethod
    def from_dict(cls, d: Any) -> Progress:
        """A checkpoint's saved progress, checked field by field (TypeError or ValueError naming
        the field): a resumed run trusts every one, and a damaged or hand-edited value would
        otherwise end in a traceback, or in a hang (a negative step never reaches the last)."""
        if not isinstance(d, dict):
            raise TypeError(f"progress must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in d.items() if k in names}
        for name, value in kept.items():
            _check_progress_field(name, value)
        return cls(**kept)


# Largest count or duration a checkpoint's progress may hold: far beyond any run, and small
# enough for NumPy's int64 and for float seconds.
MAX_PROGRESS_COUNT = 2**62
MAX_PROGRESS_SECONDS = 1e12


def _check_progress_field(name: str, value: Any) -> None:
    if name in ("epoch_loss", "epoch_seconds", "train_seconds"):
        high = float(MAX_PROGRESS_COUNT) if name == "epoch_loss" else MAX_PROGRESS_SECONDS
        check_float(f"progress.{name}", value, 0.0, high)
    elif name == "num_workers":  # 0: the config's num_workers
        check_int("progress.num_workers", value, 0, MAX_WORKERS)
    elif name == "parts":
        # Empty (an even split), or every worker's parts of a batch: all of them, each >= 1.
        if not isinstance(value, list) or any(
            not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in value
        ):
            raise TypeError(f"progress.parts must be a list of counts >= 1, got {value!r}")
        if value and sum(value) != NUM_PARTITIONS:
            raise ValueError(f"progress.parts must sum to {NUM_PARTITIONS}, got {value!r}")
    elif name in ("history", "membership"):
        if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
            raise TypeError(f"progress.{name} must be a list of JSON objects, got {value!r}")
        if name == "history":
            for record in value:
                # What a resume reads back: the epochs to keep in history.jsonl, the summary.
                check_int("progress.history epoch", record.get("epoch"), 1, MAX_PROGRESS_COUNT)
                check_int("progress.history steps", record.get("steps"), 0, MAX_PROGRESS_COUNT)
                for key in ("train_loss", "train_accuracy"):
                    if not isinstance(record.get(key), int | float) or isinstance(
                        record.get(key), bool
                    ):
                        raise TypeError(
                            f"progress.history {key} must be a number, got {record.get(key)!r}"
                        )
    else:  # step, epoch_correct, epoch_samples, total_samples, restarts
        check_int(f"progress.{name}", value, 0, MAX_PROGRESS_COUNT)


@dataclass
class Snapshot:
    """The server's state and the driver's progress at the same step."""

    params: np.ndarray
    velocity: np.ndarray
    progress: Progress
    # With bounded staleness k: the weights after the k updates before ``params``, oldest first.
    history: np.ndarray | None = None

    @classmethod
    def of_server(cls, state: dict[str, Any], progress: Progress) -> Snapshot:
        """The server's ``state()`` (arrays fetched through Ray: read-only views of the object
        store, copied here so nothing keeps them pinned) with the driver's progress at its step.
        """
        history = state["history"]
        return cls(
            np.array(state["params"]),
            np.array(state["velocity"]),
            progress,
            None if history is None else np.array(history),
        )

    def restarted(self) -> Snapshot:
        """A copy to continue from after a rebuild, counting that rebuild."""
        progress = self.progress.copy()
        progress.restarts += 1
        return Snapshot(self.params, self.velocity, progress, self.history)


def initial_snapshot(config: TrainConfig, resume: bool, train_data: str) -> Snapshot:
    """Fresh weights from the seed, or the newest whole checkpoint of the run being resumed
    (``train_data``: the digest of the training rows this run reads)."""
    if not resume:
        params = init_params(config.model, config.seed)
        return Snapshot(params, np.zeros_like(params), Progress())
    ckpt = latest_checkpoint(config.run_dir)
    check_resumable(ckpt, config, train_data)
    velocity = ckpt.velocity if ckpt.velocity is not None else np.zeros_like(ckpt.params)
    progress = Progress.from_dict(ckpt.meta.get("progress", {}))
    history = None if ckpt.history is None else np.array(ckpt.history)
    return Snapshot(np.array(ckpt.params), np.array(velocity), progress, history)


class Checkpointer:
    """Writes snapshots into a run directory: periodic ones (newest two kept) and the final one."""

    def __init__(
        self, config: TrainConfig, on_checkpoint: Callable[[Path, int], None] | None = None
    ) -> None:
        self.config = config
        self.on_checkpoint = on_checkpoint
        # The digest of the training rows (manifest.train_data_digest), once the run has read
        # its manifest: saved with every checkpoint so that a resume can check it reads them.
        self.train_data: str | None = None

    def save(self, path: Path, snap: Snapshot, extra: dict[str, Any] | None = None) -> None:
        meta = {
            "step": snap.progress.step,
            "progress": asdict(snap.progress),
            "config": self.config.to_dict(),
            **({} if self.train_data is None else {"train_data": self.train_data}),
            **(extra or {}),
        }
        checkpoint.save(
            path,
            checkpoint.Checkpoint(
                spec=self.config.model,
                params=snap.params,
                velocity=snap.velocity,
                meta=meta,
                history=snap.history,
            ),
        )
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, snap.progress.step)

    def save_periodic(self, snap: Snapshot) -> None:
        directory = self.config.run_dir / CHECKPOINT_DIR
        self.save(directory / f"step-{snap.progress.step:08d}.npz", snap)
        # Keep the newest two: one may be mid-write when the machine dies, the other is whole.
        for old in sorted(directory.glob("step-*.npz"))[:-2]:
            old.unlink(missing_ok=True)

    def save_final(self, snap: Snapshot, extra: dict[str, Any]) -> Path:
        path = self.config.run_dir / FINAL_CHECKPOINT
        self.save(path, snap, extra)
        return path


def diverged(config: TrainConfig, step: int, epoch: int, loss: float) -> Diverged:
    """The error of a non-finite step, naming a checkpoint only where one was written."""
    saved = sorted((config.run_dir / CHECKPOINT_DIR).glob("step-*.npz"))
    kept = f"the weights before it are in {saved[-1]}" if saved else "no checkpoint was written"
    return Diverged(
        f"training diverged at step {step} (epoch {epoch}): the loss or gradient is not finite; "
        f"lower --learning-rate (now {config.optimizer.learning_rate:g}) and start again; {kept}",
        step=step,
        loss=loss,
    )


class RestartPolicy:
    """Ray Train's failure policy, small: rebuild from the newest snapshot up to N times."""

    def __init__(self, max_restarts: int) -> None:
        self.max_restarts = max_restarts

    def next_start(self, latest: Snapshot, error: DtrainError, live: bool = False) -> Snapshot:
        """The snapshot to rebuild from after ``error``, or the error that ends the run.
        ``live``: ``latest`` is the state at the step reached, not a checkpoint."""
        restarted = latest.restarted()
        if restarted.progress.restarts > self.max_restarts:
            raise DtrainError(f"giving up after {self.max_restarts} restarts: {error}") from error
        where = "the step reached" if live else "the newest checkpoint"
        print(
            f"dtrain: {error}; restarting the actors from step {latest.progress.step}, {where} "
            f"(restart {restarted.progress.restarts} of {self.max_restarts})",
            file=sys.stderr,
        )
        return restarted


def latest_checkpoint(run_dir: Path) -> checkpoint.Checkpoint:
    """The newest checkpoint of a run that loads whole; damaged ones are skipped, loudly."""
    candidates = sorted((run_dir / CHECKPOINT_DIR).glob("step-*.npz"), reverse=True)
    final = run_dir / FINAL_CHECKPOINT
    if final.exists():
        candidates.insert(0, final)
    if not candidates:
        raise DtrainError(f"{run_dir} has no checkpoint to resume from")
    problems = []
    for path in candidates:
        try:
            return check_meta(path, checkpoint.load(path))
        except DtrainError as e:
            problems.append(str(e))
            print(f"dtrain: skipping {path.name}: {e}", file=sys.stderr)
    raise DtrainError(f"no checkpoint in {run_dir} is loadable: {problems[0]}")


def check_meta(path: Path, ckpt: checkpoint.Checkpoint) -> checkpoint.Checkpoint:
    """``ckpt`` if what a resume reads from its meta (progress, saved config) is well formed; a
    checkpoint with a damaged meta is as unloadable as one with damaged weights."""
    try:
        Progress.from_dict(ckpt.meta.get("progress", {}))
        if not isinstance(ckpt.meta.get("config", {}), dict):
            raise TypeError(f"config must be a JSON object, got {ckpt.meta['config']!r}")
    except (TypeError, ValueError) as e:
        raise DtrainError(f"checkpoint {path}: header field meta: {e}") from None
    return ckpt


def check_resumable(ckpt: checkpoint.Checkpoint, config: TrainConfig, train_data: str) -> None:
    """Refuse a checkpoint whose run would not continue into the same weights: another
    network or config, or other training rows (checkpoints from before the digest was saved
    are not checked for the rows)."""
    if ckpt.spec != config.model:
        raise DtrainError(
            f"the checkpoint's layers {ckpt.spec.layer_shapes} differ from the config's "
            f"{config.model.layer_shapes}"
        )
    saved = ckpt.meta.get("config", {})
    now = config.to_dict()
    diffs = [
        f"{key}: checkpoint {saved.get(key)!r}, now {now[key]!r}"
        for key in RESUME_MUST_MATCH
        if key in saved and saved[key] != now[key]
    ]
    if diffs:
        raise DtrainError(
            "cannot resume, the config differs from the checkpoint's: " + "; ".join(diffs)
        )
    saved_data = ckpt.meta.get("train_data")
    if saved_data is not None and saved_data != train_data:
        raise DtrainError(
            f"cannot resume: the training data in {config.data_dir} is not the run's (its "
            "shards' sha256 differ from those the checkpoint was trained on): give --data-dir "
            "the dataset the run started with"
        )
