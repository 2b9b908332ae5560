"""``jobs list`` and ``jobs status`` for people."""

from __future__ import annotations

import datetime as dt

from dtrain.service.errors import first_line
from dtrain.service.jobs.record import TERMINAL, JobRecord


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_table(records: list[JobRecord], width: int = 60) -> str:
    """``jobs list`` for people: one line per job. A dtrain job shows its run directory and
    test accuracy (its entrypoints all start alike); any other job its entrypoint, cut to
    ``width``.
    """
    if not records:
        return "no jobs"
    rows = [("JOB ID", "STATUS", "SUBMITTED (UTC)", "TIME", "EPOCH", "TEST ACC", "RUN DIR")]
    for r in records:
        if r.run_dir is not None or r.test_accuracy is not None:
            last = r.run_dir or "-"
        else:
            last = r.entrypoint if len(r.entrypoint) <= width else r.entrypoint[: width - 3] + "..."
        accuracy = "-" if r.test_accuracy is None else f"{r.test_accuracy:.4f}"
        rows.append(
            (
                r.submission_id,
                r.status,
                _when(r.start_time),
                _duration(r.duration_seconds),
                r.epoch or "-",
                accuracy,
                last,
            )
        )
    if all(r.run_dir is None and r.test_accuracy is None for r in records):
        rows[0] = (*rows[0][:6], "ENTRYPOINT")
    elif any(r.run_dir is None and r.test_accuracy is None for r in records):
        rows[0] = (*rows[0][:6], "RUN DIR (or ENTRYPOINT)")
    n = len(rows[0]) - 1
    widths = [max(len(row[i]) for row in rows) for i in range(n)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:n])) + "  " + row[n]
        for row in rows
    )


def format_record(r: JobRecord) -> str:
    """``jobs status`` for people."""
    lines = [
        f"{r.submission_id}: {r.status}",
        f"  submitted   {_when(r.start_time)} UTC",
        f"  ended       {_when(r.end_time)}" + (" UTC" if r.end_time else ""),
        f"  time        {_duration(r.duration_seconds)}",
        f"  entrypoint  {r.entrypoint}",
    ]
    if r.run_dir is not None:
        lines.append(f"  run dir     {r.run_dir}")
    if r.test_accuracy is not None:
        done = "" if r.status in TERMINAL else f" (epoch {r.epoch})"
        lines.append(f"  test acc    {r.test_accuracy:.4f}{done}")
    if r.message:
        lines.append(f"  message     {first_line(r.message)}")
    if r.driver_exit_code is not None:
        lines.append(f"  exit code   {r.driver_exit_code}")
    for key, value in sorted(r.metadata.items()):
        lines.append(f"  {key:<11} {value}")
    return "\n".join(lines)
