"""Path containment: a file location must stay inside the roots a reader was given.

A source table is data, often filled from user input (upload names, tenant paths). A row
naming ``../../etc/x``, an absolute path elsewhere, a symlink out of the folder or another
bucket must not turn the reader into an arbitrary read, nor the purge into an arbitrary
delete. :class:`Roots` is the rule; the ``open_local``/``delete_local`` primitives apply it
to the file actually opened (the kernel's answer, not a string comparison), so a symlink
swapped in between a check and the open cannot lead outside either.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import posixpath
import re
import stat
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Final
from urllib.parse import unquote

import attrs

from deswm._errors import ConfigError

_NATIVE_READ: Callable[[int, str], bytes | None] | None
"""``deswm._native.read_file`` (open beneath a root, fstat, read and close in one
call), or None."""
try:
    from deswm._native import read_file as _NATIVE_READ
except ImportError:  # built without a C compiler: the Python path reads
    _NATIVE_READ = None

__all__ = ["Outside", "Roots", "delete_local", "open_local", "read_native", "read_relative"]

_URL: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_LOCAL_PROTOCOLS: Final = frozenset({"file", "local"})
# Linux: open with O_PATH (no side effects: a FIFO does not block, a device is not
# opened), ask /proc which file that is, and only then open it for reading.
_PROC_FD: Final = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_NOCTTY: Final = getattr(os, "O_NOCTTY", 0)
_READ_FLAGS: Final = os.O_RDONLY | _CLOEXEC | _NONBLOCK | _NOCTTY
_DIR_FLAGS: Final = getattr(os, "O_PATH", os.O_RDONLY) | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC


def _load_openat2() -> Callable[[int, str], int] | None:
    """``openat2(dirfd, path, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`` on Linux, or None.

    The kernel then refuses any resolution that leaves ``dirfd`` (``..``, absolute or
    escaping symlinks: ``EXDEV``), in one system call and with no window for a swap.
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "aarch64"):
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):  # pragma: no cover - a libc without syscall()
        return None
    syscall.restype = ctypes.c_long

    class OpenHow(ctypes.Structure):
        _fields_ = (
            ("flags", ctypes.c_uint64),
            ("mode", ctypes.c_uint64),
            ("resolve", ctypes.c_uint64),
        )

    how = OpenHow(_READ_FLAGS, 0, 0x08 | 0x02)  # RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
    ref, size, number = ctypes.byref(how), ctypes.sizeof(how), 437  # same on both arches

    def openat2(dirfd: int, path: str) -> int:
        fd = int(syscall(number, dirfd, os.fsencode(path), ref, size))
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        return fd

    return openat2


_OPENAT2: Callable[[int, str], int] | None = _load_openat2()
# Errors after which the careful path decides: an escaping or absolute symlink (EXDEV),
# a loop, or a kernel or sandbox without openat2.
_RETRY_CAREFULLY: Final = frozenset({errno.EXDEV, errno.ELOOP, errno.ENOSYS, errno.EPERM})


