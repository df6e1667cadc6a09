"""The watermark store as JSON objects: a local folder, S3, or the fsspec memory filesystem.

No database needed: each watermark is one small JSON object, each manual change one more.
Layout under the store's URL (every pipeline and stage name is one path segment, with
``/``, ``%``, a leading ``.`` and any character outside ``A-Z a-z 0-9 _ - .`` written as
``%XX`` UTF-8 escapes, so no name can climb out of its folder or hide itself)::

    watermarks/{pipeline}/{stage}/{partition}.json     the current watermark
    history/{changed_at}-{key digest}-{version}.json   one object per manual set()

``changed_at`` is ``YYYYMMDDTHHMMSSffffffZ`` (names sort by time) and the key digest the
first 16 hex digits of the sha256 of ``pipeline NUL stage NUL partition``, so a listing
alone finds the history of one watermark. Every object names its full key inside, and a
read checks it: on a case-insensitive folder ``Orders`` and ``orders`` would share a file,
and that raises :class:`~deswm.WatermarkError` instead of mixing two watermarks.

**Compare-and-set.** Every object carries its ``version``; a write replaces the object
only if it is still the one read:

* S3: ``PutObject`` with ``IfMatch=<ETag read>`` (``IfNoneMatch="*"`` to create), sent
  through the s3fs client. A failed precondition (HTTP 412) is a conflict; S3's 409
  (another conditional write in flight) is retried; any other error is an error, never a
  conflict. Each object holds a random ``write_id``, so when a write's answer is lost and
  s3fs retries it into a 412, re-reading the object tells "we won" from "they won".
* Local folder: the object is replaced with a temp file, fsync and ``os.replace`` (readers
  see the old or the new object, never a part) while an exclusive ``flock`` on a lock file
  beside it (``.{partition}.json.lock``, never deleted: deleting it would let two
  processes lock two different files) is held across read-compare-write. ``flock`` locks
  belong to an open file, so they exclude threads as well as processes, and the kernel
  drops them when a process dies: a crash leaves no stale lock. Creation links a complete
  temp file into place with ``os.link``, which fails if the name exists.
* Memory filesystem: it exists only inside one process, so one process-wide lock.

The store remembers the token (on S3 the ETag) of the version it last read or wrote, so a
runner's ``advance`` is one conditional PUT on S3, with no GET first, while nobody else
writes; if somebody did, the condition fails and it is a conflict as before.

**History.** ``set()`` first replaces the watermark (the compare-and-set), then creates
its history object. The watermark object keeps the change it made until the next write,
which first creates that history object if it is missing, so a crash between the two
writes delays the record, never loses it. ``history(key)`` orders by version (exact);
``history()`` of all keys orders by the writers' clocks (``changed_at``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from deswm import _publish
from deswm._checkpoints import Checkpoint, reach
from deswm._defaults import default_actor
from deswm._errors import ConfigError, DeswmError, WatermarkConflict, WatermarkError
from deswm._model import Watermark, WatermarkChange, WatermarkKey
from deswm._objectstore import ObjectStore, open_store
from deswm._redact import redact, scrub, secret_values
from deswm._stores._base import WatermarkStoreBase
from deswm._timeutil import format_utc

__all__ = ["ObjectStoreWatermarkStore"]

FORMAT: Final = "deswm.watermark/1"
CHANGE_FORMAT: Final = "deswm.watermark-change/1"
WATERMARKS: Final = "watermarks"
HISTORY: Final = "history"

_SEGMENT_MAX: Final = 200
_ACTOR_MAX: Final = 255
_SET_ATTEMPTS: Final = 10
_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_HISTORY_NAME: Final = re.compile(
    r"^(?P<stamp>\d{8}T\d{12}Z)-(?P<digest>[0-9a-f]{16})-(?P<version>\d+)\.json$"
)


def _segment(text: str) -> str:
    """``text`` as one safe path segment (see the module docs)."""
    out: list[str] = []
    for index, char in enumerate(text):
        if char in _SAFE and not (index == 0 and char == "."):
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def _digest(key: WatermarkKey) -> str:
    text = f"{key.pipeline}\0{key.stage}\0{key.partition}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _now() -> datetime:
    return datetime.now(UTC)


def _instant(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"{what} is {value!r}, not a timestamp")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{what} {value!r} has no time zone")
    return parsed.astimezone(UTC)


def _optional_instant(value: object, what: str) -> datetime | None:
    return None if value is None else _instant(value, what)


def _write_id(data: bytes) -> object:
    """The ``write_id`` of an object's bytes, or ``None`` when they hold none."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc.get("write_id") if isinstance(doc, dict) else None


