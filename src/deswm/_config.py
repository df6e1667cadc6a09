"""Config files (TOML or YAML) to validated settings, and settings to components.

This module and :mod:`deswm.cli` are the only places that know every implementation.
A file looks like::

    [source]
    url = "postgresql+psycopg://archiver:${DB_PASSWORD}@db/files"
    table = "files"

    [watermark]
    pipeline = "files"
    lag_days = 7

    [archive]
    url = "s3://archive-bucket/des"

Strings may use ``${NAME}`` (or ``${NAME:-default}``) to take a value from the
environment, so secrets stay out of the file. Relative local paths (``archive.url``,
``files.root``, ``sqlite:///`` URLs) are resolved against the config file's folder.
Every problem raises :class:`~deswm.ConfigError` naming the key.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import attrs

from deswm import _defaults as defaults
from deswm import _publish
from deswm._codecs import WritableCodec
from deswm._defaults import DEFAULT_LOCK_TIMEOUT
from deswm._errors import ConfigError
from deswm._extras import require
from deswm._humanize import html_table, text_block
from deswm._model import Partition
from deswm._redact import redact_url, remember
from deswm._timeutil import format_utc, parse_timestamp, parse_timezone

if typing.TYPE_CHECKING:
    import sqlalchemy as sa

    from deswm._archive import Archive
    from deswm._flagging import FlagJob
    from deswm._manifest import ManifestStore
    from deswm._orchestrator import WatermarkOrchestrator
    from deswm._packer import DesPacker
    from deswm._protocols import WatermarkStore
    from deswm._purge import PurgeJob
    from deswm._readers import FsspecFileReader
    from deswm._reconcile import ReconcileJob
    from deswm._routing import DesRouter
    from deswm._sources.sql import SqlSourceProvider
    from deswm._stores.audit import SqlAuditLog
    from deswm._stores.error_store import SqlErrorStore
    from deswm._throttle import SourceThrottle

__all__ = [
    "ArchiveConfig",
    "ArchiveSettings",
    "AuditSettings",
    "Config",
    "FilesSettings",
    "FlagSettings",
    "MonitoringSettings",
    "RunSettings",
    "ServeSettings",
    "SourceSettings",
    "WatermarkSettings",
    "load_archive_config",
    "load_config",
    "parse_size",
]

_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_INT64: Final = (-(2**63), 2**63 - 1)
_MAX_SIZE: Final = 2**62
_YEAR: Final = 365 * 86400.0
_PROBE_STATEMENT_TIMEOUT: Final = 30.0  # a replication status read is instant when healthy
DEFAULT_WATERMARK_STATEMENT_TIMEOUT: Final = 300.0
"""Seconds a statement on deswm's own tables may run (they are small: 5 minutes is ample)."""
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "B": 1,
    "K": 1024,
    "KB": 1000,
    "KIB": 1024,
    "M": 1024**2,
    "MB": 1000**2,
    "MIB": 1024**2,
    "G": 1024**3,
    "GB": 1000**3,
    "GIB": 1024**3,
    "T": 1024**4,
    "TB": 1000**4,
    "TIB": 1024**4,
}


def parse_size(value: int | str, key: str) -> int:
    """A byte count from ``1048576``, ``"64MiB"``, ``"10 MB"`` or ``"1GiB"``."""
    if isinstance(value, bool):
        raise ConfigError(f"must be a size, got {value!r}", key=key)
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        unit = (match.group(2) or "").upper() if match else None
        if match is None or unit not in _UNITS:
            raise ConfigError(
                f"{value!r} is not a size", key=key, hint='use bytes or e.g. "64MiB", "1GiB"'
            )
        number = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(number) or number > _MAX_SIZE:
            raise ConfigError(f"{value!r} is too large", key=key, hint="at most 4 EiB")
        size = int(number)
    if size <= 0:
        raise ConfigError(f"must be positive, got {value!r}", key=key)
    if size > _MAX_SIZE:
        raise ConfigError(f"{value!r} is too large", key=key, hint="at most 4 EiB")
    return size


def _redacted(value: str | None) -> str:
    """Reprs of settings never show a password (G13)."""
    return repr(value if value is None else redact_url(value))


def _options_repr(options: dict[str, Any]) -> str:
    return f"<{len(options)} storage option(s)>"


def _size(default: int) -> Any:
    return attrs.field(default=default, metadata={"size": True})


def _bounded(default: Any, low: float, high: float) -> Any:
    """A number that must lie in ``[low, high]`` (checked at load, naming the key)."""
    return attrs.field(default=default, metadata={"range": (low, high)})


def _lock_timeout() -> Any:
    return _bounded(DEFAULT_LOCK_TIMEOUT, 0, _YEAR)


