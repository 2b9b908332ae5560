"""What a prepare may replace or sweep: only what dtrain itself wrote.

A prepare writes into ``.OUT.tmp-PID`` and renames it to ``OUT``; a ``--force`` prepare moves
the old dataset aside to ``.OUT.old-PID`` first. ``--force`` replaces a folder only when it is
recognisably a dtrain dataset (its manifest and nothing but shard files), removal deletes only
the file names a prepare writes, and the work folders of killed prepares (dead pids) are swept
by the next prepare into the same ``OUT``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from dtrain.service.data.manifest import FORMAT, MANIFEST_NAME, read_manifest
from dtrain.service.errors import DtrainError

# The only names dtrain writes into a prepared directory: anything else there is the user's.
SHARD_NAME = re.compile(r"(train|test)-\d{5}-of-\d{5}\.arrow")
# Siblings of OUT that a prepare creates while it works: .OUT.tmp-PID and .OUT.old-PID.
WORK_DIR_NAME = re.compile(r"\.(?P<out>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)")


def is_dtrain_file(name: str) -> bool:
    return name == MANIFEST_NAME or SHARD_NAME.fullmatch(name) is not None


def foreign_entries(directory: Path) -> list[str]:
    """Entries of ``directory`` that dtrain did not write there (sorted, so messages are stable)."""
    return sorted(
        p.name for p in directory.iterdir() if not (p.is_file() and is_dtrain_file(p.name))
    )


def is_dtrain_dataset(directory: Path) -> bool:
    """Holds dtrain's manifest.json and nothing but the files a prepare writes."""
    manifest = directory / MANIFEST_NAME
    if not manifest.is_file() or foreign_entries(directory):
        return False
    try:
        content = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        # A damaged manifest beside nothing but shard files is still recognisably ours.
        return any(SHARD_NAME.fullmatch(p.name) for p in directory.iterdir())
    return isinstance(content, dict) and content.get("format") == FORMAT


def not_ours(out_dir: Path) -> DtrainError:
    foreign = foreign_entries(out_dir)
    if not foreign:
        foreign = [MANIFEST_NAME]  # a manifest.json of some other program
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return DtrainError(
        f"{out_dir}: holds {shown}, which are not a dtrain dataset and would be lost; "
        "refusing to replace it: choose a new or empty --out directory"
    )


def check_out_dir(out_dir: Path, *, force: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise DtrainError(f"{out_dir}: exists and is not a directory")
    # An empty directory (say, a freshly made mount point) is fine; rename(2) replaces it.
    if not any(out_dir.iterdir()):
        return
    # --force replaces only what a prepare wrote: never a folder of the user's own files.
    if not is_dtrain_dataset(out_dir):
        raise not_ours(out_dir)
    if force:
        return
    try:
        read_manifest(out_dir)
    except DtrainError as e:
        raise DtrainError(
            f"{out_dir}: holds an unusable manifest ({e}); use --force to replace it"
        ) from None
    raise DtrainError(f"{out_dir}: already prepared, use --force to replace it")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_dataset_dir(directory: Path) -> bool:
    """Delete the files a prepare writes, then the folder if that emptied it; never other files."""
    for entry in directory.iterdir():
        if entry.is_file() and not entry.is_symlink() and is_dtrain_file(entry.name):
            entry.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


def sweep_stale_tmp(out_dir: Path) -> None:
    """Remove work folders of prepares into ``out_dir`` that were killed (their pid is gone)."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        match = WORK_DIR_NAME.fullmatch(entry.name)
        if (
            match is None
            or match["out"] != out_dir.name
            or not entry.is_dir()
            or entry.is_symlink()
            or _pid_alive(int(match["pid"]))
        ):
            continue
        # A killed --force prepare may have moved the only dataset aside: keep it then.
        if match["kind"] == "old" and not (out_dir / MANIFEST_NAME).is_file():
            continue
        if not remove_dataset_dir(entry):
            print(
                f"dtrain: left {entry} in place: it holds files dtrain did not write",
                file=sys.stderr,
            )
