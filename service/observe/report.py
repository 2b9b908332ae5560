"""``dtrain report``: a run's history (``history.jsonl``) drawn as one PNG a person can read.

Three panels: loss and accuracy curves (per step, smoothed, and per epoch on the test set) and
where a step's time goes (compute, aggregation, update, waiting), as the driver recorded them.
The title says how the run ended: its summary, or the error that stopped it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from dtrain.service.errors import DtrainError
from dtrain.service.paths import check_parent, write_error

PHASE_COLORS = {
    "compute": "#4C72B0",
    "aggregate": "#DD8452",
    "update": "#55A868",
    "wait": "#C44E52",
}
# What each band is, in the legend: "wait" is the largest on small models and otherwise a riddle.
PHASE_NOTES = {
    "compute": "slowest worker's forward + backward",
    "aggregate": "server sums the gradients",
    "update": "optimizer step",
    "wait": "the rest: moving weights and gradients, Ray scheduling, the driver",
}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def phase_label(phase: str, mean_ms: float) -> str:
    return f"{phase} {mean_ms:.2f} ms: {PHASE_NOTES[phase]}"


def read_end(run_dir: Path) -> dict[str, Any] | None:
    """The history's record of how the run ended (the last one, after a resume), if written."""
    end = None
    for line in (run_dir / "history.jsonl").read_text(encoding="utf-8").splitlines():
        if '"end"' in line:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("kind") == "end":
                end = record
    return end


def title(
    run_dir: Path,
    steps: list[dict[str, Any]],
    summary: dict[str, Any] | None,
    end: dict[str, Any] | None,
) -> str:
    """One or two lines: the run's outcome, whether it finished, failed, or is still going."""
    head = f"dtrain run {run_dir.name}"
    if summary:
        return (
            f"{head}: {plural(summary['epochs'], 'epoch')}, {plural(summary['steps'], 'step')}, "
            f"{summary['num_workers']} workers, batch {summary['batch_size']}, test accuracy "
            f"{summary['test_accuracy']:.4f}, {summary['samples_per_second']:,.0f} samples/s"
        )
    last = steps[-1]["step"]
    if end and end.get("error"):
        reason = textwrap.shorten(str(end["error"]), width=200, placeholder=" ...")
        return f"{head}: stopped after step {last}\n{reason}"
    return f"{head}: {plural(last, 'step')} so far, no summary (still running, or killed)"