@attrs.frozen
class SourceSettings:
    """``[source]``: the table whose rows name the files."""

    url: str = attrs.field(repr=_redacted)
    table: str = "files"
    schema: str | None = None
    uid_column: str = defaults.UID_COLUMN
    created_at_column: str = defaults.CREATED_AT_COLUMN
    location_column: str = defaults.LOCATION_COLUMN
    size_column: str | None = defaults.SIZE_COLUMN
    timezone: str = "UTC"
    page_size: int = _bounded(defaults.PAGE_SIZE, 1, 1_000_000)
    provider: str | None = None
    """``package.module:Class``, a subclass of SqlSourceProvider to use instead."""
    lock_timeout: float = _lock_timeout()
    """Seconds a statement waits for a table or row lock before failing (0: no limit)."""
    statement_timeout: float = _bounded(0.0, 0, _YEAR)
    """Seconds a statement may run (0: no limit, the default: a streamed page stays open
    while its files are read, which on MariaDB counts as running)."""
    max_rows_per_second: float | None = _bounded(None, 1e-6, 1e12)
    """Rows read per second at most, averaged over each page (unset: no limit)."""
    max_pages_per_second: float | None = _bounded(None, 1e-6, 1e6)
    """Page queries per second at most (unset: no limit)."""
    sleep_coef: float = _bounded(0.0, 0, 1e6)
    """After each page, wait this many times its query time (pt-archiver's --sleep-coef)."""
    replica_url: str | None = attrs.field(default=None, repr=_redacted)
    """A replica (or PostgreSQL primary) whose replication lag pauses the reads."""
    max_replica_lag: float = _bounded(10.0, 0, _YEAR)
    """Seconds of replica lag beyond which reads pause."""
    replica_check_interval: float = _bounded(1.0, 0.001, 86_400)
    """Seconds between two replica lag checks."""


@attrs.frozen
class FilesSettings:
    """``[files]``: how source files are read."""

    root: str | None = None
    """Where relative locations live, and a folder or prefix every location must be in."""
    allowed_roots: tuple[str, ...] = ()
    """Further folders or URLs that absolute locations may be in, each contained the same
    way. Without ``root`` or ``allowed_roots`` the purge refuses to run."""
    storage_options: dict[str, Any] = attrs.field(factory=dict, repr=_options_repr)
    max_workers: int = _bounded(8, 1, 1024)
    retries: int = _bounded(3, 0, 100)


@attrs.frozen
class WatermarkSettings:
    """``[watermark]``: where the watermark lives and how it moves."""

    kind: Literal["sql", "legacy", "object"] = "sql"
    """``sql``: SqlWatermarkStore; ``legacy``: the des_archive_config singleton table;
    ``object``: one JSON object per watermark under a folder or ``s3://`` URL."""
    url: str | None = attrs.field(default=None, repr=_redacted)
    table: str | None = None
    schema: str | None = None
    row_id: int = _bounded(defaults.LEGACY_ROW_ID, *_INT64)
    storage_options: dict[str, Any] = attrs.field(factory=dict, repr=_options_repr)
    pipeline: str | None = None
    lag_days: float = _bounded(defaults.LAG_DAYS, 0, 36_500)
    initial: str | None = attrs.field(default=None, metadata={"timestamp": True})
    lag_guard: Literal["none", "transactions"] = "none"
    """``transactions``: also keep the target before the start of the oldest transaction
    open on the source (PostgreSQL, MariaDB/MySQL), so a long transaction cannot commit
    rows below a committed watermark."""
    lock_timeout: float = _lock_timeout()
    """Seconds a statement on the watermark or error table waits for a lock (0: no limit)."""
    statement_timeout: float = _bounded(DEFAULT_WATERMARK_STATEMENT_TIMEOUT, 0, _YEAR)
    """Seconds a statement on the watermark or error table may run (0: no limit)."""


@attrs.frozen
class ArchiveSettings:
    """``[archive]``: where shards go and how they are built."""

    url: str = attrs.field(repr=_redacted)
    n_bits: int = _bounded(defaults.N_BITS, 4, 16)
    max_shard_size: int = _size(1024**3)
    compression: WritableCodec = "zstd"
    compression_level: int = _bounded(3, -(2**31), 22)
    big_file_threshold: int = _size(10 * 1024**2)
    spill_threshold: int = _size(64 * 1024**2)
    spill_dir: str | None = None
    """Folder for spill files of big buckets, of lanes' rows past ``[run] lane_batch_rows``
    and of the rows streamed to lanes (default: the system temp folder)."""
    workers: int = _bounded(2, 1, 1024)
    storage_options: dict[str, Any] = attrs.field(factory=dict, repr=_options_repr)


@attrs.frozen
class FlagSettings:
    """``[flag]``: the optional back-fill of a legacy ``archived`` column (deswm flag)."""

    column: str = defaults.FLAG_COLUMN
    value: bool | int | str = defaults.FLAG_VALUE
    batch_size: int = _bounded(defaults.FLAG_BATCH_SIZE, 1, 1_000_000)
    max_rows_per_second: float | None = _bounded(None, 1e-6, 1e12)
    verify: Literal["digest", "counts"] = "digest"
    """How a day is checked for late rows before it is flagged (see FlagJob)."""


@attrs.frozen
class AuditSettings:
    """``[audit]``: the optional SQL audit table (a row per archived file and bucket)."""

    url: str | None = attrs.field(default=None, repr=_redacted)
    """The audit database; unset: no audit table (``deswm audit`` works without one)."""
    table: str = defaults.AUDIT_TABLE
    schema: str | None = None


