"""``import deswm`` is cheap: names load on first use (PEP 562), SQL and S3 stacks later."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import deswm
from deswm import _EXPORTS


def _modules_after(code: str) -> list[str]:
    """The modules loaded by ``code`` run in a fresh interpreter."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_import_deswm_loads_neither_sqlalchemy_nor_s3fs() -> None:
    loaded = _modules_after("import deswm")
    assert "sqlalchemy.dialects" not in loaded
    assert not [m for m in loaded if m == "sqlalchemy" or m.startswith("sqlalchemy.")]
    assert not [m for m in loaded if m == "s3fs" or m.startswith("s3fs.")]
    assert not [m for m in loaded if m.startswith("deswm.")]


def test_core_names_load_without_sqlalchemy() -> None:
    loaded = _modules_after("from deswm import Archive, DesRouter, Watermark, WatermarkKey")
    assert "deswm._archive" in loaded
    assert not [m for m in loaded if m == "sqlalchemy" or m.startswith("sqlalchemy.")]


def test_every_offered_name_resolves_to_its_module_attribute() -> None:
    import importlib

    for name, module in _EXPORTS.items():
        assert getattr(deswm, name) is getattr(importlib.import_module(module), name), name
    assert set(deswm.__all__) <= set(_EXPORTS)


def test_dir_lists_every_name() -> None:
    assert set(_EXPORTS) | {"__version__"} <= set(dir(deswm))


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from deswm import *", namespace)
    assert set(deswm.__all__) <= set(namespace)


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        deswm.NoSuchThing  # noqa: B018


def test_public_subpackages_are_attributes_on_first_use() -> None:
    loaded = _modules_after("import deswm\nassert deswm.testing.MemoryWatermarkStore")
    assert "deswm.testing" in loaded
