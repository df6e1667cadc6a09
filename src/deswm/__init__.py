"""deswm: archive the files of a huge SQL table into DES shards, tracked by a watermark.

Everything a host application needs is importable from here; submodules hold the
details (``deswm._container`` for the raw format, ``deswm.testing`` for test tools).

Names are imported on first use (PEP 562), so ``import deswm`` stays cheap: SQLAlchemy,
its dialects and s3fs load only when a component that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deswm._archive import (
        Archive,
        ArchiveBatch,
        IndexCacheStats,
    )
    from deswm._archived_file import (
        ArchivedFile,
    )
    from deswm._config import (
        ArchiveConfig,
        ArchiveSettings,
        AuditSettings,
        Config,
        FilesSettings,
        FlagSettings,
        MonitoringSettings,
        RunSettings,
        ServeSettings,
        SourceSettings,
        WatermarkSettings,
        load_archive_config,
        load_config,
    )
    from deswm._config import parse_size as parse_size
    from deswm._container import (
        PartInfo,
    )
    from deswm._errors import (
        ArchivedDuplicateError,
        BadRowError,
        ConfigError,
        CorruptManifestError,
        CorruptShardError,
        CycleError,
        DatabaseTimeoutError,
        DeswmError,
        DuplicateUidError,
        EntryMismatchError,
        FileMissingError,
        FileReadError,
        LaneError,
        LocationOutsideRootError,
        ManifestMissingError,
        MissingExtraError,
        NaiveDatetimeError,
        NotArchivedError,
        ObjectChangedError,
        PackError,
        ReplicaLagError,
        RowCountError,
        ShardError,
        SourceError,
        UnplaceableRowError,
        UnverifiedEntryError,
        WaitInterrupted,
        WatermarkConflict,
        WatermarkError,
        WatermarkMoveRefused,
    )
    from deswm._flagging import (
        FLAGGED_STAGE,
        FlaggableSource,
        FlagJob,
        FlagResult,
    )
    from deswm._model import (
        DEFAULT_STAGE,
        ArchivedEntry,
        BucketResult,
        Codec,
        CyclePlan,
        CycleResult,
        FileFailure,
        LocationReference,
        Partition,
        PendingStats,
        PublishedShard,
        RecordedFailure,
        RetryResult,
        ShardKey,
        SourceRecord,
        StopReason,
        Watermark,
        WatermarkChange,
        WatermarkKey,
        WatermarkMove,
        Window,
    )
    from deswm._orchestrator import (
        CycleObserver,
        WatermarkOrchestrator,
    )
    from deswm._orchestrator import utc_now as utc_now
    from deswm._packer import (
        DesBucketWriter,
        DesPacker,
    )
    from deswm._protocols import ArchiveLookup as ArchiveLookup
    from deswm._protocols import (
        AuditLog,
        BucketWriter,
        ErrorStore,
        FileReader,
        ManifestRecorder,
        Packer,
        PartitionedSource,
        ReadResult,
        ShardRouter,
        SourceProvider,
        TransactionGuard,
        WatermarkStore,
    )
    from deswm._purge import (
        PURGED_STAGE,
        PurgeError,
        PurgeJob,
        PurgeResult,
    )
    from deswm._readers import (
        FileReaderBase,
        FsspecFileReader,
    )
    from deswm._records import (
        to_pandas,
        to_records,
    )
    from deswm._routing import (
        DesRouter,
    )
    from deswm._sources.sql import (
        SqlSourceProvider,
        SqlTransactionProbe,
    )
    from deswm._sqltypes import (
        UtcDateTime,
    )
    from deswm._stores.error_store import DEFAULT_ERROR_TABLE as DEFAULT_ERROR_TABLE
    from deswm._stores.error_store import (
        SqlErrorStore,
    )
    from deswm._stores.legacy import (
        LegacyArchiveConfigStore,
    )
    from deswm._stores.objectstore import (
        ObjectStoreWatermarkStore,
    )
    from deswm._stores.sql import DEFAULT_TABLE as DEFAULT_TABLE
    from deswm._stores.sql import (
        SqlWatermarkStore,
    )
    from deswm._throttle import (
        LagProbe,
        SourceThrottle,
        SqlReplicaLagProbe,
    )
    from deswm._verify import (
        VerifyReport,
        verify_window,
    )

__version__: str
__all__ = [
    "DEFAULT_STAGE",
    "FLAGGED_STAGE",
    "PURGED_STAGE",
    "Archive",
    "ArchiveBatch",
    "ArchiveConfig",
    "ArchiveSettings",
    "ArchivedDuplicateError",
    "ArchivedEntry",
    "ArchivedFile",
    "AuditLog",
    "AuditSettings",
    "BadRowError",
    "BucketResult",
    "BucketWriter",
    "Codec",
    "Config",
    "ConfigError",
    "CorruptManifestError",
    "CorruptShardError",
    "CycleError",
    "CycleObserver",
    "CyclePlan",
    "CycleResult",
    "DatabaseTimeoutError",
    "DesBucketWriter",
    "DesPacker",
    "DesRouter",
    "DeswmError",
    "DuplicateUidError",
    "EntryMismatchError",
    "ErrorStore",
    "FileFailure",
    "FileMissingError",
    "FileReadError",
    "FileReader",
    "FileReaderBase",
    "FilesSettings",
    "FlagJob",
    "FlagResult",
    "FlagSettings",
    "FlaggableSource",
    "FsspecFileReader",
    "IndexCacheStats",
    "LagProbe",
    "LaneError",
    "LegacyArchiveConfigStore",
    "LocationOutsideRootError",
    "LocationReference",
    "ManifestMissingError",
    "ManifestRecorder",
    "MissingExtraError",
    "MonitoringSettings",
    "NaiveDatetimeError",
    "NotArchivedError",
    "ObjectChangedError",
    "ObjectStoreWatermarkStore",
    "PackError",
    "Packer",
    "PartInfo",
    "Partition",
    "PartitionedSource",
    "PendingStats",
    "PublishedShard",
    "PurgeError",
    "PurgeJob",
    "PurgeResult",
    "ReadResult",
    "RecordedFailure",
    "ReplicaLagError",
    "RetryResult",
    "RowCountError",
    "RunSettings",
    "ServeSettings",
    "ShardError",
    "ShardKey",
    "ShardRouter",
    "SourceError",
    "SourceProvider",
    "SourceRecord",
    "SourceSettings",
    "SourceThrottle",
    "SqlErrorStore",
    "SqlReplicaLagProbe",
    "SqlSourceProvider",
    "SqlTransactionProbe",
    "SqlWatermarkStore",
    "StopReason",
    "TransactionGuard",
    "UnplaceableRowError",
    "UnverifiedEntryError",
    "UtcDateTime",
    "VerifyReport",
    "WaitInterrupted",
    "Watermark",
    "WatermarkChange",
    "WatermarkConflict",
    "WatermarkError",
    "WatermarkKey",
    "WatermarkMove",
    "WatermarkMoveRefused",
    "WatermarkOrchestrator",
    "WatermarkSettings",
    "WatermarkStore",
    "Window",
    "load_archive_config",
    "load_config",
    "to_pandas",
    "to_records",
    "verify_window",
]

_EXPORTS: dict[str, str] = {
    "ArchivedFile": "deswm._archived_file",
    "Archive": "deswm._archive",
    "ArchiveBatch": "deswm._archive",
    "IndexCacheStats": "deswm._archive",
    "ArchiveConfig": "deswm._config",
    "ArchiveSettings": "deswm._config",
    "Config": "deswm._config",
    "FilesSettings": "deswm._config",
    "AuditSettings": "deswm._config",
    "FlagSettings": "deswm._config",
    "MonitoringSettings": "deswm._config",
    "RunSettings": "deswm._config",
    "ServeSettings": "deswm._config",
    "SourceSettings": "deswm._config",
    "WatermarkSettings": "deswm._config",
    "load_archive_config": "deswm._config",
    "load_config": "deswm._config",
    "parse_size": "deswm._config",
    "PartInfo": "deswm._container",
    "ArchivedDuplicateError": "deswm._errors",
    "BadRowError": "deswm._errors",
    "ConfigError": "deswm._errors",
    "CorruptManifestError": "deswm._errors",
    "CorruptShardError": "deswm._errors",
    "CycleError": "deswm._errors",
    "DatabaseTimeoutError": "deswm._errors",
    "DeswmError": "deswm._errors",
    "DuplicateUidError": "deswm._errors",
    "EntryMismatchError": "deswm._errors",
    "FileMissingError": "deswm._errors",
    "FileReadError": "deswm._errors",
    "LaneError": "deswm._errors",
    "LocationOutsideRootError": "deswm._errors",
    "ManifestMissingError": "deswm._errors",
    "MissingExtraError": "deswm._errors",
    "NaiveDatetimeError": "deswm._errors",
    "NotArchivedError": "deswm._errors",
    "ObjectChangedError": "deswm._errors",
    "PackError": "deswm._errors",
    "ReplicaLagError": "deswm._errors",
    "RowCountError": "deswm._errors",
    "ShardError": "deswm._errors",
    "SourceError": "deswm._errors",
    "UnplaceableRowError": "deswm._errors",
    "UnverifiedEntryError": "deswm._errors",
    "WaitInterrupted": "deswm._errors",
    "WatermarkConflict": "deswm._errors",
    "WatermarkError": "deswm._errors",
    "WatermarkMoveRefused": "deswm._errors",
    "FLAGGED_STAGE": "deswm._flagging",
    "FlagJob": "deswm._flagging",
    "FlagResult": "deswm._flagging",
    "FlaggableSource": "deswm._flagging",
    "ArchivedEntry": "deswm._model",
    "BucketResult": "deswm._model",
    "Codec": "deswm._model",
    "CyclePlan": "deswm._model",
    "CycleResult": "deswm._model",
    "DEFAULT_STAGE": "deswm._model",
    "FileFailure": "deswm._model",
    "LocationReference": "deswm._model",
    "Partition": "deswm._model",
    "PendingStats": "deswm._model",
    "PublishedShard": "deswm._model",
    "RecordedFailure": "deswm._model",
    "RetryResult": "deswm._model",
    "ShardKey": "deswm._model",
    "SourceRecord": "deswm._model",
    "StopReason": "deswm._model",
    "Watermark": "deswm._model",
    "WatermarkChange": "deswm._model",
    "WatermarkKey": "deswm._model",
    "WatermarkMove": "deswm._model",
    "Window": "deswm._model",
    "CycleObserver": "deswm._orchestrator",
    "WatermarkOrchestrator": "deswm._orchestrator",
    "utc_now": "deswm._orchestrator",
    "DesBucketWriter": "deswm._packer",
    "DesPacker": "deswm._packer",
    "ArchiveLookup": "deswm._protocols",
    "AuditLog": "deswm._protocols",
    "ManifestRecorder": "deswm._protocols",
    "BucketWriter": "deswm._protocols",
    "ErrorStore": "deswm._protocols",
    "FileReader": "deswm._protocols",
    "Packer": "deswm._protocols",
    "PartitionedSource": "deswm._protocols",
    "ReadResult": "deswm._protocols",
    "ShardRouter": "deswm._protocols",
    "SourceProvider": "deswm._protocols",
    "TransactionGuard": "deswm._protocols",
    "WatermarkStore": "deswm._protocols",
    "PURGED_STAGE": "deswm._purge",
    "PurgeError": "deswm._purge",
    "PurgeJob": "deswm._purge",
    "PurgeResult": "deswm._purge",
    "FileReaderBase": "deswm._readers",
    "FsspecFileReader": "deswm._readers",
    "to_pandas": "deswm._records",
    "to_records": "deswm._records",
    "DesRouter": "deswm._routing",
    "SqlSourceProvider": "deswm._sources.sql",
    "SqlTransactionProbe": "deswm._sources.sql",
    "UtcDateTime": "deswm._sqltypes",
    "DEFAULT_ERROR_TABLE": "deswm._stores.error_store",
    "SqlErrorStore": "deswm._stores.error_store",
    "LegacyArchiveConfigStore": "deswm._stores.legacy",
    "ObjectStoreWatermarkStore": "deswm._stores.objectstore",
    "DEFAULT_TABLE": "deswm._stores.sql",
    "SqlWatermarkStore": "deswm._stores.sql",
    "LagProbe": "deswm._throttle",
    "SourceThrottle": "deswm._throttle",
    "SqlReplicaLagProbe": "deswm._throttle",
    "VerifyReport": "deswm._verify",
    "verify_window": "deswm._verify",
}
"""Every name ``deswm`` offers (``__all__`` and a few module constants), by its module."""


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "__version__":
        from importlib.metadata import version

        return version("deswm")
    if not name.startswith("_"):
        from importlib.util import find_spec

        if find_spec(f"deswm.{name}") is not None:
            # A submodule, as ``import deswm`` used to load most of them (deswm._container).
            return importlib.import_module(f"deswm.{name}")
    raise AttributeError(f"module 'deswm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})
