"""A submitted job's entrypoint: checks that the node's ``python`` can run dtrain, then runs
``dtrain train``.

The Jobs API runs the entrypoint with the first ``python`` on the PATH of the node's Ray, which
need not be the environment Ray itself runs from (``.venv/bin/ray start`` without the venv on
PATH). Without this check such a job dies in a traceback ending in "No module named 'pyarrow'";
with it, the job's last line names the interpreter, what it lacks and the fix, and
``dtrain submit --wait`` shows that line. Only the standard library is imported before the check,
in syntax any Python 3 reads.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

# Import name -> distribution: what `dtrain train` imports (pyproject's dependencies).
REQUIRED = {
    "ray": "ray[default]",
    "numpy": "numpy",
    "pyarrow": "pyarrow",
    "click": "click",
    "prometheus_client": "prometheus-client",
    "tqdm": "tqdm",
}
MIN_PYTHON = (3, 11)


def problems() -> list[str]:
    if sys.version_info < MIN_PYTHON:
        return ["Python >= {}.{}".format(*MIN_PYTHON)]
    return [dist for module, dist in REQUIRED.items() if importlib.util.find_spec(module) is None]


def from_path() -> bool:
    """Whether this is the ``python`` the entrypoint found on PATH, not one ``--python`` named.

    Paths are compared as given, not resolved: a venv's python links to the system's, and the
    two are different environments.
    """
    found = shutil.which("python")
    return found is not None and os.path.abspath(found) == os.path.abspath(sys.executable)


def main() -> None:
    lacking = problems()
    if lacking:
        # The fix depends on where the interpreter came from: the node's PATH, or `--python`
        # (which the message once called "the first on the PATH" too, sending the user to fix
        # a PATH that was never used).
        if from_path():
            where = "the first on the PATH of the node's Ray"
            fix = (
                "start Ray on every node with dtrain's environment first on PATH, or give "
                "`dtrain submit --python` that environment's python"
            )
        else:
            where = "from `dtrain submit --python`"
            fix = "give `--python` the python of an environment with dtrain installed"
        print(
            f"Error: the python running this job ({sys.executable}, {where}) lacks "
            f"{', '.join(lacking)}: {fix}",
            file=sys.stderr,
        )
        sys.exit(1)
    from dtrain.cli.main import main as dtrain_main

    dtrain_main()


if __name__ == "__main__":
    main()