class Outside(Exception):
    """Internal: ``reason`` why a location is not inside the roots."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotRegular(Exception):
    """Internal: a FIFO, device or socket, which deswm never opens for reading."""


@attrs.frozen
class _LocalRoot:
    lexical: str
    """``os.path.abspath`` of the root as given."""
    real: str
    """Its ``os.path.realpath``: what a file opened below it resolves to."""


@attrs.frozen
class _UrlRoot:
    protocol: str
    parts: tuple[str, ...]
    """Bucket (or host) and prefix components, compared one by one."""


def _below(path: str, root: str) -> bool:
    """Whether ``path`` is strictly below the folder ``root`` (both normalised)."""
    prefix = root if root.endswith("/") else root + "/"
    return path.startswith(prefix) and len(path) > len(prefix)


class Roots:
    """The folders and URL prefixes a reader may read from and delete in.

    Local roots are compared after ``os.path.normpath`` (lexically) and, on the file
    actually opened, after resolving every symlink. URL roots compare protocol, bucket
    and prefix component by component, so ``s3://b/root2/x`` is not inside ``s3://b/root``.
    """

    def __init__(self, roots: Sequence[str], *, allowed_from: int = 0) -> None:
        """``roots[allowed_from:]`` came from ``allowed_roots`` (for the error's key)."""
        local: list[_LocalRoot] = []
        urls: list[_UrlRoot] = []
        for index, root in enumerate(roots):
            key = "files.root" if index < allowed_from else "files.allowed_roots"
            reason = _unsafe_text(root)
            if reason:
                raise ConfigError(f"{root!r} is not a usable root: {reason}", key=key)
            match = _URL.match(root)
            protocol = match.group(0)[:-3].lower() if match else None
            if protocol is None or protocol in _LOCAL_PROTOCOLS:
                path = root.split("://", 1)[1] if protocol else root
                if path.startswith("localhost/"):
                    path = path[len("localhost") :]
                path = os.path.abspath(path)
                local.append(_LocalRoot(path, os.path.realpath(path)))
                continue
            parts = tuple(root.split("://", 1)[1].rstrip("/").split("/"))
            if not parts[0] or any(unquote(p) in (".", "..") for p in parts):
                raise ConfigError(
                    f"{root!r} is not a usable root: it needs a bucket or host and no "
                    "'.' or '..' segments",
                    key=key,
                )
            urls.append(_UrlRoot(protocol, parts))
        self.local = tuple(local)
        self.urls = tuple(urls)
        self._fds: list[int | None] = [None] * len(self.local)
        self._fds_lock = threading.Lock()
        weakref.finalize(self, _close_all, self._fds)

    def beneath(self, path: str) -> tuple[int, str] | None:
        """``(descriptor of its root, path relative to it)`` for a normalised local path."""
        for index, root in enumerate(self.local):
            for prefix in (root.lexical, root.real):
                if _below(path, prefix):
                    fd = self._fds[index]
                    if fd is None:
                        fd = self._open_root(index)
                        if fd is None:
                            return None
                    return fd, path[len(prefix) :].lstrip("/")
        return None

    def first_local_descriptor(self) -> int | None:
        """The descriptor of the first local root (``files.root``), or None."""
        if not self.local:
            return None
        fd = self._fds[0]
        return fd if fd is not None else self._open_root(0)

    def _open_root(self, index: int) -> int | None:
        with self._fds_lock:
            fd = self._fds[index]
            if fd is None:
                try:
                    fd = os.open(self.local[index].real, _DIR_FLAGS)
                except OSError:
                    return None  # not there (yet): the careful path says what is wrong
                self._fds[index] = fd
            return fd

    def __bool__(self) -> bool:
        return bool(self.local or self.urls)

    def check_text(self, location: str) -> None:
        """Refuse what is ambiguous before any joining: NUL, backslashes, ``~``."""
        reason = _unsafe_text(location)
        if reason:
            raise Outside(reason)
        if location.startswith("~"):
            raise Outside("starts with '~', a home folder that deswm never expands")

    def local_path(self, path: str) -> str:
        """``path`` normalised, if it is lexically below a local root; else :class:`Outside`."""
        if not os.path.isabs(path):
            raise Outside("is not an absolute path (a file:// URL with a host?)")
        normal = os.path.normpath(path)
        for root in self.local:
            if _below(normal, root.lexical) or _below(normal, root.real):
                return normal
        raise Outside(f"resolves to {normal}, which is not below {self._local_names()}")

    def url(self, protocol: str, location: str) -> str:
        """``location`` if it is below a URL root of the same protocol; else :class:`Outside`."""
        parts = location.split("://", 1)[1].split("/")
        if any(unquote(p) in (".", "..") for p in parts):
            raise Outside("has a '.' or '..' segment, which object stores do not resolve")
        for root in self.urls:
            if (
                root.protocol == protocol
                and len(parts) > len(root.parts)
                and tuple(parts[: len(root.parts)]) == root.parts
            ):
                return location
        raise Outside(f"is not below {self._url_names()}")

    def holds_real(self, real: str, *, or_root: bool = False) -> bool:
        """Whether a fully resolved local path is below (or, ``or_root``, is) a root."""
        return any(
            _below(real, root.real) or (or_root and real == root.real) for root in self.local
        )

    def _local_names(self) -> str:
        names = [r.lexical for r in self.local]
        return " or ".join(names) if names else "any local root (only URL roots are set)"

    def _url_names(self) -> str:
        names = [f"{r.protocol}://{'/'.join(r.parts)}/" for r in self.urls]
        return " or ".join(names) if names else "any URL root (only local roots are set)"


def _unsafe_text(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL byte"
    if "\\" in text:
        return "contains a backslash, which systems resolve differently ('a\\..\\b')"
    return None


def _close_all(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            os.close(fd)


def _fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _check_regular(mode: int, path: str) -> None:
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "is a directory", path)
    if not stat.S_ISREG(mode):
        raise NotRegular(path)


def open_local(path: str, roots: Roots) -> int:
    """A read-only descriptor of the regular file at ``path``, verified inside ``roots``.

    Raises :class:`Outside` when the file opened (symlinks resolved) is not below a root,
    ``IsADirectoryError`` or :class:`NotRegular` for what is not a regular file, and the
    usual ``OSError`` otherwise.
    """
    global _OPENAT2
    if _OPENAT2 is not None:
        found = roots.beneath(path)
        if found is not None:
            try:
                fd = _OPENAT2(*found)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    _OPENAT2 = None
                if exc.errno not in _RETRY_CAREFULLY:
                    raise
            else:
                return _regular_or_closed(fd, path)
    return _open_carefully(path, roots)


def read_native(path: str, roots: Roots | None) -> bytes | None:
    """The bytes of the regular file at ``path`` through ``deswm._native``, or ``None``
    when the Python path must decide (no C helper, no roots, no root descriptor, a
    symlink to judge, no openat2).

    The same rules as :func:`open_local` plus a read, in one call that releases the GIL
    once: the kernel resolves ``path`` beneath its root's descriptor
    (``RESOLVE_BENEATH``); :class:`NotRegular` for a FIFO, device or socket,
    ``IsADirectoryError`` for a directory, the usual ``OSError`` otherwise. Without
    roots a FIFO is read as ``open()`` would (blocking until a writer comes), which
    only the Python path does.
    """
    global _OPENAT2
    read = _NATIVE_READ
    if read is None or roots is None or _OPENAT2 is None:
        return None
    found = roots.beneath(path)
    if found is None:
        return None
    try:
        data = read(*found)
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            _OPENAT2 = None
        if exc.errno in _RETRY_CAREFULLY:
            return None
        raise
    if data is None:
        raise NotRegular(path)
    return data


def read_relative(location: str, roots: Roots) -> bytes | None:
    """The bytes of a relative ``location`` below the first local root, in one call into
    the C helper; ``None`` when the full path must decide (and say what is wrong).

    Only for a location that is already normal (no ``.`` or ``..`` segment, no empty
    one, no ``~``, NUL, backslash or URL): there the lexical checks cannot refuse it, so
    the kernel's resolution beneath the root (``RESOLVE_BENEATH``, the same as
    :func:`read_native`) is the whole check. This is the common case of a table that
    stores locations relative to ``files.root``; everything else, and every error,
    takes the full path, which reads again.
    """
    read = _NATIVE_READ
    if (
        read is None
        or _OPENAT2 is None
        or not location
        or location[0] in "/.~"
        or location[-1] == "/"
        or "/." in location
        or "//" in location
        or "\\" in location
        or "\x00" in location
        or ":" in location
    ):
        return None
    fd = roots.first_local_descriptor()
    if fd is None:
        return None
    try:
        return read(fd, location)
    except OSError:
        return None


def _open_carefully(path: str, roots: Roots) -> int:
    if _PROC_FD:
        handle = os.open(path, os.O_PATH | _CLOEXEC)
        try:
            real = _fd_path(handle)
            if not roots.holds_real(real):
                raise Outside(f"resolves to {real} (through a symlink), outside the root")
            _check_regular(os.fstat(handle).st_mode, path)
            # Re-open the very inode checked above, not the path (which may have changed).
            return os.open(f"/proc/self/fd/{handle}", os.O_RDONLY | _CLOEXEC | _NOCTTY)
        finally:
            os.close(handle)
    real = os.path.realpath(path)
    if not roots.holds_real(real):
        raise Outside(f"resolves to {real} (through a symlink), outside the root")
    # realpath resolved every symlink: one now at the last step was swapped in since.
    fd = os.open(real, os.O_RDONLY | _CLOEXEC | _NOFOLLOW | _NONBLOCK | _NOCTTY)
    return _regular_or_closed(fd, path)


def _regular_or_closed(fd: int, path: str) -> int:
    """``fd`` if it is a regular file; otherwise it is closed and the check's error raised."""
    try:
        _check_regular(os.fstat(fd).st_mode, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def delete_local(path: str, roots: Roots) -> None:
    """Delete the file ``path`` resolves to, only if that file is inside ``roots``.

    The name removed is the resolved one, looked up in a directory descriptor that was
    itself verified inside a root, so a symlink swapped into the path meanwhile cannot
    redirect the delete. A missing file is not an error.
    """
    if not _PROC_FD:
        real = os.path.realpath(path)
        if not roots.holds_real(real):
            raise Outside(f"resolves to {real} (through a symlink), outside the root")
        if os.path.isdir(real):
            raise IsADirectoryError(21, "is a directory", path)
        try:
            os.remove(real)
        except FileNotFoundError:
            return
        return
    try:
        handle = os.open(path, os.O_PATH | _CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        real = _fd_path(handle)
        if not roots.holds_real(real):
            raise Outside(f"resolves to {real} (through a symlink), outside the root")
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            raise IsADirectoryError(21, "is a directory", path)
    finally:
        os.close(handle)
    folder, name = posixpath.split(real)
    try:
        parent = os.open(folder, os.O_PATH | os.O_DIRECTORY | _CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        where = _fd_path(parent)
        if not roots.holds_real(where, or_root=True):
            raise Outside(f"its folder now resolves to {where}, outside the root")
        os.unlink(name, dir_fd=parent)
    except FileNotFoundError:
        return
    finally:
        os.close(parent)