@attrs.frozen
class RunSettings:
    """``[run]``: how cycles run."""

    on_error: Literal["stop", "record"] = defaults.ON_ERROR
    max_failure_ratio: float = _bounded(defaults.MAX_FAILURE_RATIO, 0, 1)
    error_table: str = defaults.ERROR_TABLE
    interval: float = _bounded(3600, 0, _YEAR)
    partitions: int = 1
    partition: int = 0
    max_buckets: int | None = _bounded(None, 1, 10_000_000)
    run_time: float | None = _bounded(None, 1, _YEAR)
    max_failed_cycles: int = _bounded(5, 0, 1_000_000)
    workers: Literal["auto"] | int = defaults.WORKERS
    """Lanes of the packing engine (``"auto"``: the CPUs this process may use)."""
    executor: Literal["auto", "inline", "threads", "processes", "dask"] = defaults.EXECUTOR
    """Where lanes run; ``"inline"`` is the serial in-process path."""
    scheduler: str | None = None
    """The Dask scheduler address (``tcp://host:8786``) for ``executor = "dask"``."""
    buckets_in_flight: int = _bounded(defaults.BUCKETS_IN_FLIGHT, 1, 1000)
    lane_timeout: float | None = _bounded(defaults.LANE_TIMEOUT, 0.001, _YEAR)
    """Seconds the coordinator waits for a bucket's lanes (unset: no limit)."""
    lane_batch_rows: int = _bounded(defaults.LANE_BATCH_ROWS, 0, 2**62)
    """Rows of a lane's share of a bucket the coordinator holds in memory; the rest spill
    to ``deswm-rows-*.jsonl`` in ``[archive] spill_dir`` (0: no bound)."""
    reconcile_every: int = _bounded(0, 0, 1_000_000)
    """With ``run --interval``: reconcile the committed days every N cycles (0: never)."""
    reconcile_repair: bool = False
    """Whether that reconcile also repairs the late rows it finds (``--repair``)."""


@attrs.frozen
class MonitoringSettings:
    """``[monitoring]``: metrics, logs and the health file (each also a ``deswm run`` flag;
    a flag wins over its key)."""

    metrics_port: int | None = _bounded(None, 1, 65535)
    """Serve Prometheus metrics on this port while running (``--metrics-port``)."""
    metrics_push: str | None = attrs.field(default=None, repr=_redacted)
    """A Prometheus Pushgateway URL to push to after every bucket (``--metrics-push``)."""
    metrics_job: str = "deswm"
    """The Pushgateway job name (``--metrics-job``)."""
    metrics_textfile: str | None = None
    """A ``*.prom`` file for node_exporter's textfile collector (``--metrics-textfile``)."""
    health_file: str | None = None
    """A file touched after every committed bucket and successful cycle (``--health-file``)."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line (``--log-format``; ``deswm[json-logs]``)."""
    progress_interval: float = _bounded(30.0, 0.001, _YEAR)
    """Seconds between progress lines of ``--progress`` when stderr is no terminal."""


@attrs.frozen
class ServeSettings:
    """``[serve]``: the HTTP retrieval service (``deswm serve``, docs/serving.md)."""

    host: str = "127.0.0.1"
    port: int = _bounded(8080, 0, 65535)
    token_env: str = "DESWM_SERVE_TOKEN"  # noqa: S105 - the variable's name, not a secret
    """Environment variable holding the bearer token / API key (unset: no auth, loopback only)."""
    cache_entries: int = _bounded(1024, 0, 10_000_000)
    cache_bytes: int = _size(256 * 1024**2)
    threads: int = _bounded(40, 1, 1024)
    """Archive reads running at once (a thread pool: a slow backend never blocks the loop)."""
    workers: int = _bounded(1, 1, 256)
    """Server processes sharing the port (``--workers``), each with its own index cache."""
    access_log: bool = True
    """One log line per request (uvicorn's access log, on stdout); off saves about a tenth
    of the service's CPU per request."""


_SECTIONS: dict[str, type] = {
    "source": SourceSettings,
    "files": FilesSettings,
    "watermark": WatermarkSettings,
    "archive": ArchiveSettings,
    "run": RunSettings,
    "flag": FlagSettings,
    "audit": AuditSettings,
    "monitoring": MonitoringSettings,
    "serve": ServeSettings,
}