def read_history(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Step and epoch records; a step replayed after a fault counts once (its last record)."""
    path = run_dir / "history.jsonl"
    if not run_dir.is_dir():
        raise DtrainError(f"{run_dir} is not a directory")
    if not path.is_file():
        raise DtrainError(f"{run_dir} has no history.jsonl: is it a dtrain run directory?")
    steps: dict[int, dict[str, Any]] = {}
    epochs: dict[int, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DtrainError(f"{path} is unreadable: {' '.join(str(e).split())}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DtrainError(f"{path}:{number} is not JSON: {e.msg}") from e
        if not isinstance(record, dict):
            raise DtrainError(f"{path}:{number} is a JSON {type(record).__name__}, not an object")
        kind = record.get("kind")
        if kind in RECORD_FIELDS:
            _check_fields(record, RECORD_FIELDS[kind], f"{path}:{number}")
        if kind == "step":
            steps[record["step"]] = record
        elif kind == "epoch":
            epochs[record["epoch"]] = record
    if not steps:
        raise DtrainError(f"{path} records no training step yet")
    return [steps[k] for k in sorted(steps)], [epochs[k] for k in sorted(epochs)]


# What render() reads from each record, and the JSON type each must have: "int" (a count),
# "number", "number?" (number or null) or "numbers" (a list of numbers).
RECORD_FIELDS: dict[str, dict[str, str]] = {
    "step": {
        "step": "int",
        "loss": "number",
        "accuracy": "number",
        "worker_compute_seconds": "numbers",
        "aggregate_seconds": "number",
        "update_seconds": "number",
        "step_seconds": "number",
    },
    "epoch": {
        "epoch": "int",
        "steps": "int",
        "train_loss": "number",
        "train_accuracy": "number",
        "test_loss": "number?",
        "test_accuracy": "number?",
    },
    "summary": {
        "epochs": "int",
        "steps": "int",
        "num_workers": "int",
        "batch_size": "int",
        "test_accuracy": "number",
        "samples_per_second": "number",
    },
}


MAX_COUNT = 2**63 - 1


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fields(record: dict[str, Any], fields: dict[str, str], where: str) -> None:
    for name, kind in fields.items():
        if name not in record and kind == "number?":
            continue
        if name not in record:
            raise DtrainError(f"{where}: {record.get('kind', 'record')} record lacks {name!r}")
        value = record[name]
        ok = {
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": _is_number(value),
            "number?": value is None or _is_number(value),
            "numbers": isinstance(value, list) and all(_is_number(v) for v in value),
        }[kind]
        if not ok:
            expected = {"int": "an integer", "numbers": "a list of numbers"}.get(kind, "a number")
            raise DtrainError(f"{where}: {name!r} must be {expected}, got {value!r}")
        if kind == "int" and not 0 <= value <= MAX_COUNT:
            # JSON integers are unbounded; NumPy's arrays of steps are int64.
            raise DtrainError(f"{where}: {name!r} must be an integer in 0..2**63-1, got {value!r}")


def read_summary(path: Path) -> dict[str, Any]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DtrainError(f"{path} is unreadable: {' '.join(str(e).split())}") from None
    if not isinstance(summary, dict):
        raise DtrainError(f"{path} is a JSON {type(summary).__name__}, not an object")
    _check_fields(summary, RECORD_FIELDS["summary"], str(path))
    return summary


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps (shorter at the start), the curve a person reads."""
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    smoothed: np.ndarray = (csum[idx] - csum[lo]) / (idx - lo)
    return smoothed


def phases(steps: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    compute = np.array([max(s["worker_compute_seconds"] or [0.0]) for s in steps])
    aggregate = np.array([s["aggregate_seconds"] for s in steps])
    update = np.array([s["update_seconds"] for s in steps])
    total = np.array([s["step_seconds"] for s in steps])
    wait = np.maximum(total - compute - aggregate - update, 0.0)
    return {"compute": compute, "aggregate": aggregate, "update": update, "wait": wait}


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A tEXt chunk every report carries (right after the header, before the pixels): an existing
# --out is replaced only when it holds this, so only a picture dtrain drew is ever replaced.
SOFTWARE = "dtrain report"
MARK = b"Software\x00" + SOFTWARE.encode()
MARK_WITHIN_BYTES = 4096


def check_replaceable(out: Path) -> None:
    """An existing --out is replaced only when it is a report dtrain drew: a typo such as
    `--out notes.txt`, or a user's own picture, must not be turned into a report."""
    if not out.exists() and not out.is_symlink():
        return
    head = b""
    if out.is_file():  # never open a FIFO: it would wait for a writer
        try:
            with out.open("rb") as f:
                head = f.read(MARK_WITHIN_BYTES)
        except OSError:
            pass
    if not head.startswith(PNG_SIGNATURE):
        raise DtrainError(f"{out} exists and is not a PNG picture: give --out a new file")
    if MARK not in head:
        raise DtrainError(f"{out} exists and is not a report dtrain drew: give --out a new file")


def render(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to a file
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    steps, epochs = read_history(run_dir)
    check_parent(out, "report")  # before the plotting, not after it
    check_replaceable(out)
    summary_path = run_dir / "summary.json"
    summary = read_summary(summary_path) if summary_path.is_file() else None
    x = np.array([s["step"] for s in steps])
    window = max(1, len(steps) // 50)
    fig, (ax_loss, ax_acc, ax_time) = plt.subplots(1, 3, figsize=(16, 4.8), dpi=110)

    loss = np.array([s["loss"] for s in steps])
    ax_loss.plot(x, loss, color="#bbbbbb", linewidth=0.6, label="train, per step")
    ax_loss.plot(x, smooth(loss, window), color="#4C72B0", label=f"train, mean of {window}")
    ex = [e["steps"] for e in epochs]
    ax_loss.plot(
        ex, [e["train_loss"] for e in epochs], "o", color="#4C72B0", label="train, epoch mean"
    )
    tested = [e for e in epochs if e.get("test_loss") is not None]
    if tested:
        ax_loss.plot(
            [e["steps"] for e in tested],
            [e["test_loss"] for e in tested],
            "s-",
            color="#C44E52",
            label="test",
        )
    ax_loss.set(title="Cross-entropy loss", xlabel="step", yscale="log")
    ax_loss.legend(fontsize=8)

    acc = np.array([s["accuracy"] for s in steps])
    ax_acc.plot(x, smooth(acc, window), color="#4C72B0", label=f"train, mean of {window}")
    ax_acc.plot(
        ex, [e["train_accuracy"] for e in epochs], "o", color="#4C72B0", label="train, epoch"
    )
    if tested:
        ax_acc.plot(
            [e["steps"] for e in tested],
            [e["test_accuracy"] for e in tested],
            "s-",
            color="#C44E52",
            # In the legend, not on the curve, where a label covered the last point.
            label=f"test (last {tested[-1]['test_accuracy']:.4f})",
        )
    # The first few steps climb from 0.1; the axis starts where most of the run is.
    low = min([np.percentile(smooth(acc, window), 5)] + [e["test_accuracy"] for e in tested])
    ax_acc.set(title="Accuracy", xlabel="step", ylim=(max(0.0, low - 0.02), 1.0))
    ax_acc.legend(fontsize=8, loc="lower right")

    parts = phases(steps)
    stacked = [smooth(parts[p], window) * 1e3 for p in PHASE_COLORS]
    means = {p: parts[p].mean() * 1e3 for p in PHASE_COLORS}
    ax_time.stackplot(
        x,
        stacked,
        colors=list(PHASE_COLORS.values()),
        labels=[phase_label(p, means[p]) for p in PHASE_COLORS],
    )
    ax_time.set(title="Where a step's time goes (ms, smoothed)", xlabel="step", ylabel="ms")
    # Below the panel: the phases' notes are too long to sit on the bands.
    ax_time.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.18))

    for ax in (ax_loss, ax_acc, ax_time):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps, never 2.5
    fig.suptitle(title(run_dir, steps, summary, read_end(run_dir)), fontsize=11)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, metadata={"Software": SOFTWARE})
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)  # no half-written picture left beside --out
        raise write_error(out, e, "report") from None
    finally:
        plt.close(fig)
    return out