def _encode(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


# --- the store ------------------------------------------------------------------------------

_Stored = tuple[dict[str, Any], str]
"""A watermark object as read: its JSON document and the token of that exact content."""


class ObjectStoreWatermarkStore(WatermarkStoreBase):
    """:class:`~deswm.WatermarkStore` as JSON objects with conditional writes.

    Args:
        url: a local folder, ``file://``, ``s3://bucket/prefix`` or ``memory://name``.
            Other filesystems raise :class:`~deswm.ConfigError`: they would need
            their own conditional write.
        storage_options: passed to fsspec (credentials, ``client_kwargs``, ...); never
            shown in reprs, logs or errors.
        actor: recorded as ``updated_by`` and in the history; default ``user@host``.

    See the module documentation for the layout and the compare-and-set per backend.
    Filesystem failures raise :class:`~deswm.WatermarkError` naming the object.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        storage_options: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> None:
        if not isinstance(url, str | os.PathLike) or not os.fspath(url):
            raise ConfigError(f"must be a folder or URL, got {url!r}", key="watermark.url")
        self._url = os.fspath(url)
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise ConfigError(
                f"must be a mapping, got {type(storage_options).__name__}",
                key="watermark.storage_options",
            )
        options = dict(storage_options or {})
        self._secrets = secret_values(options, min_length=4)
        self._backend: ObjectStore = open_store(self._url, options, key="watermark.url")
        if not self._backend.atomic_conditional_writes:
            raise ConfigError(
                f"{redact(self._url)} is on {type(self._backend.fs).__name__}, which deswm "
                "cannot compare-and-set on",
                key="watermark.url",
                hint="Use a local folder, s3:// or memory://, or SqlWatermarkStore",
            )
        self.kind = self._backend.kind
        if actor is None:
            actor = default_actor()
        if not isinstance(actor, str) or not actor or len(actor) > _ACTOR_MAX:
            raise ConfigError(f"must be a string of 1 to {_ACTOR_MAX} characters", key="actor")
        self._actor = actor
        self._cache: dict[str, _Stored] = {}
        self._cache_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The store's URL with any userinfo or signed parameters masked."""
        return redact(self._url)

    @property
    def actor(self) -> str:
        return self._actor

    def close(self) -> None:
        """Nothing to release (fsspec owns its connections); for symmetry with SQL stores."""

    def __repr__(self) -> str:
        return f"ObjectStoreWatermarkStore({self.url!r}, kind={self.kind})"

    # --- WatermarkStore -----------------------------------------------------------

    def _get_watermark(self, key: WatermarkKey) -> Watermark | None:
        """The stored watermark, or ``None`` if its object does not exist."""
        name = self._name(key)
        stored = self._load(name)
        return None if stored is None else self._watermark(stored[0], name, key)

    def _initialize_watermark(
        self, key: WatermarkKey, position: datetime, lag: timedelta | None, partitions: int
    ) -> Watermark:
        """Create the object at version 1 unless it exists; return the stored watermark.

        Racing initializations all return the object that was created first (S3
        ``IfNoneMatch``, a local ``os.link``).
        """
        name = self._name(key)
        existing = self._load(name)
        if existing is not None:
            return self._watermark(existing[0], name, key)
        doc = self._doc(key, position, version=1, lag=lag, partitions=partitions)
        if self._create(name, doc) is None:
            winner = self._load(name)
            if winner is None:
                raise WatermarkError(
                    f"{self._where(name)} was reported to exist but cannot be read",
                    hint="Check the store's permissions and consistency",
                )
            return self._watermark(winner[0], name, key)
        return self._watermark(doc, name, key)

    def _advance_watermark(self, current: Watermark, position: datetime) -> Watermark:
        """Replace the object with version + 1 if it still holds ``current.version``.

        One conditional write when this store wrote or read that version last; else a
        read first. Raises :class:`~deswm.WatermarkConflict` when the version
        differs or the object is missing.
        """
        key = current.key
        name = self._name(key)
        stored = self._cached(name, current.version) or self._load(name)
        if stored is None:
            raise WatermarkConflict(key, current.version, "missing")
        doc, token = stored
        held = self._watermark(doc, name, key)
        if held.version != current.version:
            raise WatermarkConflict(key, current.version, held.version)
        self._record_pending_change(doc)
        now = _now()
        updated = self._evolve(doc, position, now, change=None)
        if self._replace(name, updated, token) is None:
            actual = self._load(name)
            raise WatermarkConflict(
                key,
                current.version,
                "missing" if actual is None else self._watermark(actual[0], name, key).version,
            )
        reach(Checkpoint.STORE_ADVANCE_AFTER_COMMIT)
        return self._watermark(updated, name, key)

    def _set_watermark(self, key: WatermarkKey, position: datetime, reason: str) -> Watermark:
        """Set the position in any direction (creating the object), then record why.

        The compare-and-set is retried when another writer gets in first; the history
        object follows the watermark write (see the module docs for a crash in between).
        """
        name = self._name(key)
        for attempt in range(_SET_ATTEMPTS):
            if attempt:
                time.sleep(random.uniform(0, 0.005 * attempt))  # let the winner finish
            stored = self._load(name)
            now = _now()
            if stored is None:
                change = self._change(now, None, position, reason)
                doc = self._doc(key, position, version=1, change=change, now=now)
                if self._create(name, doc) is None:
                    continue
            else:
                old, token = stored
                previous = self._watermark(old, name, key)
                self._record_pending_change(old)
                change = self._change(now, previous.position, position, reason)
                doc = self._evolve(old, position, now, change=change)
                if self._replace(name, doc, token) is None:
                    continue
            reach(Checkpoint.STORE_SET_IN_TRANSACTION)
            written = self._watermark(doc, name, key)
            try:
                self._record_change(doc)
            except WatermarkError as exc:
                raise WatermarkError(
                    f"watermark {key} WAS set to {format_utc(position)} (version "
                    f"{written.version}), but its history record could not be written: "
                    f"{exc.message}",
                    hint="The next write of this watermark writes the record; nothing else "
                    "needs doing",
                ) from exc
            return written
        raise WatermarkError(
            f"could not set watermark {key} at {self._where(name)}: other writers changed "
            f"it during each of {_SET_ATTEMPTS} attempts",
            hint="Stop the runners of this pipeline and partition, then set it again",
        )

    def list(self, pipeline: str | None = None) -> Sequence[Watermark]:
        """Every watermark object (or one pipeline's), read and ordered by key."""
        prefix = f"{WATERMARKS}/"
        if pipeline is not None:
            if not isinstance(pipeline, str) or not pipeline:
                return []
            prefix += f"{_segment(pipeline)}/"
        with self._errors("list", prefix):
            names = self._backend.walk(prefix)
        found: list[Watermark] = []
        for name in sorted(names):
            if not name.endswith(".json") or any(p.startswith(".") for p in name.split("/")):
                continue
            stored = self._load(name)
            if stored is None:
                continue  # never deleted by deswm; someone removed it meanwhile
            watermark = self._watermark(stored[0], name, None)
            if pipeline is None or watermark.key.pipeline == pipeline:
                found.append(watermark)
        return sorted(found, key=lambda w: w.key)

    def _list_history(self, key: WatermarkKey | None, limit: int) -> Sequence[WatermarkChange]:
        """Manual changes, newest first, at most ``limit`` (one read per change returned)."""
        if limit == 0:
            return []
        if key is not None:
            self._check_key(key)
        digest = None if key is None else _digest(key)
        prefix = f"{HISTORY}/"
        with self._errors("list", prefix):
            names = self._backend.walk(prefix)
        entries: list[tuple[tuple[int, str], str]] = []
        for name in names:
            match = _HISTORY_NAME.match(name[len(prefix) :])
            if match is None or (digest is not None and match["digest"] != digest):
                continue
            # One watermark: by version, exact. All of them: by the writers' clocks.
            order = (int(match["version"]), match["stamp"]) if digest else (0, match["stamp"])
            entries.append((order, name))
        entries.sort(reverse=True)
        changes: list[WatermarkChange] = []
        for _, name in entries:
            stored = self._load(name)
            if stored is None:
                continue
            change = self._parse_change(stored[0], name)
            if key is None or change.key == key:
                changes.append(change)
                if len(changes) == limit:
                    break
        return changes

    # --- internals: names and documents -------------------------------------------

    def _check_storable(self, key: WatermarkKey) -> None:
        for what, value in (("pipeline", key.pipeline), ("stage", key.stage)):
            if len(_segment(value)) > _SEGMENT_MAX:
                raise ConfigError(
                    f"watermark {what} {value[:40]!r}... is too long for an object name "
                    f"({len(_segment(value))} characters escaped, at most {_SEGMENT_MAX})",
                    key=what,
                )

    def _name(self, key: WatermarkKey) -> str:
        """The object of ``key``, checked by :meth:`_check_key` (the public methods do)."""
        return f"{WATERMARKS}/{_segment(key.pipeline)}/{_segment(key.stage)}/{key.partition}.json"

    def _doc(
        self,
        key: WatermarkKey,
        position: datetime,
        *,
        version: int,
        lag: timedelta | None = None,
        partitions: int = 1,
        change: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "pipeline": key.pipeline,
            "stage": key.stage,
            "partition": key.partition,
            "position": format_utc(position),
            "version": version,
            "lag_us": None if lag is None else lag // timedelta(microseconds=1),
            "partitions": partitions,
            "updated_at": format_utc(now or _now()),
            "updated_by": self._actor,
            "write_id": secrets.token_hex(16),
            "change": change,
        }

    def _evolve(
        self,
        doc: Mapping[str, Any],
        position: datetime,
        now: datetime,
        *,
        change: dict[str, Any] | None,
    ) -> dict[str, Any]:
        return {
            **doc,
            "position": format_utc(position),
            "version": int(doc["version"]) + 1,
            "updated_at": format_utc(now),
            "updated_by": self._actor,
            "write_id": secrets.token_hex(16),
            "change": change,
        }

    def _change(
        self, now: datetime, previous: datetime | None, position: datetime, reason: str
    ) -> dict[str, Any]:
        return {
            "changed_at": format_utc(now),
            "actor": self._actor,
            "previous": None if previous is None else format_utc(previous),
            "position": format_utc(position),
            "reason": reason,
        }

    def _watermark(
        self, doc: Mapping[str, Any], name: str, expected: WatermarkKey | None
    ) -> Watermark:
        """The watermark an object holds; it must name ``expected`` (when given)."""
        try:
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            key = WatermarkKey(str(doc["pipeline"]), str(doc["stage"]), int(doc["partition"]))
            lag_us = doc["lag_us"]
            watermark = Watermark(
                key=key,
                position=_instant(doc["position"], "position"),
                version=int(doc["version"]),
                lag=None if lag_us is None else timedelta(microseconds=int(lag_us)),
                partitions=int(doc["partitions"]),
                updated_at=_optional_instant(doc.get("updated_at"), "updated_at"),
                updated_by=doc.get("updated_by"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WatermarkError(
                f"{self._where(name)} is not a deswm watermark object: {exc}",
                hint="Restore it from a backup or the history objects, or delete it and "
                "set the watermark again (deswm watermark set)",
            ) from exc
        if expected is not None and key != expected:
            raise WatermarkError(
                f"{self._where(name)} holds watermark {key}, not {expected}",
                hint="Names that differ only in case share a file on a case-insensitive "
                "folder; use pipeline names that differ otherwise, or an s3:// store",
            )
        return watermark

    def _parse_change(self, doc: Mapping[str, Any], name: str) -> WatermarkChange:
        try:
            if doc.get("format") != CHANGE_FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {CHANGE_FORMAT!r}")
            return WatermarkChange(
                key=WatermarkKey(str(doc["pipeline"]), str(doc["stage"]), int(doc["partition"])),
                changed_at=_instant(doc["changed_at"], "changed_at"),
                actor=str(doc["actor"]),
                previous=_optional_instant(doc["previous"], "previous"),
                position=_optional_instant(doc["position"], "position"),
                reason=str(doc["reason"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WatermarkError(
                f"{self._where(name)} is not a deswm history object: {exc}",
                hint="Move the object out of the history folder",
            ) from exc

    # --- internals: history ----------------------------------------------------------

    def _history_name(self, doc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        change = doc["change"]
        key = WatermarkKey(str(doc["pipeline"]), str(doc["stage"]), int(doc["partition"]))
        changed = _instant(change["changed_at"], "changed_at")
        stamp = format_utc(changed).replace("-", "").replace(":", "").replace(".", "")
        name = f"{HISTORY}/{stamp}-{_digest(key)}-{int(doc['version']):012d}.json"
        record = {
            "format": CHANGE_FORMAT,
            "pipeline": key.pipeline,
            "stage": key.stage,
            "partition": key.partition,
            "version": int(doc["version"]),
            **change,
        }
        return name, record

    def _record_change(self, doc: Mapping[str, Any]) -> None:
        """Create the history object of the change ``doc`` made (idempotent)."""
        name, record = self._history_name(doc)
        data = _encode(record)
        with self._errors("write", name):
            self._backend.create(name, data)  # an existing one is this very record

    def _record_pending_change(self, doc: Mapping[str, Any]) -> None:
        """Before replacing an object that made a manual change, make sure it is recorded."""
        if doc.get("change"):
            self._record_change(doc)

    # --- internals: reads and conditional writes ---------------------------------

    def _load(self, name: str) -> _Stored | None:
        with self._errors("read", name):
            found = self._backend.read(name)
        if found is None:
            return None
        data, token = found
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise WatermarkError(
                f"{self._where(name)} is not valid JSON: {exc}",
                hint="Restore it from a backup or the history objects",
            ) from exc
        if not isinstance(doc, dict):
            raise WatermarkError(f"{self._where(name)} does not hold a JSON object")
        if name.startswith(f"{WATERMARKS}/"):
            self._remember(name, (doc, token))
        return doc, token

    def _cached(self, name: str, version: int) -> _Stored | None:
        """What this store last read or wrote at ``name``, if it is at ``version``.

        Only an optimisation: the conditional write still fails if the object changed.
        """
        with self._cache_lock:
            stored = self._cache.get(name)
        if stored is None or stored[0].get("version") != version:
            return None
        return stored

    def _remember(self, name: str, stored: _Stored) -> None:
        with self._cache_lock:
            self._cache[name] = stored

    def _create(self, name: str, doc: dict[str, Any]) -> str | None:
        """Create ``name``; ``None`` when another writer's object is there."""
        data = _encode(doc)
        try:
            token = self._backend.create(name, data)
        except Exception as exc:
            token = self._ours_after_error(name, doc, exc, "create")
        if token is None:
            # A retried request may have met our own first attempt: check the write_id.
            found = self._load(name)
            if found is None or found[0].get("write_id") != doc["write_id"]:
                return None
            token = found[1]
        self._remember(name, (doc, token))
        return token

    def _replace(self, name: str, doc: dict[str, Any], token: str) -> str | None:
        """Replace ``name`` if it is still ``token``; ``None`` when it is not."""
        data = _encode(doc)
        try:
            new_token = self._backend.replace(name, data, token)
        except Exception as exc:
            new_token = self._ours_after_error(name, doc, exc, "write")
        if new_token is None:
            found = self._load(name)
            if found is None or found[0].get("write_id") != doc["write_id"]:
                return None
            new_token = found[1]
        self._remember(name, (doc, new_token))
        return new_token

    def _ours_after_error(
        self, name: str, doc: Mapping[str, Any], exc: Exception, action: str
    ) -> str:
        """After a failed write whose outcome is unknown: our token if it landed, else raise.

        Never a conflict: only a failed precondition is one.
        """
        if isinstance(exc, DeswmError):
            raise exc
        try:
            found = self._backend.read(name)
        except Exception as check_exc:
            error = self._wrap(action, name, exc)
            error.add_note(
                f"checking whether the write landed also failed: {type(check_exc).__name__}: "
                f"{self._scrub(str(check_exc))}"
            )
            raise error from exc
        if found is not None and _write_id(found[0]) == doc["write_id"]:
            return found[1]
        raise self._wrap(action, name, exc) from exc

    @contextlib.contextmanager
    def _errors(self, action: str, name: str) -> Iterator[None]:
        """Raise filesystem failures as :class:`WatermarkError` naming the object."""
        try:
            yield
        except DeswmError:
            raise
        except Exception as exc:
            raise self._wrap(action, name, exc) from exc

    def _wrap(self, action: str, name: str, exc: BaseException) -> WatermarkError:
        return WatermarkError(
            f"could not {action} {self._where(name)}: {type(exc).__name__}: "
            f"{self._scrub(str(exc))}",
            hint="Check that the store is reachable and that these credentials may read "
            "and write it; the cause is chained",
        )

    def _where(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}"

    def _scrub(self, text: str) -> str:
        return scrub(redact(text), self._secrets)


_publish(globals())