@attrs.frozen
class Config:
    """A validated config file. Build components with the ``build_*`` methods."""

    source: SourceSettings
    archive: ArchiveSettings
    watermark: WatermarkSettings = WatermarkSettings()
    files: FilesSettings = FilesSettings()
    run: RunSettings = RunSettings()
    flag: FlagSettings = FlagSettings()
    audit: AuditSettings = AuditSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    serve: ServeSettings = ServeSettings()
    path: Path | None = None

    @property
    def pipeline(self) -> str:
        return self.watermark.pipeline or self.source.table

    def __str__(self) -> str:
        return text_block(*self._display())

    def _repr_html_(self) -> str:
        return html_table(*self._display())

    def _display(self) -> tuple[str, list[tuple[str, object]]]:
        """The settings that differ from their defaults, secrets masked (G13)."""
        rows: list[tuple[str, object]] = [("pipeline", self.pipeline)]
        for name in _SECTIONS:
            settings = getattr(self, name)
            for field in attrs.fields(type(settings)):
                value = getattr(settings, field.name)
                if field.default is not attrs.NOTHING:
                    default = field.default
                    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
                        default = default.factory()
                    if value == default:
                        continue
                if callable(field.repr):  # a URL with a secret, or storage options
                    text = redact_url(value) if isinstance(value, str) else field.repr(value)
                elif isinstance(value, str):
                    text = value
                else:
                    text = repr(value)
                rows.append((f"{name}.{field.name}", text))
        where = f" from {self.path}" if self.path else ""
        return f"deswm config{where}", rows

    @property
    def watermark_url(self) -> str:
        return self.watermark.url or self.source.url

    @property
    def lag(self) -> timedelta:
        return timedelta(days=self.watermark.lag_days)

    @property
    def initial(self) -> datetime | None:
        if self.watermark.initial is None:
            return None
        return parse_timestamp(self.watermark.initial, "watermark.initial")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base: Path | None = None) -> Config:
        """Validate a parsed config (``base``: folder that relative paths are relative to)."""
        _require_sections(data, ("source", "archive"))
        sections: dict[str, Any] = {}
        for name, section_type in _SECTIONS.items():
            sections[name] = _build_section(section_type, name, _section(data, name))
        config = cls(path=None, **sections)
        remember(config.source.url)
        if config.source.replica_url is not None:
            remember(config.source.replica_url)
        if config.watermark.url is not None:
            remember(config.watermark.url)
        if config.audit.url is not None:
            remember(config.audit.url)
        if config.monitoring.metrics_push is not None:
            remember(config.monitoring.metrics_push)
        config = _resolve_paths(config, base)
        config._validate()
        return config

    def _validate(self) -> None:
        from deswm._engines import parse_url

        parse_url(self.source.url, "source.url")
        if self.audit.url is not None:
            parse_url(self.audit.url, "audit.url")
            if self.audit.url == self.source.url and self.audit.table == self.source.table:
                raise ConfigError(
                    f"is the source table {self.source.table!r}: deswm never writes there",
                    key="audit.table",
                    hint=f"Use another table, e.g. {defaults.AUDIT_TABLE!r}",
                )
        if self.watermark.url is not None and self.watermark.kind != "object":
            parse_url(self.watermark.url, "watermark.url")
        if self.source.replica_url is not None:
            backend = parse_url(self.source.replica_url, "source.replica_url").get_backend_name()
            if backend not in ("postgresql", "mysql", "mariadb"):
                raise ConfigError(
                    f"replica lag is read from PostgreSQL or MariaDB/MySQL, not {backend}",
                    key="source.replica_url",
                )
        parse_timezone(self.source.timezone, "source.timezone")
        if self.watermark.lag_guard == "transactions":
            backend = parse_url(self.source.url, "source.url").get_backend_name()
            if backend not in ("postgresql", "mysql", "mariadb"):
                raise ConfigError(
                    f'"transactions" reads the open transactions of PostgreSQL or '
                    f"MariaDB/MySQL; {backend} does not show them",
                    key="watermark.lag_guard",
                    hint='remove watermark.lag_guard (or set it to "none")',
                )
        if self.watermark.lag_days < 0:
            raise ConfigError(
                f"must be zero or positive, got {self.watermark.lag_days}", key="watermark.lag_days"
            )
        if self.watermark.initial is not None:
            parse_timestamp(self.watermark.initial, "watermark.initial")
        if self.source.page_size < 1:
            raise ConfigError("must be at least 1", key="source.page_size")
        if self.files.max_workers < 1:
            raise ConfigError("must be at least 1", key="files.max_workers")
        if self.files.retries < 0:
            raise ConfigError("must be zero or positive", key="files.retries")
        if self.watermark.kind == "object" and not self.watermark.url:
            raise ConfigError(
                'kind = "object" needs the folder or URL of the watermark objects',
                key="watermark.url",
                hint='e.g. url = "s3://bucket/deswm-watermarks" or a local folder',
            )
        if self.watermark.kind == "legacy" and self.run.partitions > 1:
            raise ConfigError(
                "the legacy des_archive_config table holds one watermark, not one per partition",
                key="watermark.kind",
                hint='use kind = "sql" (the default) with run.partitions > 1',
            )
        if not 0 <= self.run.max_failure_ratio <= 1:
            raise ConfigError("must be from 0 to 1", key="run.max_failure_ratio")
        try:
            Partition(self.run.partition, self.run.partitions)
        except ValueError as exc:
            raise ConfigError(str(exc), key="run.partition") from None

    # --- building components ------------------------------------------------------------

    def build_router(self) -> DesRouter:
        from deswm._routing import DesRouter

        with _rekeyed("archive"):
            return DesRouter(self.archive.n_bits)

    def build_engines(self, *, read_only: bool = False) -> tuple[sa.Engine, sa.Engine]:
        """Engines for the source and for deswm's own tables (one engine for one URL).

        With ``watermark.kind = "object"`` the watermark is not in a database, and the
        error table lives in the source database. Each engine's sessions get the lock
        and statement timeouts of their section. ``read_only``: for commands that only
        read; a missing SQLite file is an error instead of being created.
        """
        from deswm._engines import create_engine

        source = create_engine(
            self.source.url,
            key="source.url",
            lock_timeout=self.source.lock_timeout,
            statement_timeout=self.source.statement_timeout,
            read_only=read_only,
        )
        if self.watermark.kind == "object":
            return source, source
        same_limits = (self.source.lock_timeout, self.source.statement_timeout) == (
            self.watermark.lock_timeout,
            self.watermark.statement_timeout,
        )
        same_lock = self.source.lock_timeout == self.watermark.lock_timeout
        if self.watermark_url == self.source.url and (
            same_limits or (same_lock and source.dialect.name == "sqlite")
        ):
            # One database, one pool (an in-memory SQLite database exists once per
            # engine); SQLite has no statement timeout to tell the two apart.
            return source, source
        store = create_engine(
            self.watermark_url,
            key="watermark.url" if self.watermark.url else "source.url",
            lock_timeout=self.watermark.lock_timeout,
            statement_timeout=self.watermark.statement_timeout,
            read_only=read_only,
            section="watermark",
        )
        return source, store

    def build_source(self, engine: sa.Engine) -> SqlSourceProvider:
        from deswm._sources.sql import SqlSourceProvider

        provider_type: type[SqlSourceProvider] = SqlSourceProvider
        if self.source.provider:
            provider_type = _import_class(
                self.source.provider, "source.provider", SqlSourceProvider
            )
        size_column = self.source.size_column or None
        throttle = self.build_throttle()
        with _rekeyed("source"):
            return provider_type(
                engine,
                self.source.table,
                schema=self.source.schema,
                uid_column=self.source.uid_column,
                created_at_column=self.source.created_at_column,
                location_column=self.source.location_column,
                size_column=size_column,
                timezone=parse_timezone(self.source.timezone, "source.timezone"),
                page_size=self.source.page_size,
                **({"throttle": throttle} if throttle is not None else {}),
            )

    def build_throttle(self) -> SourceThrottle | None:
        """The source's rate limits and replica lag pause, or ``None`` when none is set."""
        from deswm._throttle import SourceThrottle, SqlReplicaLagProbe

        settings = self.source
        probe = None
        if settings.replica_url is not None:
            from deswm._engines import create_engine

            probe = SqlReplicaLagProbe(
                create_engine(
                    settings.replica_url,
                    key="source.replica_url",
                    lock_timeout=settings.lock_timeout,
                    statement_timeout=_PROBE_STATEMENT_TIMEOUT,
                )
            )
        throttle = SourceThrottle(
            max_rows_per_second=settings.max_rows_per_second,
            max_pages_per_second=settings.max_pages_per_second,
            sleep_coef=settings.sleep_coef,
            lag_probe=probe,
            max_replica_lag=settings.max_replica_lag,
            replica_check_interval=settings.replica_check_interval,
        )
        return throttle if throttle.limits_anything else None

    def build_store(self, engine: sa.Engine) -> WatermarkStore:
        """The watermark store ``watermark.kind`` names (``engine``: for the SQL kinds)."""
        with _rekeyed("watermark"):
            return self._build_store(engine)

    def _build_store(self, engine: sa.Engine) -> WatermarkStore:
        settings = self.watermark
        if settings.kind == "object":
            from deswm._stores.objectstore import ObjectStoreWatermarkStore

            assert settings.url is not None  # validated
            return ObjectStoreWatermarkStore(
                settings.url, storage_options=settings.storage_options or None
            )
        if settings.kind == "legacy":
            from deswm._stores.legacy import LEGACY_TABLE, LegacyArchiveConfigStore

            return LegacyArchiveConfigStore(
                engine,
                table=settings.table or LEGACY_TABLE,
                schema=settings.schema,
                row_id=settings.row_id,
                pipeline=self.pipeline,
            )
        from deswm._stores.sql import DEFAULT_TABLE, SqlWatermarkStore

        return SqlWatermarkStore(
            engine, table=settings.table or DEFAULT_TABLE, schema=settings.schema
        )

    def build_error_store(self, engine: sa.Engine) -> SqlErrorStore:
        from deswm._stores.error_store import SqlErrorStore

        with _rekeyed("run", {"table": "run.error_table", "schema": "watermark.schema"}):
            return SqlErrorStore(engine, table=self.run.error_table, schema=self.watermark.schema)

    def build_reader(self) -> FsspecFileReader:
        from deswm._readers import FsspecFileReader

        with _rekeyed("files", _READER_KEYS):
            return FsspecFileReader(
                root=self.files.root,
                allowed_roots=self.files.allowed_roots,
                storage_options=self.files.storage_options or None,
                max_workers=self.files.max_workers,
                retries=self.files.retries,
            )

    def build_packer(self, router: DesRouter | None = None) -> DesPacker:
        from deswm._packer import DesPacker

        with _rekeyed("archive"):
            return DesPacker(
                self.archive.url,
                router or self.build_router(),
                storage_options=self.archive.storage_options or None,
                compression=self.archive.compression,
                compression_level=self.archive.compression_level,
                max_shard_size=self.archive.max_shard_size,
                big_file_threshold=self.archive.big_file_threshold,
                spill_threshold=self.archive.spill_threshold,
                spill_dir=self.archive.spill_dir,
                workers=self.archive.workers,
            )

    def build_archive(self) -> Archive:
        from deswm._archive import Archive

        with _rekeyed("archive"):
            return Archive(
                self.archive.url,
                self.build_router(),
                storage_options=self.archive.storage_options or None,
            )

    def build_audit_log(self, router: DesRouter | None = None) -> SqlAuditLog | None:
        """The SQL audit table of ``[audit] url``, or ``None`` when it is not set."""
        if self.audit.url is None:
            return None
        from deswm._stores.audit import SqlAuditLog

        with _rekeyed("audit"):
            return SqlAuditLog(
                self.audit.url,
                router or self.build_router(),
                table=self.audit.table,
                schema=self.audit.schema,
            )

    def build_manifests(self) -> ManifestStore:
        """The bucket manifests beside the archive's shards (:mod:`deswm._manifest`)."""
        from deswm._manifest import ManifestStore

        return ManifestStore(self.build_archive().store, self.build_router())

    def build_flag_job(self, *, verify: Literal["digest", "counts"] | None = None) -> FlagJob:
        """The flag stage: back-fills ``flag.column`` behind the archived watermark
        (``verify``: overrides ``flag.verify``)."""
        from deswm._flagging import FlagJob
        from deswm._sources.sql import SqlSourceProvider

        orchestrator = self.build_orchestrator(partition=0)
        source = orchestrator.source
        if not isinstance(source, SqlSourceProvider):  # pragma: no cover - config builds one
            raise ConfigError("the flag stage needs a SQL source", key="source.url")
        with _rekeyed("flag", {"pipeline": "watermark.pipeline"}):
            return FlagJob(
                orchestrator.store,
                source,
                orchestrator.router,
                pipeline=self.pipeline,
                initial=orchestrator.initial_position(),
                column=self.flag.column,
                value=self.flag.value,
                batch_size=self.flag.batch_size,
                max_rows_per_second=self.flag.max_rows_per_second,
                manifests=self.build_manifests(),
                error_store=orchestrator.error_store,
                verify=verify or self.flag.verify,
            )

    def build_reconcile_job(
        self, *, partition: int | None = None, read_only: bool = False
    ) -> ReconcileJob:
        """Late-row detection and repair over this pipeline's committed days
        (``read_only``: detection only, see :meth:`build_engines`)."""
        from deswm._reconcile import ReconcileJob

        orchestrator = self.build_orchestrator(partition=partition, read_only=read_only)
        return ReconcileJob(orchestrator, self.build_manifests())

    def build_purge_job(self, *, partition: int | None = None, verify: str = "content") -> PurgeJob:
        """The purge stage for this pipeline (deletes archived, verified source files)."""
        from deswm._purge import PurgeJob

        orchestrator = self.build_orchestrator(partition=partition)
        return PurgeJob(
            orchestrator.store,
            orchestrator.source,
            orchestrator.reader,
            self.build_archive(),
            orchestrator.router,
            pipeline=self.pipeline,
            initial=orchestrator.initial_position(),
            partition=orchestrator.partition,
            verify=verify,  # type: ignore[arg-type]  # PurgeJob validates it
            error_store=orchestrator.error_store,
        )

    def build_orchestrator(
        self, *, partition: int | None = None, read_only: bool = False, **overrides: Any
    ) -> WatermarkOrchestrator:
        """The orchestrator this file describes; ``overrides`` go to its constructor.

        ``read_only``: for commands that only read (stats, dry runs, verify, listings);
        see :meth:`build_engines`. The engines built here (source, watermark, replica
        probe) and the audit log are the orchestrator's: its ``close()`` (or ``with``)
        disposes them, so a service that builds one per job keeps no pools behind.
        """
        from deswm._orchestrator import WatermarkOrchestrator

        source_engine, store_engine = self.build_engines(read_only=read_only)
        router = self.build_router()
        index = self.run.partition if partition is None else partition
        try:
            part = Partition(index, self.run.partitions)
        except ValueError as exc:
            raise ConfigError(str(exc), key="run.partition") from None
        options: dict[str, Any] = {
            "pipeline": self.pipeline,
            "lag": self.lag,
            "partition": part,
            "initial": self.initial,
            "on_error": self.run.on_error,
            "error_store": self.build_error_store(store_engine),
            "max_failure_ratio": self.run.max_failure_ratio,
            "max_buckets": self.run.max_buckets,
            "run_time": None if self.run.run_time is None else timedelta(seconds=self.run.run_time),
            "workers": self.run.workers,
            "executor": self.run.executor,
            "scheduler": self.run.scheduler,
            "buckets_in_flight": self.run.buckets_in_flight,
            "lane_timeout": self.run.lane_timeout,
            "lane_batch_rows": self.run.lane_batch_rows,
            "spill_dir": self.archive.spill_dir,
        }
        if self.watermark.lag_guard == "transactions":
            from deswm._sql.transactions import SqlTransactionProbe

            with _rekeyed("watermark"):
                options["lag_guard"] = SqlTransactionProbe(source_engine)
        built_audit = None
        if not read_only and self.audit.url is not None:
            options["audit_log"] = built_audit = self.build_audit_log(router)
        options.update(overrides)
        store = self.build_store(store_engine)
        source = self.build_source(source_engine)
        reader = self.build_reader()
        packer = self.build_packer(router)
        with _rekeyed("run", _ORCHESTRATOR_KEYS):
            orchestrator = WatermarkOrchestrator(store, source, reader, router, packer, **options)
        orchestrator.close_with(*_built_closers(source_engine, store_engine, source, built_audit))
        return orchestrator


