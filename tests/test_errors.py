"""``deswm._errors`` is a leaf: every module may import it, it imports no deswm module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import deswm._errors

# Modules errors.py may import at run time: each imports nothing from deswm itself.
LEAVES = {"deswm._redact"}


def _runtime_deswm_imports(path: Path) -> set[str]:
    """deswm modules ``path`` imports when it runs (not those under ``TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in (
            "TYPE_CHECKING",
            "typing.TYPE_CHECKING",
        ):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deswm"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("deswm")}
    return found


def test_errors_imports_only_leaves() -> None:
    errors_path = Path(deswm._errors.__file__)
    # ``deswm`` itself (for _publish) loads no submodule: test_import_cost.py checks that.
    assert _runtime_deswm_imports(errors_path) <= LEAVES | {"deswm"}
    for leaf in LEAVES:
        leaf_path = errors_path.parent / f"{leaf.rpartition('.')[2]}.py"
        assert _runtime_deswm_imports(leaf_path) == set(), leaf


def test_importing_errors_first_loads_only_leaves() -> None:
    script = "import json, sys\nimport deswm._errors\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded = {m for m in json.loads(done.stdout) if m.startswith("deswm")}
    assert loaded == {"deswm", "deswm._errors"} | LEAVES
