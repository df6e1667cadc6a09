"""The public API is exactly what the modules export, sorted, and importable from deswm."""

from __future__ import annotations

import importlib

import deswm

PUBLIC_MODULES = [
    "deswm._archive",
    "deswm._config",
    "deswm._errors",
    "deswm._flagging",
    "deswm._model",
    "deswm._orchestrator",
    "deswm._packer",
    "deswm._protocols",
    "deswm._purge",
    "deswm._readers",
    "deswm._records",
    "deswm._routing",
    "deswm._sources.sql",
    "deswm._sqltypes",
    "deswm._stores.error_store",
    "deswm._stores.sql",
    "deswm._throttle",
    "deswm._verify",
]
# Re-exported without the rest of their module (helpers and constants stay there).
ALSO = {"PartInfo", "LegacyArchiveConfigStore", "ObjectStoreWatermarkStore"}
NOT_REEXPORTED = {"utc_now", "parse_size", "DEFAULT_TABLE", "DEFAULT_ERROR_TABLE", "ArchiveLookup"}


def test_all_is_sorted_and_unique() -> None:
    assert deswm.__all__ == sorted(deswm.__all__, key=lambda n: (n.upper() != n, n))
    assert len(set(deswm.__all__)) == len(deswm.__all__)


def test_every_module_export_is_reexported() -> None:
    expected = set(ALSO)
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        expected |= set(module.__all__) - NOT_REEXPORTED
    assert set(deswm.__all__) == expected


def test_every_name_resolves() -> None:
    for name in deswm.__all__:
        assert getattr(deswm, name) is not None, name


def test_version() -> None:
    assert isinstance(deswm.__version__, str)
    assert deswm.__version__