def _built_closers(
    source_engine: sa.Engine, store_engine: sa.Engine, source: object, audit: SqlAuditLog | None
) -> list[Callable[[], object]]:
    """What :meth:`Config.build_orchestrator` created and its orchestrator must release
    (an audit log passed in as an override is its caller's)."""
    closers: list[Callable[[], object]] = [source_engine.dispose]
    if store_engine is not source_engine:
        closers.append(store_engine.dispose)
    throttle = getattr(source, "throttle", None)
    probe_engine = getattr(getattr(throttle, "lag_probe", None), "engine", None)
    if probe_engine is not None:
        closers.append(probe_engine.dispose)  # build_throttle made it for this source
    if audit is not None:
        closers.append(audit.close)
    return closers


_READER_KEYS: Final = {
    # FsspecFileReader's own names for its arguments
    "reader.allowed_roots": "files.allowed_roots",
    "reader.max_workers": "files.max_workers",
    "reader.retries": "files.retries",
    "reader.storage_options": "files.storage_options",
}
_ORCHESTRATOR_KEYS: Final = {
    "pipeline": "watermark.pipeline",
    "lag": "watermark.lag_days",
    "initial": "watermark.initial",
    "partition": "run.partition",
}


@attrs.frozen
class ArchiveConfig:
    """The part of a config file that reading the archive needs: ``[archive]``, ``[serve]``
    and ``[monitoring]`` (for ``log_format``).

    ``deswm serve`` loads this (:func:`load_archive_config`), so a service that never reads
    the source starts from a file without ``[source]``, and without the source's secrets
    in its environment: the other sections are neither interpolated nor validated.
    """

    archive: ArchiveSettings
    serve: ServeSettings = ServeSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    path: Path | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base: Path | None = None) -> ArchiveConfig:
        """Validate the reading sections of a parsed config (``base`` as in :class:`Config`)."""
        _require_sections(data, ("archive",))
        sections = {
            name: _build_section(_SECTIONS[name], name, _section(data, name))
            for name in ("archive", "serve", "monitoring")
        }
        config = cls(**sections)
        if base is None:
            return config
        return attrs.evolve(config, archive=_resolve_archive_paths(config.archive, base))

    def build_router(self) -> DesRouter:
        from deswm._routing import DesRouter

        with _rekeyed("archive"):
            return DesRouter(self.archive.n_bits)


