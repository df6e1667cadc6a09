"""Which :class:`~deswm._objectstore.base.ObjectStore` serves a URL, by protocol name.

:func:`open_store` opens the URL with fsspec, then picks the implementation registered for
one of the filesystem's protocol names (``file``/``local``, ``memory``, ``s3``/``s3a``);
any other filesystem gets the generic :class:`~deswm._objectstore.fsspec.FsspecStore`. A
missing fsspec backend is a :class:`~deswm.ConfigError` saying what to install.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, Final

import fsspec
from fsspec.registry import known_implementations

from deswm._errors import ConfigError
from deswm._objectstore.base import ObjectStore
from deswm._objectstore.fsspec import FsspecStore
from deswm._objectstore.local import LocalStore
from deswm._objectstore.memory import MemoryStore
from deswm._objectstore.s3 import S3Store
from deswm._redact import redact, scrub, secret_values

__all__ = [
    "StoreFactory",
    "filesystem",
    "install_hint",
    "is_local_protocol",
    "open_store",
    "protocols",
    "register",
]

StoreFactory = Callable[..., ObjectStore]
"""``factory(url, fs, root, *, block_size)``: an implementation's constructor."""

UPLOAD_BLOCK_SIZE: Final = 16 * 2**20
"""Multipart block size for remote publishes: the most a publish holds in memory."""

_IMPLEMENTATIONS: dict[str, StoreFactory] = {
    "file": LocalStore,
    "local": LocalStore,
    "memory": MemoryStore,
    "s3": S3Store,
    "s3a": S3Store,
}
_EXTRAS: Final = {"s3": "s3", "s3a": "s3"}
"""Protocols whose fsspec backend a deswm extra installs."""


def register(protocol: str, factory: StoreFactory) -> None:
    """Serve ``protocol`` URLs with ``factory`` (a class taking ``url, fs, root, block_size``)."""
    _IMPLEMENTATIONS[protocol] = factory


def is_local_protocol(protocol: str) -> bool:
    """Whether URLs of ``protocol`` name local files (``file://``, ``local://``)."""
    return _IMPLEMENTATIONS.get(protocol) is LocalStore


def protocols(fs: Any) -> tuple[str, ...]:
    """The protocol names an fsspec filesystem answers to."""
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def install_hint(protocol: str) -> str:
    """What to install for ``protocol``'s fsspec backend."""
    extra = _EXTRAS.get(protocol)
    if extra is not None:
        return f"pip install 'deswm[{extra}]'"
    known = known_implementations.get(protocol)
    message = known.get("err") if isinstance(known, Mapping) else None
    return str(message) if message else f"Install the fsspec backend for {protocol}://"


def _protocol_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else "file"


def _not_installed(protocol: str, exc: BaseException, secrets: list[str]) -> str:
    return (
        f"the fsspec backend for {protocol}:// is not installed "
        f"({type(exc).__name__}: {scrub(redact(str(exc)), secrets)})"
    )


def filesystem(protocol: str, options: Mapping[str, Any], *, key: str) -> Any:
    """``fsspec.filesystem(protocol, **options)``, a missing backend as a ConfigError.

    ``ValueError`` (no fsspec filesystem knows the protocol) passes through.
    """
    try:
        return fsspec.filesystem(protocol, **options)
    except ImportError as exc:
        raise ConfigError(
            _not_installed(protocol, exc, secret_values(options)),
            key=key,
            hint=install_hint(protocol),
        ) from None


def open_store(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    key: str,
    block_size: int = UPLOAD_BLOCK_SIZE,
) -> ObjectStore:
    """The store for ``url``; ``key`` names the setting in errors (``archive.url``).

    Failures to open the URL are :class:`~deswm.ConfigError` with URL and options
    scrubbed (and not chained: a backend's message may quote a credential).
    """
    text = os.fspath(url)
    options = dict(storage_options or {})
    secrets = secret_values(options)
    try:
        fs, root = fsspec.core.url_to_fs(text, **options)
    except ImportError as exc:
        protocol = _protocol_of(text)
        raise ConfigError(
            f"cannot open {redact(text)}: {_not_installed(protocol, exc, secrets)}",
            key=key,
            hint=install_hint(protocol),
        ) from None
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(
            f"cannot open {redact(text)}: {type(exc).__name__}: {scrub(redact(str(exc)), secrets)}",
            key=key,
            hint="Check the URL and storage_options",
        ) from None
    root = str(root).rstrip("/") or str(root)
    factory: StoreFactory = FsspecStore
    for protocol in protocols(fs):
        if protocol in _IMPLEMENTATIONS:
            factory = _IMPLEMENTATIONS[protocol]
            break
    return factory(text, fs, root, block_size=block_size)
