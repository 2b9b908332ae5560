"""The local Ray that ``dtrain train`` starts: loopback only, and nothing of it outlives the run.

Loopback. Ray derives what its processes bind from the node's IP: with the node IP 127.0.0.1
the GCS, the raylet, every worker's gRPC server, the dashboard agent and the runtime-env agent
listen on loopback only, otherwise on every interface. ``ray.init(_node_ip_address=...)`` cannot
say so: ``resolve_ip_for_localhost`` turns a loopback address back into the machine's routable
one unless ``ray_constants.ENABLE_RAY_CLUSTER`` is false (Ray's single-machine mode on macOS and
Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). That switch is set for this process (Ray read
the variable when it was imported) and, through the environment, for every Ray process started.

Leftovers. Ray ties the GCS and the raylet to the driver (``PR_SET_PDEATHSIG``), but the
dashboard and runtime-env agents are the raylet's children: when a SIGKILLed driver takes the
raylet and the GCS with it, each agent notices and then blocks for up to a minute reporting the
raylet's death to the dead GCS, still listening. A small reaper process, in its own session so
that it outlives the driver, notes the driver's Ray processes (its descendants) while the driver
lives and ends those still running when it dies. Every process of a dtrain-started Ray also
carries ``DTRAIN_LOCAL_RAY_OWNER=<driver pid>-<its start time>`` in its environment, so the next
local run ends any whose driver is gone if the reaper died too (except the agents, whose
environment Ray's setproctitle overwrites).

Token. Ray writes a new ``~/.ray/auth_token`` with the umask's mode (0644: readable by every
user of the machine); dtrain creates it 0600 before Ray would, and warns about a readable one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

OWNER_VARIABLE = "DTRAIN_LOCAL_RAY_OWNER"
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TERM_GRACE_SECONDS = 2.0
# How often the reaper notes the driver's Ray processes (one read of /proc/*/stat).
SCAN_SECONDS = 0.5
REAPER_CODE = "import sys; from dtrain.service.train.localray import reap; reap(sys.argv[1])"


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, a unique identity."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def owner_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{start_time(pid)}"


def owner_alive(tag: str) -> bool:
    pid, _, ticks = tag.partition("-")
    return pid.isdigit() and start_time(int(pid)) == ticks


def owned_processes() -> dict[int, str]:
    """Every process (readable to us) started by some dtrain's local Ray: pid -> owner tag."""
    key = f"{OWNER_VARIABLE}=".encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for item in env.split(b"\0"):
            if item.startswith(key):
                found[int(entry)] = item[len(key) :].decode("ascii", "replace")
                break
    return found


def end_processes(pids: list[int]) -> list[int]:
    """SIGTERM, a short grace, then SIGKILL: returns the pids that were signalled."""
    signalled = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
    deadline = time.monotonic() + TERM_GRACE_SECONDS
    while time.monotonic() < deadline and any(running(p) for p in signalled):
        time.sleep(0.05)
    for pid in signalled:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return signalled


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def end_orphans() -> list[int]:
    """End the processes of earlier dtrain-started local Rays whose driver is gone."""
    orphans = [pid for pid, tag in owned_processes().items() if not owner_alive(tag)]
    return end_processes(orphans) if orphans else []


def process_table() -> dict[int, tuple[int, str]]:
    """Every process: pid -> (parent pid, start time)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), fields[19])
    return table


def family(tag: str) -> dict[int, str]:
    """The driver's Ray as it is now: every process below the driver or carrying its tag, and
    their descendants (pid -> start time). The tag alone misses the agents: Ray renames them
    with setproctitle, which overwrites the environment that /proc shows."""
    table = process_table()
    driver = int(tag.partition("-")[0]) if tag.partition("-")[0].isdigit() else -1
    tagged = {pid for pid, owner in owned_processes().items() if owner == tag}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, str] = {}
    todo = [driver, *tagged]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in (driver, os.getpid()):  # the reaper is a child too
            found[pid] = table[pid][1]
        todo.extend(p for p in children.get(pid, []) if p not in found and p != os.getpid())
    return found


def reap(tag: str) -> None:
    """The reaper: note the driver's Ray processes while it lives (stdin open), end those still
    running once it is gone (EOF on stdin), however it ended."""
    import select

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's to handle
    known: dict[int, str] = {}
    while True:
        known.update(family(tag))
        ready, _, _ = select.select([sys.stdin.buffer], [], [], SCAN_SECONDS)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
    for _ in range(3):  # a process may still have been starting when the driver died
        known.update(family(tag))
        mine = [pid for pid, started in known.items() if start_time(pid) == started]
        if not mine:
            return
        end_processes(mine)
        time.sleep(0.5)


def _start_reaper(tag: str) -> subprocess.Popen[bytes] | None:
    # Not tagged itself: the next run's sweep must not take the reaper for an orphan.
    env = {k: v for k, v in os.environ.items() if k != OWNER_VARIABLE}
    try:
        return subprocess.Popen(
            # -I: no working directory or PYTHONPATH on sys.path, so a user's own package
            # named like ours cannot stand in for it.
            [sys.executable, "-I", "-c", REAPER_CODE, tag],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd="/",  # holds no directory of the user's busy
            # Its own session: a terminal's signals and a kill of the driver's group spare it.
            start_new_session=True,
        )
    except OSError:
        return None


def token_path() -> Path | None:
    """The token file Ray would create for a new local cluster, or None when it would not."""
    if os.environ.get("RAY_AUTH_MODE", "token").strip().lower() != "token":
        return None
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return None
    return Path.home() / ".ray" / "auth_token"


def ensure_private_token() -> None:
    """Create Ray's token file 0600 before Ray would create it 0644; warn about a readable one.

    Ray writes the same thing (``secrets.token_hex(32)``) with a plain ``open()``; written here
    first, through a private temporary file linked into place, it is never readable by others,
    not even for a moment, and a concurrent writer's token is never replaced.
    """
    path = token_path()
    if path is None:
        return
    try:
        if path.exists():
            if path.stat().st_mode & 0o077:
                print(
                    f"dtrain: warning: {path} is readable by other users of this machine "
                    f"(chmod 600 {path})",
                    file=sys.stderr,
                )
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".auth_token.", dir=path.parent)  # mode 0600
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
            os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    except OSError:
        return  # Ray then creates it (or says why it cannot) as it always does


@contextlib.contextmanager
def local_ray_settings() -> Iterator[None]:
    """Around a new local Ray's whole life: loopback, a private token, a reaper."""
    from ray._private import ray_constants

    end_orphans()
    tag = owner_tag()
    saved = {k: os.environ.get(k) for k in (OWNER_VARIABLE, LOOPBACK_VARIABLE)}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[OWNER_VARIABLE] = tag
    os.environ[LOOPBACK_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ensure_private_token()
    reaper = _start_reaper(tag)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        if reaper is not None and reaper.stdin is not None:
            reaper.stdin.close()  # the reaper sweeps what shutdown left, then exits
            with contextlib.suppress(subprocess.TimeoutExpired):
                reaper.wait(timeout=10)