@contextlib.contextmanager
def _rekeyed(section: str, aliases: Mapping[str, str] | None = None) -> Iterator[None]:
    """Name the config key in a :class:`ConfigError` a component raised while being built.

    Components name their own arguments (``max_workers``); a file's reader wants the
    setting (``files.max_workers``). A key in ``aliases`` is replaced by its value; an
    undotted key that is a setting of ``[section]`` gets the section in front; other
    keys, which name a setting already, pass through.
    """
    try:
        yield
    except ConfigError as exc:
        key = exc.key
        if type(exc) is not ConfigError or key is None:
            raise
        fields = {f.name for f in attrs.fields(_SECTIONS[section])}
        real = (aliases or {}).get(key) or (
            f"{section}.{key}" if "." not in key and key in fields else None
        )
        if real is None or real == key:
            raise
        prefix = f"{key}: "
        message = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
        raise ConfigError(message, key=real, hint=exc.hint) from exc


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, interpolate and validate a ``.toml``, ``.yaml`` or ``.yml`` config file."""
    file = Path(path)
    data = _read_config_file(file)
    return attrs.evolve(Config.from_mapping(data, base=file.resolve().parent), path=file)


def load_archive_config(path: str | os.PathLike[str]) -> ArchiveConfig:
    """Read the sections of a config file that reading the archive needs (``deswm serve``)."""
    file = Path(path)
    data = _read_config_file(file)
    return attrs.evolve(ArchiveConfig.from_mapping(data, base=file.resolve().parent), path=file)


def _read_config_file(file: Path) -> Any:
    if not file.is_file():
        raise ConfigError(f"config file {str(file)!r} does not exist", hint="pass -c PATH")
    suffix = file.suffix.lower()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc}") from exc
    if suffix == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: invalid TOML: {exc}") from None
    elif suffix in (".yaml", ".yml"):
        yaml = require("yaml", extra="yaml", feature="A YAML config file (or use TOML)")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: invalid YAML: {exc}") from None
    else:
        raise ConfigError(
            f"unknown config file type {suffix!r} ({file})", hint="use .toml, .yaml or .yml"
        )
    return data


# --- validation helpers ---------------------------------------------------------------------


def _require_sections(data: Mapping[str, Any], required: tuple[str, ...]) -> None:
    """Check a parsed file's top level: a table of known sections holding ``required``."""
    if not isinstance(data, Mapping):
        raise ConfigError("the config file must hold a table of sections")
    _check_keys(data, None)
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)}",
            key=unknown[0],
            hint=f"known sections: {', '.join(sorted(_SECTIONS))}",
        )
    for name in required:
        if name not in data:
            raise ConfigError(f"the [{name}] section is required", key=name)


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """One section's settings, ``${NAME}`` interpolated."""
    raw = _interpolate(data.get(name, {}), name)
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table of settings", key=name)
    return raw


