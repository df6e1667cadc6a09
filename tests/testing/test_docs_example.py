"""docs/testing.md shows examples/test_my_provider.py verbatim, and the example passes.

``python -m pytest examples`` collects the example directly; this test also runs it from
the default test paths, so the documented code can never rot unnoticed.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples" / "test_my_provider.py"
DOC = ROOT / "docs" / "testing.md"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deswm_docs_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_guide_shows_the_example_verbatim() -> None:
    doc = DOC.read_text()
    code = EXAMPLE.read_text()
    assert f"```python\n{code}```" in doc, "docs/testing.md and the example differ"


def test_the_example_passes() -> None:
    module = load_example()
    tests = [
        function
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("test_") and function.__module__ == module.__name__
    ]
    assert len(tests) == 2
    for test in tests:
        test()


def test_the_examples_contract_suite_passes() -> None:
    """The example's ``TestTenantSourceContract`` runs under pytest, as a user runs it."""
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLE),
            "-k",
            "Contract",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    assert (
        "TestTenantSourceContract"
        in subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", str(EXAMPLE)],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=ROOT,
            check=False,
        ).stdout
    )
