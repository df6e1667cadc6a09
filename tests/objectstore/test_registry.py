"""Which implementation serves a URL, and what a missing backend says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deswm._errors import ConfigError
from deswm._objectstore import open_store, register
from deswm._objectstore import registry as registry_module
from deswm._objectstore.fsspec import FsspecStore
from deswm._objectstore.local import LocalStore
from deswm._objectstore.memory import MemoryStore


def test_local_and_memory_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path, key="archive.url"), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}", key="archive.url"), LocalStore)
    assert isinstance(open_store("memory://registry-test", key="archive.url"), MemoryStore)


def test_missing_s3fs_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    imported = sys.modules["fsspec.registry"]._registry  # classes fsspec already imported
    monkeypatch.setitem(sys.modules, "s3fs", None)  # ``import s3fs`` raises ImportError
    monkeypatch.delitem(imported, "s3", raising=False)
    with pytest.raises(ConfigError) as caught:
        open_store("s3://bucket/prefix", {"secret": "hunter2-secret"}, key="archive.url")
    assert caught.value.key == "archive.url"
    assert caught.value.hint == "pip install 'deswm[s3]'"
    assert "s3:// is not installed" in caught.value.message
    assert "hunter2-secret" not in str(caught.value)


def test_other_missing_backends_get_fsspecs_hint() -> None:
    assert "gcsfs" in registry_module.install_hint("gcs")
    assert registry_module.install_hint("made-up") == "Install the fsspec backend for made-up://"


def test_a_bad_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cannot open nope-protocol://x") as caught:
        open_store("nope-protocol://x", key="watermark.url")
    assert caught.value.key == "watermark.url"


def test_register_serves_a_protocol_with_another_implementation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Recorded(FsspecStore):
        kind = "recorded"

    monkeypatch.setitem(registry_module._IMPLEMENTATIONS, "memory", Recorded)
    assert isinstance(open_store("memory://registered", key="archive.url"), Recorded)
    register("memory", MemoryStore)
    assert isinstance(open_store("memory://registered", key="archive.url"), MemoryStore)


def test_unregistered_filesystems_get_the_generic_store(monkeypatch: Any) -> None:
    monkeypatch.delitem(registry_module._IMPLEMENTATIONS, "memory")
    store = open_store("memory://generic", key="archive.url")
    assert type(store) is FsspecStore and store.kind == "other"


def test_importing_deswm_does_not_import_s3fs() -> None:
    code = "import deswm, deswm._objectstore, sys; print('s3fs' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