def _interpolate(value: Any, key: str) -> Any:
    if isinstance(value, str):
        if "${" in _ENV.sub("", value):
            raise ConfigError(
                "holds a malformed environment reference '${' (the value is not shown: it "
                "may contain a secret)",
                key=key,
                hint="write ${NAME} or ${NAME:-default}; write $${ for a literal '${'",
            )

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"  # an escaped literal
            name, default = match.group(1), match.group(2)
            found = os.environ.get(name)
            if found is None:
                if default is None:
                    raise ConfigError(
                        f"environment variable {name} is not set",
                        key=key,
                        hint=f"export {name}=... or write ${{{name}:-default}}",
                    )
                return default
            return found

        return _ENV.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: _interpolate(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _build_section(section_type: type, name: str, raw: Mapping[str, Any]) -> Any:
    fields = {f.name: f for f in attrs.fields(section_type)}
    _check_keys(raw, name)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]!r}",
            key=f"{name}.{unknown[0]}",
            hint=f"settings of [{name}]: {', '.join(sorted(fields))}",
        )
    # This module's names: the section classes say ``deswm`` as their __module__.
    hints = typing.get_type_hints(section_type, globalns=globals())
    values: dict[str, Any] = {}
    for field_name, value in raw.items():
        key = f"{name}.{field_name}"
        metadata = fields[field_name].metadata
        if metadata.get("size"):
            values[field_name] = parse_size(value, key)
        elif metadata.get("timestamp") and isinstance(value, date | datetime):
            # A native TOML/YAML date (initial = 2024-05-01, unquoted) means the same.
            values[field_name] = format_utc(parse_timestamp(value, key))
        else:
            values[field_name] = _coerce(value, hints[field_name], key)
        if "range" in metadata:
            _check_range(values[field_name], metadata["range"], key)
    try:
        return section_type(**values)
    except TypeError as exc:
        missing = [f for f, a in fields.items() if a.default is attrs.NOTHING and f not in raw]
        if missing:
            raise ConfigError("is required", key=f"{name}.{missing[0]}") from None
        raise ConfigError(str(exc), key=name) from None


