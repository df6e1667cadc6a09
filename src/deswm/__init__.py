"""deswm: archive the files of a huge SQL table into DES shards, tracked by a watermark.

Everything a host application needs is importable from here; submodules hold the
details (``deswm.container`` for the raw format, ``deswm.testing`` for test tools).

Names are imported on first use (PEP 562), so ``import deswm`` stays cheap: SQLAlchemy,
its dialects and s3fs load only when a component that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deswm._archived_file import (
        ArchivedFile,
    )
    from deswm.archive import (
        Archive,
        ArchiveBatch,
        IndexCacheStats,
    )
    from deswm.config import (
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
    from deswm.config import parse_size as parse_size
    from deswm.container import (
        PartInfo,
    )
    from deswm.errors import (
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
    from deswm.flagging import (
        FLAGGED_STAGE,
        FlaggableSource,
        FlagJob,
        FlagResult,
    )
    from deswm.model import (
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
    from deswm.orchestrator import (
        CycleObserver,
        WatermarkOrchestrator,
    )
    from deswm.orchestrator import utc_now as utc_now
    from deswm.packer import (
        DesBucketWriter,
        DesPacker,
    )
    from deswm.protocols import ArchiveLookup as ArchiveLookup
    from deswm.protocols import (
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
    from deswm.purge import (
        PURGED_STAGE,
        PurgeError,
        PurgeJob,
        PurgeResult,
    )
    from deswm.readers import (
        FileReaderBase,
        FsspecFileReader,
    )
    from deswm.records import (
        to_pandas,
        to_records,
    )
    from deswm.routing import (
        DesRouter,
    )
    from deswm.sources.sql import (
        SqlSourceProvider,
        SqlTransactionProbe,
    )
    from deswm.sqltypes import (
        UtcDateTime,
    )
    from deswm.stores.errors import DEFAULT_ERROR_TABLE as DEFAULT_ERROR_TABLE
    from deswm.stores.errors import (
        SqlErrorStore,
    )
    from deswm.stores.legacy import (
        LegacyArchiveConfigStore,
    )
    from deswm.stores.objectstore import (
        ObjectStoreWatermarkStore,
    )
    from deswm.stores.sql import DEFAULT_TABLE as DEFAULT_TABLE
    from deswm.stores.sql import (
        SqlWatermarkStore,
    )
    from deswm.throttle import (
        LagProbe,
        SourceThrottle,
        SqlReplicaLagProbe,
    )
    from deswm.verify import (
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
    "Archive": "deswm.archive",
    "ArchiveBatch": "deswm.archive",
    "IndexCacheStats": "deswm.archive",
    "ArchiveConfig": "deswm.config",
    "ArchiveSettings": "deswm.config",
    "Config": "deswm.config",
    "FilesSettings": "deswm.config",
    "AuditSettings": "deswm.config",
    "FlagSettings": "deswm.config",
    "MonitoringSettings": "deswm.config",
    "RunSettings": "deswm.config",
    "ServeSettings": "deswm.config",
    "SourceSettings": "deswm.config",
    "WatermarkSettings": "deswm.config",
    "load_archive_config": "deswm.config",
    "load_config": "deswm.config",
    "parse_size": "deswm.config",
    "PartInfo": "deswm.container",
    "ArchivedDuplicateError": "deswm.errors",
    "BadRowError": "deswm.errors",
    "ConfigError": "deswm.errors",
    "CorruptManifestError": "deswm.errors",
    "CorruptShardError": "deswm.errors",
    "CycleError": "deswm.errors",
    "DatabaseTimeoutError": "deswm.errors",
    "DeswmError": "deswm.errors",
    "DuplicateUidError": "deswm.errors",
    "EntryMismatchError": "deswm.errors",
    "FileMissingError": "deswm.errors",
    "FileReadError": "deswm.errors",
    "LaneError": "deswm.errors",
    "LocationOutsideRootError": "deswm.errors",
    "ManifestMissingError": "deswm.errors",
    "MissingExtraError": "deswm.errors",
    "NaiveDatetimeError": "deswm.errors",
    "NotArchivedError": "deswm.errors",
    "ObjectChangedError": "deswm.errors",
    "PackError": "deswm.errors",
    "ReplicaLagError": "deswm.errors",
    "RowCountError": "deswm.errors",
    "ShardError": "deswm.errors",
    "SourceError": "deswm.errors",
    "UnplaceableRowError": "deswm.errors",
    "UnverifiedEntryError": "deswm.errors",
    "WaitInterrupted": "deswm.errors",
    "WatermarkConflict": "deswm.errors",
    "WatermarkError": "deswm.errors",
    "WatermarkMoveRefused": "deswm.errors",
    "FLAGGED_STAGE": "deswm.flagging",
    "FlagJob": "deswm.flagging",
    "FlagResult": "deswm.flagging",
    "FlaggableSource": "deswm.flagging",
    "ArchivedEntry": "deswm.model",
    "BucketResult": "deswm.model",
    "Codec": "deswm.model",
    "CyclePlan": "deswm.model",
    "CycleResult": "deswm.model",
    "DEFAULT_STAGE": "deswm.model",
    "FileFailure": "deswm.model",
    "LocationReference": "deswm.model",
    "Partition": "deswm.model",
    "PendingStats": "deswm.model",
    "PublishedShard": "deswm.model",
    "RecordedFailure": "deswm.model",
    "RetryResult": "deswm.model",
    "ShardKey": "deswm.model",
    "SourceRecord": "deswm.model",
    "StopReason": "deswm.model",
    "Watermark": "deswm.model",
    "WatermarkChange": "deswm.model",
    "WatermarkKey": "deswm.model",
    "WatermarkMove": "deswm.model",
    "Window": "deswm.model",
    "CycleObserver": "deswm.orchestrator",
    "WatermarkOrchestrator": "deswm.orchestrator",
    "utc_now": "deswm.orchestrator",
    "DesBucketWriter": "deswm.packer",
    "DesPacker": "deswm.packer",
    "ArchiveLookup": "deswm.protocols",
    "AuditLog": "deswm.protocols",
    "ManifestRecorder": "deswm.protocols",
    "BucketWriter": "deswm.protocols",
    "ErrorStore": "deswm.protocols",
    "FileReader": "deswm.protocols",
    "Packer": "deswm.protocols",
    "PartitionedSource": "deswm.protocols",
    "ReadResult": "deswm.protocols",
    "ShardRouter": "deswm.protocols",
    "SourceProvider": "deswm.protocols",
    "TransactionGuard": "deswm.protocols",
    "WatermarkStore": "deswm.protocols",
    "PURGED_STAGE": "deswm.purge",
    "PurgeError": "deswm.purge",
    "PurgeJob": "deswm.purge",
    "PurgeResult": "deswm.purge",
    "FileReaderBase": "deswm.readers",
    "FsspecFileReader": "deswm.readers",
    "to_pandas": "deswm.records",
    "to_records": "deswm.records",
    "DesRouter": "deswm.routing",
    "SqlSourceProvider": "deswm.sources.sql",
    "SqlTransactionProbe": "deswm.sources.sql",
    "UtcDateTime": "deswm.sqltypes",
    "DEFAULT_ERROR_TABLE": "deswm.stores.errors",
    "SqlErrorStore": "deswm.stores.errors",
    "LegacyArchiveConfigStore": "deswm.stores.legacy",
    "ObjectStoreWatermarkStore": "deswm.stores.objectstore",
    "DEFAULT_TABLE": "deswm.stores.sql",
    "SqlWatermarkStore": "deswm.stores.sql",
    "LagProbe": "deswm.throttle",
    "SourceThrottle": "deswm.throttle",
    "SqlReplicaLagProbe": "deswm.throttle",
    "VerifyReport": "deswm.verify",
    "verify_window": "deswm.verify",
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
            # A submodule, as ``import deswm`` used to load most of them (deswm.container).
            return importlib.import_module(f"deswm.{name}")
    raise AttributeError(f"module 'deswm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, "__version__"})
