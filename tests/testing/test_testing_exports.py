"""deswm.testing's public API: sorted, complete, importable, and light to import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import deswm.testing

MODULES = [
    "deswm.testing._checks",
    "deswm.testing._contracts",
    "deswm.testing._dataset",
    "deswm.testing._error_store",
    "deswm.testing._faults",
    "deswm.testing._lifecycle",
    "deswm.testing._packers",
    "deswm.testing._readers",
    "deswm.testing._routers",
    "deswm.testing._schedules",
    "deswm.testing._sources",
    "deswm.testing._stores",
    "deswm.testing._strategies",
]


def test_all_is_sorted_and_unique() -> None:
    names = deswm.testing.__all__
    assert names == sorted(names, key=lambda n: (n.upper() != n, n))
    assert len(set(names)) == len(names)


def test_every_module_export_is_reexported() -> None:
    expected: set[str] = set()
    for name in MODULES:
        expected |= set(importlib.import_module(name).__all__)
    assert set(deswm.testing.__all__) == expected


def test_every_name_resolves_to_the_module_object() -> None:
    for name in deswm.testing.__all__:
        value = getattr(deswm.testing, name)
        assert value is not None, name
    assert deswm.testing.uids is importlib.import_module("deswm.testing._strategies").uids
    assert "uids" in dir(deswm.testing)


def test_fakes_faults_and_checks_need_neither_pytest_nor_hypothesis() -> None:
    code = (
        "import sys, deswm.testing as t; "
        "t.MemoryWatermarkStore(); t.memory_packer(); t.inject(t.MemoryFileReader()); "
        "assert 'hypothesis' not in sys.modules and 'pytest' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('hypothesis', 'pytest')))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        deswm.testing.no_such_thing  # noqa: B018
