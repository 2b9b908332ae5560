"""A local Ray that cannot start is one line, not Ray's 40-line traceback (issue 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_local_ray_that_cannot_start_is_one_line(prepared_mnist: Path, tmp_path: Path) -> None:
    # Ray's sockets live under $RAY_TMPDIR; past 107 bytes AF_UNIX refuses the path and
    # ray.init raises an OSError from deep inside its node start-up.
    deep = tmp_path / ("x" * 100)
    deep.mkdir()
    run = ["--data-dir", str(prepared_mnist), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-m", "dtrain.cli.main", "train", "--max-steps", "1", *run],
        env={**os.environ, "RAY_TMPDIR": str(deep), "RAY_ADDRESS": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [done.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("Error: cannot start a local Ray: ")
    assert "AF_UNIX path length" in errors[0]
    # Nothing of the run was made: it failed before the run directory.
    assert not (tmp_path / "run").exists()
