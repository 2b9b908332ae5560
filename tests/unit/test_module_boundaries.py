"""No dtrain module reaches into another's private names: what a module shares, it makes public.

transport.py and images.py once called dataset's _check_manifest, _read_maybe_gzip and
_parse_idx; a split of a module then breaks callers it cannot see. Tests may patch privates;
the code under service/, workers/ and cli/ may not use them across modules.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "workers", "cli")


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def private_uses(source: str) -> list[str]:
    """``module._name`` and ``from dtrain... import _name`` in ``source`` (dunders are fine)."""
    tree = ast.parse(source)
    modules: set[str] = set()
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dtrain"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                if _is_module(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_check_finds_a_private_use() -> None:
    source = (
        "from dtrain.service.data import sources\n"
        "from dtrain.service.data.manifest import _check_shard_digest\n"
        "x = sources._load_npz\n"
        "y = sources.parse_idx\n"
    )
    assert private_uses(source) == [
        "2: from dtrain.service.data.manifest import _check_shard_digest",
        "3: sources._load_npz",
    ]


def test_no_module_uses_another_modules_private_names() -> None:
    files = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))
    assert len(files) > 50  # the walk found the code
    uses = {
        str(path.relative_to(ROOT)): found
        for path in files
        if (found := private_uses(path.read_text(encoding="utf-8")))
    }
    assert uses == {}
