"""The public API is one list (``deswm._EXPORTS``): ``__all__``, ``dir()``, the names type
checkers see and the ``__module__`` of every exported class and function follow from it.
``deswm.testing`` keeps its API the same way (``deswm.testing._EXPORTS``)."""

from __future__ import annotations

import ast
import importlib
import json
import pickle
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest

import deswm
import deswm.testing
from deswm import _EXPORTS

PACKAGES = [deswm, deswm.testing]


def _fresh(code: str) -> object:
    """What ``code`` prints as JSON, run in a new interpreter."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def _checked_names(package: types.ModuleType) -> dict[str, str]:
    """The names the ``if TYPE_CHECKING:`` block of ``package`` re-exports, by module."""
    tree = ast.parse(Path(str(package.__file__)).read_text(encoding="utf-8"))
    blocks = [
        node
        for node in tree.body
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
    ]
    assert len(blocks) == 1
    names: dict[str, str] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, f"{alias.name}: write `{alias.name} as {alias.name}`"
            names[alias.name] = str(node.module)
    return names


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_all_is_the_sorted_export_list(package: types.ModuleType) -> None:
    assert package.__all__ == sorted(package._EXPORTS, key=lambda n: (n.upper() != n, n))


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_type_checkers_see_exactly_the_exports(package: types.ModuleType) -> None:
    assert _checked_names(package) == package._EXPORTS


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_exports_live_in_private_modules(package: types.ModuleType) -> None:
    for name, module in package._EXPORTS.items():
        private = module.removeprefix(package.__name__ + ".")
        assert private.startswith("_"), f"{name} is defined in public module {module}"


@pytest.mark.parametrize("package", ["deswm", "deswm.testing"])
def test_the_public_names_of_the_module_are_all(package: str) -> None:
    """After every name is loaded, nothing public is in vars() that is not exported."""
    public = _fresh(
        f"import json, types, {package} as package\n"
        f"from {package} import *\n"
        "print(json.dumps([n for n, v in vars(package).items() if not n.startswith('_')"
        " and not isinstance(v, types.ModuleType)]))"
    )
    assert isinstance(public, list)
    assert sorted(public) == sorted(importlib.import_module(package).__all__)


def test_dir_is_all_plus_what_is_loaded() -> None:
    listed = dir(deswm)
    assert listed == sorted(listed)
    assert set(deswm.__all__) | {"__version__"} <= set(listed)
    public = {
        n
        for n in listed
        if not n.startswith("_") and not isinstance(getattr(deswm, n), types.ModuleType)
    }
    assert public == set(deswm.__all__)


def test_every_name_resolves() -> None:
    for name in deswm.__all__:
        assert getattr(deswm, name) is not None, name


@pytest.mark.parametrize("name", sorted(_EXPORTS))
def test_exported_classes_and_functions_say_deswm(name: str) -> None:
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    if isinstance(value, type | types.FunctionType):
        assert value.__module__ == "deswm", f"{name}: {value.__module__}"
        assert getattr(deswm, value.__qualname__) is value


def test_the_public_path_shows_however_the_object_was_imported() -> None:
    """A private module imported directly (as deswm's own code does) already says deswm."""
    modules = _fresh(
        "import json\n"
        "from deswm._model import Watermark\n"
        "from deswm._errors import ConfigError\n"
        "from deswm._records import to_records\n"
        "print(json.dumps([Watermark.__module__, ConfigError.__module__,"
        ' to_records.__module__, repr(Watermark).split("\'")[1]]))'
    )
    assert modules == ["deswm", "deswm", "deswm", "deswm.Watermark"]


def test_exported_classes_and_functions_pickle_by_the_public_path() -> None:
    for name in deswm.__all__:
        value = getattr(deswm, name)
        if isinstance(value, type | types.FunctionType):
            dumped = pickle.dumps(value)
            assert b"deswm._" not in dumped, name
            assert pickle.loads(dumped) is value, name


def test_values_pickled_in_one_process_load_in_a_fresh_one() -> None:
    """pickle finds ``deswm.Watermark`` through the lazy ``__getattr__``."""
    from datetime import UTC, datetime

    watermark = deswm.Watermark(
        deswm.WatermarkKey("p", "archived", 0), datetime(2024, 5, 17, tzinfo=UTC), 3
    )
    values = [watermark, watermark.key]
    dumped = pickle.dumps(values).hex()
    loaded = _fresh(
        "import json, pickle, sys\n"
        f"values = pickle.loads(bytes.fromhex({dumped!r}))\n"
        "print(json.dumps([repr(v) for v in values] + [sorted(m for m in sys.modules"
        " if m.startswith('deswm.'))]))"
    )
    assert isinstance(loaded, list)
    assert loaded[:2] == [repr(v) for v in values]
    assert "deswm._model" in loaded[2]


def test_version() -> None:
    assert isinstance(deswm.__version__, str)
    assert deswm.__version__


def test_type_hints_of_exported_value_types_resolve() -> None:
    """get_type_hints looks names up in ``cls.__module__``, which no longer defines them."""
    import attrs

    classes = [getattr(deswm, n) for n in deswm.__all__ if attrs.has(getattr(deswm, n))]
    assert deswm.ArchiveSettings in classes
    for cls in classes:
        hints = typing.get_type_hints(cls)
        assert set(attrs.fields_dict(cls)) <= set(hints), cls