def _check_keys(data: Mapping[Any, Any], section: str | None) -> None:
    """YAML allows keys that are not strings (``1: 2``); a config file does not."""
    for name in data:
        if not isinstance(name, str):
            where = f"{section}.{name!r}" if section else repr(name)
            raise ConfigError(
                f"setting names must be strings, got {type(name).__name__} {name!r}",
                key=where,
                hint="quote the key or fix the indentation of the YAML file",
            )


def _check_range(value: Any, bounds: tuple[float, float], key: str) -> None:
    if value is None:
        return
    low, high = bounds
    if value < low:
        named = {0.0: "zero or positive", 1.0: "at least 1"}
        wanted = named.get(float(low), f"from {low:g} to {high:g}")
        raise ConfigError(f"must be {wanted}, got {value!r}", key=key)
    if value > high:
        raise ConfigError(f"must be from {low:g} to {high:g}, got {value!r}", key=key)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(
                f"must be one of {', '.join(map(repr, allowed))}, got {value!r}", key=key
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"must be a list, got {type(value).__name__}", key=key)
        (item,) = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"must be a table, got {type(value).__name__}", key=key)
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"must be true or false, got {value!r}", key=key)
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ConfigError(f"must be an integer, got {value!r}", key=key)
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"must be an integer, got {value!r}", key=key) from None
        if not _INT64[0] <= number <= _INT64[1]:
            raise ConfigError(f"must fit in 64 bits, got {value!r}", key=key)
        return number
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ConfigError(f"must be a number, got {value!r}", key=key)
        try:
            real = float(value)
        except (ValueError, OverflowError):
            raise ConfigError(f"must be a number, got {value!r}", key=key) from None
        if not math.isfinite(real):
            raise ConfigError(f"must be a finite number, got {value!r}", key=key)
        return real
    if annotation is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"must be a non-empty string, got {value!r}", key=key)
        return value
    raise ConfigError(f"unsupported setting type {annotation!r}", key=key)  # pragma: no cover


def _resolve_paths(config: Config, base: Path | None) -> Config:
    if base is None:
        return config
    from deswm._engines import resolve_sqlite_url

    def local(path: str | None) -> str | None:
        return _local_path(path, base)

    return attrs.evolve(
        config,
        source=attrs.evolve(config.source, url=resolve_sqlite_url(config.source.url, base)),
        audit=attrs.evolve(
            config.audit,
            url=None if config.audit.url is None else resolve_sqlite_url(config.audit.url, base),
        ),
        watermark=attrs.evolve(
            config.watermark,
            url=_watermark_url(config.watermark, base, local),
        ),
        archive=_resolve_archive_paths(config.archive, base),
        files=attrs.evolve(
            config.files,
            root=local(config.files.root),
            allowed_roots=tuple(str(local(r)) for r in config.files.allowed_roots),
        ),
        monitoring=attrs.evolve(
            config.monitoring,
            metrics_textfile=local(config.monitoring.metrics_textfile),
            health_file=local(config.monitoring.health_file),
        ),
    )


def _local_path(path: str | None, base: Path) -> str | None:
    """``path`` resolved against ``base`` when it is a relative local path."""
    if path is None or "://" in path or os.path.isabs(path):
        return path
    return str((base / path).resolve())


def _resolve_archive_paths(settings: ArchiveSettings, base: Path) -> ArchiveSettings:
    return attrs.evolve(
        settings,
        url=_local_path(settings.url, base) or settings.url,
        spill_dir=_local_path(settings.spill_dir, base),
    )


def _watermark_url(settings: WatermarkSettings, base: Path, local: Any) -> str | None:
    from deswm._engines import resolve_sqlite_url

    if settings.url is None:
        return None
    if settings.kind == "object":
        return str(local(settings.url))
    return resolve_sqlite_url(settings.url, base)


def _import_class(spec: str, key: str, base: type) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{spec!r} is not 'package.module:Class'", key=key)
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {spec!r}: {exc}", key=key) from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(f"{spec!r} is not a subclass of {base.__name__}", key=key)
    return found


_publish(globals())
