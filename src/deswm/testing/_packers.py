"""A packer on a private in-memory destination, and helpers to look at any destination.

:func:`memory_packer` is the real :class:`~deswm.DesPacker` (so a test proves what
production does) on a fresh ``memory://`` root: fsspec's memory filesystem keeps one
global store, so a unique root per packer is what keeps the state per instance.

The helpers accept whatever a test has in hand (a packer, perhaps behind an ``inject``
proxy, an archive, a :class:`~deswm._shardio.ShardStore`, a local path or a URL):

* :func:`read_objects` and :func:`snapshot` list what is published, by name;
  ``snapshot`` gives ``{name: sha256}``, the thing to compare for G2 (byte-identical
  replay) without holding every object in an assertion message;
* :func:`archive_for` opens the read side on the same destination and router;
* :func:`clear_destination` frees a memory root (or empties a folder).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec

from deswm._archive import Archive
from deswm._packer import DesPacker
from deswm._protocols import ShardRouter
from deswm._shardio import ShardStore
from deswm.testing._faults import FaultyComponent

__all__ = [
    "Destination",
    "archive_for",
    "clear_destination",
    "memory_packer",
    "read_objects",
    "snapshot",
]

Destination = DesPacker | Archive | ShardStore | str | os.PathLike[str]
"""Anything that names a shard destination: a packer, an archive, a store, a path or URL."""

_MEMORY_PREFIX = "memory://deswm-testing"


def memory_packer(router: ShardRouter | None = None, **options: Any) -> DesPacker:
    """A :class:`~deswm.DesPacker` on a new, empty ``memory://`` root.

    Args:
        router: the routing; ``DesRouter(8)`` by default, as for ``DesPacker``.
        options: any other ``DesPacker`` setting (``max_shard_size``, ``workers``, ...).

    Every call gets its own root, so two packers never see each other's objects. Use
    :func:`read_objects` or :func:`snapshot` to look at what it published and
    :func:`clear_destination` to free the memory once a test is done with it.
    """
    return DesPacker(f"{_MEMORY_PREFIX}/{uuid.uuid4().hex}", router, **options)


def archive_for(
    destination: Destination,
    *,
    router: ShardRouter | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Archive:
    """An :class:`~deswm.Archive` reading ``destination`` with the packer's router.

    ``router`` defaults to the packer's or archive's own, else ``DesRouter(8)``. Pass
    ``storage_options`` for a remote destination (a packer does not expose its
    credentials, on purpose).
    """
    destination = _unwrap(destination)
    if isinstance(destination, Archive):
        return destination
    if isinstance(destination, DesPacker):
        router = router if router is not None else destination.router
    return Archive(_url_of(destination), router, storage_options=storage_options)


def read_objects(
    destination: Destination,
    *,
    storage_options: Mapping[str, Any] | None = None,
    hidden: bool = False,
) -> dict[str, bytes]:
    """Every object under ``destination``: ``{relative name: bytes}``, sorted by name.

    Names are relative to the destination root, with ``/`` separators
    (``20240510_3_0000.des``, ``_bigFiles/<sha256>``). Temp files of a local publish in
    progress or abandoned by a crash (names starting with ``.``) are left out unless
    ``hidden`` is true: they are never part of what a reader sees (G11).
    """
    fs, root = _fs_root(destination, storage_options)
    with contextlib.suppress(Exception):  # not every filesystem caches listings
        fs.invalidate_cache(root)
    try:
        paths = sorted(fs.find(root))
    except FileNotFoundError:
        return {}
    found: dict[str, bytes] = {}
    prefix = root.rstrip("/") + "/"
    for path in paths:
        name = path[len(prefix) :] if path.startswith(prefix) else path
        if not hidden and any(part.startswith(".") for part in name.split("/")):
            continue
        found[name] = bytes(fs.cat_file(path))
    return found


def snapshot(
    destination: Destination,
    *,
    storage_options: Mapping[str, Any] | None = None,
    hidden: bool = False,
) -> dict[str, str]:
    """``{relative name: sha256 hex}`` of every published object under ``destination``.

    Two snapshots are equal exactly when the destinations hold byte-identical objects
    under the same names, which is what an idempotent replay promises (G2).
    """
    objects = read_objects(destination, storage_options=storage_options, hidden=hidden)
    return {name: hashlib.sha256(data).hexdigest() for name, data in objects.items()}


def clear_destination(
    destination: Destination, *, storage_options: Mapping[str, Any] | None = None
) -> None:
    """Delete every object under ``destination``; a missing destination is fine."""
    fs, root = _fs_root(destination, storage_options)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(root, recursive=True)


def _unwrap(destination: Destination) -> Destination:
    """The packer behind :func:`~deswm.testing._faults.inject` proxies."""
    while isinstance(destination, FaultyComponent):
        destination = destination.target
    return destination


def _url_of(destination: Destination) -> str:
    destination = _unwrap(destination)
    if isinstance(destination, DesPacker | Archive):
        return destination.store.url
    if isinstance(destination, ShardStore):
        return destination.url
    return os.fspath(destination)


def _fs_root(
    destination: Destination, storage_options: Mapping[str, Any] | None
) -> tuple[Any, str]:
    destination = _unwrap(destination)
    if isinstance(destination, DesPacker | Archive):
        store = destination.store
        return store.fs, store.root
    if isinstance(destination, ShardStore):
        return destination.fs, destination.root
    if not isinstance(destination, str | os.PathLike):
        raise TypeError(
            "a destination is a DesPacker, an Archive, a ShardStore, a path or a URL, "
            f"got {type(destination).__name__}"
        )
    fs, root = fsspec.core.url_to_fs(os.fspath(destination), **dict(storage_options or {}))
    return fs, str(root).rstrip("/") or str(root)
