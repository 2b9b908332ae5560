"""``dtrain jobs fetch``: a job's run directory, brought from the cluster to this machine.

Ray's Jobs API uploads working directories but has no way to download a file. What it does
have is jobs and their logs: a short helper job (Ray is all it needs) runs a zero-CPU task on
the node where the training job's driver ran, packs the run directory into a tar archive there,
and prints it base64-encoded between two marker lines; the client reads the helper's logs,
checks the archive's size and sha256, and unpacks it with tarfile's ``data`` filter (no links
out, no absolute paths, no devices) into a new directory, renamed into place only when whole.

By default the archive holds what a person wants on the laptop (checkpoint.npz, config.json,
history.jsonl, summary.json, report.png); ``everything`` adds the step checkpoints, which can be
large: the bytes travel through the dashboard's log endpoint, ~1.34 times their size.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import io
import os
import shlex
import shutil
import tarfile
import tempfile
from pathlib import Path

from dtrain.service.errors import DtrainError
from dtrain.service.jobs.client import JobsClient
from dtrain.service.jobs.record import TERMINAL
from dtrain.service.paths import check_dir

# How long fetching a run may take: a helper job's start plus the archive's trip.
FETCH_TIMEOUT_SECONDS = 300.0
# The markers archive_lines prints around the archive (spelled out there: it is shipped alone).
BEGIN = "dtrain-fetch-begin"
END = "dtrain-fetch-end"


def pack_run_dir(run_dir: str, everything: bool) -> tuple[bool, bytes | str]:
    """(True, tar.gz bytes) of ``run_dir``, or (False, why) — runs on the cluster's node.

    Self-contained (stdlib only): its source is shipped inside the helper job's command.
    """
    import io
    import os
    import tarfile

    if not os.path.isdir(run_dir):
        return False, f"{run_dir} is not a directory on the node the job ran on"
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        return False, f"{run_dir} is not a dtrain run directory (no config.json)"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in sorted(os.listdir(run_dir)):
            path = os.path.join(run_dir, name)
            # Half-written temporary files (.checkpoint.npz.*.tmp) are not part of the run.
            if name.startswith(".") or os.path.islink(path):
                continue
            if name == "checkpoints" and not everything:
                continue
            tar.add(path, arcname=name, recursive=True)
    return True, buf.getvalue()


def archive_lines(payload: bytes) -> list[str]:
    """How the helper prints an archive: a marker with its size and sha256, base64 lines, a
    marker. Self-contained: shipped inside the helper job's command like ``pack_run_dir``.
    """
    import base64
    import hashlib

    text = base64.b64encode(payload).decode()
    body = [text[i : i + 76] for i in range(0, len(text), 76)]
    head = f"dtrain-fetch-begin {len(payload)} {hashlib.sha256(payload).hexdigest()}"
    return [head, *body, "dtrain-fetch-end"]


def helper_command(python: str, run_dir: str, node_id: str | None, everything: bool) -> str:
    """The helper job's entrypoint: pack ``run_dir`` on ``node_id``, print it between markers."""
    code = "\n".join(
        [
            "import sys",
            "import ray",
            "from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy",
            inspect.getsource(pack_run_dir),
            inspect.getsource(archive_lines),
            "run_dir, node_id, everything = sys.argv[1], sys.argv[2], sys.argv[3] == '1'",
            "ray.init(logging_level='ERROR')",
            "task = ray.remote(num_cpus=0)(pack_run_dir)",
            "if node_id:",
            "    strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)",
            "    task = task.options(scheduling_strategy=strategy)",
            "ok, payload = ray.get(task.remote(run_dir, everything))",
            "if not ok:",
            "    print('Error: ' + payload, flush=True)",
            "    sys.exit(1)",
            "print('\\n'.join(archive_lines(payload)), flush=True)",
        ]
    )
    words = [python, "-c", code, run_dir, node_id or "", "1" if everything else "0"]
    return " ".join(shlex.quote(w) for w in words)


def archive_from_logs(logs: str, job_id: str) -> bytes:
    """The archive the helper printed, its size and sha256 checked."""
    lines = logs.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(BEGIN + " ")]
    if not starts:
        cause = next((x for x in reversed(lines) if x.startswith("Error: ")), "")
        last = next((x.strip() for x in reversed(lines) if x.strip()), "no output")
        raise DtrainError(
            f"fetching the run of job {job_id}: "
            + (cause.removeprefix("Error: ") or f"the helper job printed no archive ({last})")
        )
    start = starts[-1]
    try:
        end = lines.index(END, start)
        _, size_text, digest = lines[start].split()
        data = base64.b64decode("".join(lines[start + 1 : end]), validate=True)
    except ValueError as e:
        raise DtrainError(f"fetching the run of job {job_id}: damaged archive ({e})") from e
    if len(data) != int(size_text) or hashlib.sha256(data).hexdigest() != digest:
        raise DtrainError(f"fetching the run of job {job_id}: the archive arrived damaged")
    return data


def unpack(data: bytes, dest: Path) -> list[str]:
    """Unpack into ``dest`` (which must not exist), whole or not at all; the names unpacked."""
    if dest.exists():
        raise DtrainError(f"{dest} already exists: give --out a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = tar.getnames()
            # The data filter refuses absolute paths, "..", links leaving the directory and
            # device files: an archive is data, never a way to write elsewhere.
            tar.extractall(tmp, filter="data")
        # mkdtemp made it private; the run directory gets the mode a new directory gets here.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        os.rename(tmp, dest)
    except (tarfile.TarError, OSError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DtrainError(f"cannot unpack the run into {dest}: {e}") from e
    return names


def check_dest(dest: Path) -> None:
    """Refuse a destination the run could not be unpacked into: checked before the cluster is
    asked anything, so a typo costs no helper job and no wait."""
    if dest.exists():
        raise DtrainError(f"{dest} already exists: give --out a new directory")
    check_dir(dest, "the fetched run")


def fetch_run(
    client: JobsClient,
    job_id: str,
    dest: Path,
    *,
    python: str = "python",
    everything: bool = False,
    timeout: float = FETCH_TIMEOUT_SECONDS,
) -> tuple[str, list[str]]:
    """Copy job ``job_id``'s run directory into ``dest``: (its path on the node, names copied)."""
    check_dest(dest)
    record = client.get(job_id, results=True)
    if record.run_dir is None:
        when = "ended" if record.status in TERMINAL else "is still"
        raise DtrainError(
            f"job {job_id} names no run directory in its logs: it {when} {record.status} "
            "before training started"
        )
    command = helper_command(python, record.run_dir, client.driver_node(job_id), everything)
    helper, _ = client.run_helper(command, job_id, "fetches", timeout)
    return record.run_dir, unpack(archive_from_logs(client.logs(helper), job_id), dest)
