"""deswm: archive the files of a huge SQL table into DES shards, tracked by a watermark.

The public API is what this package exports (``__all__``), plus two public subpackages:
``deswm.testing`` (fakes, fault injection, strategies and contract suites for code built
on deswm) and ``deswm.serve`` (the HTTP retrieval service). Every other module is private
(``deswm._archive``, ``deswm._stores``, ...): its path may change in any release. Exported
classes and functions say ``deswm.X`` as their ``__module__``, so reprs, docs and pickles
show the path users import.

Names are imported on first use (PEP 562), so ``import deswm`` stays cheap: SQLAlchemy,
its dialects and s3fs load only when a component that needs them is used.
"""

# Helpers are imported under private names: every public name in vars(deswm) is exported.
import importlib as _importlib
import typing as _typing
from types import FunctionType as _FunctionType

# What type checkers see (``X as X`` marks a re-export); a test keeps it equal to _EXPORTS.
if _typing.TYPE_CHECKING:
    from deswm._archive import Archive as Archive
    from deswm._archive import ArchiveBatch as ArchiveBatch
    from deswm._archive import IndexCacheStats as IndexCacheStats
    from deswm._archived_file import ArchivedFile as ArchivedFile
    from deswm._audit import AuditRecord as AuditRecord
    from deswm._config import ArchiveConfig as ArchiveConfig
    from deswm._config import ArchiveSettings as ArchiveSettings
    from deswm._config import AuditSettings as AuditSettings
    from deswm._config import Config as Config
    from deswm._config import FilesSettings as FilesSettings
    from deswm._config import FlagSettings as FlagSettings
    from deswm._config import MonitoringSettings as MonitoringSettings
    from deswm._config import RunSettings as RunSettings
    from deswm._config import ServeSettings as ServeSettings
    from deswm._config import SourceSettings as SourceSettings
    from deswm._config import WatermarkSettings as WatermarkSettings
    from deswm._config import load_archive_config as load_archive_config
    from deswm._config import load_config as load_config
    from deswm._config import parse_size as parse_size
    from deswm._container import PartInfo as PartInfo
    from deswm._errors import ArchivedDuplicateError as ArchivedDuplicateError
    from deswm._errors import BadRowError as BadRowError
    from deswm._errors import ConfigError as ConfigError
    from deswm._errors import CorruptManifestError as CorruptManifestError
    from deswm._errors import CorruptShardError as CorruptShardError
    from deswm._errors import CycleError as CycleError
    from deswm._errors import DatabaseTimeoutError as DatabaseTimeoutError
    from deswm._errors import DeswmError as DeswmError
    from deswm._errors import DuplicateUidError as DuplicateUidError
    from deswm._errors import EntryMismatchError as EntryMismatchError
    from deswm._errors import FileMissingError as FileMissingError
    from deswm._errors import FileReadError as FileReadError
    from deswm._errors import LaneError as LaneError
    from deswm._errors import LateRowsError as LateRowsError
    from deswm._errors import LocationOutsideRootError as LocationOutsideRootError
    from deswm._errors import ManifestMissingError as ManifestMissingError
    from deswm._errors import MissingExtraError as MissingExtraError
    from deswm._errors import NaiveDatetimeError as NaiveDatetimeError
    from deswm._errors import NotArchivedError as NotArchivedError
    from deswm._errors import ObjectChangedError as ObjectChangedError
    from deswm._errors import PackError as PackError
    from deswm._errors import ReplicaLagError as ReplicaLagError
    from deswm._errors import RowCountError as RowCountError
    from deswm._errors import ShardError as ShardError
    from deswm._errors import SourceError as SourceError
    from deswm._errors import UnplaceableRowError as UnplaceableRowError
    from deswm._errors import UnverifiedEntryError as UnverifiedEntryError
    from deswm._errors import WaitInterrupted as WaitInterrupted
    from deswm._errors import WatermarkConflict as WatermarkConflict
    from deswm._errors import WatermarkError as WatermarkError
    from deswm._errors import WatermarkMoveRefused as WatermarkMoveRefused
    from deswm._flagging import FLAGGED_STAGE as FLAGGED_STAGE
    from deswm._flagging import FlaggableSource as FlaggableSource
    from deswm._flagging import FlagJob as FlagJob
    from deswm._flagging import FlagResult as FlagResult
    from deswm._health import HealthFile as HealthFile
    from deswm._manifest import BucketManifest as BucketManifest
    from deswm._manifest import ManifestStore as ManifestStore
    from deswm._metrics import PrometheusObserver as PrometheusObserver
    from deswm._model import DEFAULT_STAGE as DEFAULT_STAGE
    from deswm._model import ArchivedEntry as ArchivedEntry
    from deswm._model import BucketResult as BucketResult
    from deswm._model import Codec as Codec
    from deswm._model import CyclePlan as CyclePlan
    from deswm._model import CycleResult as CycleResult
    from deswm._model import FileFailure as FileFailure
    from deswm._model import LocationReference as LocationReference
    from deswm._model import Partition as Partition
    from deswm._model import PendingStats as PendingStats
    from deswm._model import PublishedShard as PublishedShard
    from deswm._model import RecordedFailure as RecordedFailure
    from deswm._model import RetryResult as RetryResult
    from deswm._model import ShardKey as ShardKey
    from deswm._model import SourceRecord as SourceRecord
    from deswm._model import StopReason as StopReason
    from deswm._model import Watermark as Watermark
    from deswm._model import WatermarkChange as WatermarkChange
    from deswm._model import WatermarkKey as WatermarkKey
    from deswm._model import WatermarkMove as WatermarkMove
    from deswm._model import Window as Window
    from deswm._orchestrator import CycleObserver as CycleObserver
    from deswm._orchestrator import WatermarkOrchestrator as WatermarkOrchestrator
    from deswm._orchestrator import utc_now as utc_now
    from deswm._packer import DesBucketWriter as DesBucketWriter
    from deswm._packer import DesPacker as DesPacker
    from deswm._partitions import run_partition as run_partition
    from deswm._partitions import run_partitions as run_partitions
    from deswm._progress import ProgressObserver as ProgressObserver
    from deswm._protocols import ArchiveLookup as ArchiveLookup
    from deswm._protocols import AuditLog as AuditLog
    from deswm._protocols import BucketWriter as BucketWriter
    from deswm._protocols import ErrorStore as ErrorStore
    from deswm._protocols import FileReader as FileReader
    from deswm._protocols import ManifestRecorder as ManifestRecorder
    from deswm._protocols import Packer as Packer
    from deswm._protocols import PartitionedSource as PartitionedSource
    from deswm._protocols import ReadResult as ReadResult
    from deswm._protocols import ShardRouter as ShardRouter
    from deswm._protocols import SourceProvider as SourceProvider
    from deswm._protocols import TransactionGuard as TransactionGuard
    from deswm._protocols import WatermarkStore as WatermarkStore
    from deswm._purge import PURGED_STAGE as PURGED_STAGE
    from deswm._purge import PurgeError as PurgeError
    from deswm._purge import PurgeJob as PurgeJob
    from deswm._purge import PurgeResult as PurgeResult
    from deswm._readers import FileReaderBase as FileReaderBase
    from deswm._readers import FsspecFileReader as FsspecFileReader
    from deswm._reconcile import ReconcileBucket as ReconcileBucket
    from deswm._reconcile import ReconcileJob as ReconcileJob
    from deswm._reconcile import ReconcileReport as ReconcileReport
    from deswm._records import to_pandas as to_pandas
    from deswm._records import to_records as to_records
    from deswm._routing import DesRouter as DesRouter
    from deswm._sources.sql import SqlSourceProvider as SqlSourceProvider
    from deswm._sql.transactions import SqlTransactionProbe as SqlTransactionProbe
    from deswm._sqltypes import UtcDateTime as UtcDateTime
    from deswm._stores.audit import SqlAuditLog as SqlAuditLog
    from deswm._stores.error_store import SqlErrorStore as SqlErrorStore
    from deswm._stores.legacy import LegacyArchiveConfigStore as LegacyArchiveConfigStore
    from deswm._stores.objectstore import ObjectStoreWatermarkStore as ObjectStoreWatermarkStore
    from deswm._stores.sql import SqlWatermarkStore as SqlWatermarkStore
    from deswm._throttle import LagProbe as LagProbe
    from deswm._throttle import SourceThrottle as SourceThrottle
    from deswm._throttle import SqlReplicaLagProbe as SqlReplicaLagProbe
    from deswm._verify import VerifyReport as VerifyReport
    from deswm._verify import verify_window as verify_window

_EXPORTS: dict[str, str] = {
    "Archive": "deswm._archive",
    "ArchiveBatch": "deswm._archive",
    "IndexCacheStats": "deswm._archive",
    "ArchivedFile": "deswm._archived_file",
    "AuditRecord": "deswm._audit",
    "ArchiveConfig": "deswm._config",
    "ArchiveSettings": "deswm._config",
    "AuditSettings": "deswm._config",
    "Config": "deswm._config",
    "FilesSettings": "deswm._config",
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
    "LateRowsError": "deswm._errors",
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
    "HealthFile": "deswm._health",
    "BucketManifest": "deswm._manifest",
    "ManifestStore": "deswm._manifest",
    "PrometheusObserver": "deswm._metrics",
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
    "run_partition": "deswm._partitions",
    "run_partitions": "deswm._partitions",
    "ProgressObserver": "deswm._progress",
    "ArchiveLookup": "deswm._protocols",
    "AuditLog": "deswm._protocols",
    "BucketWriter": "deswm._protocols",
    "ErrorStore": "deswm._protocols",
    "FileReader": "deswm._protocols",
    "ManifestRecorder": "deswm._protocols",
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
    "ReconcileBucket": "deswm._reconcile",
    "ReconcileJob": "deswm._reconcile",
    "ReconcileReport": "deswm._reconcile",
    "FileReaderBase": "deswm._readers",
    "FsspecFileReader": "deswm._readers",
    "to_pandas": "deswm._records",
    "to_records": "deswm._records",
    "DesRouter": "deswm._routing",
    "SqlSourceProvider": "deswm._sources.sql",
    "SqlTransactionProbe": "deswm._sql.transactions",
    "UtcDateTime": "deswm._sqltypes",
    "SqlAuditLog": "deswm._stores.audit",
    "SqlErrorStore": "deswm._stores.error_store",
    "LegacyArchiveConfigStore": "deswm._stores.legacy",
    "ObjectStoreWatermarkStore": "deswm._stores.objectstore",
    "SqlWatermarkStore": "deswm._stores.sql",
    "LagProbe": "deswm._throttle",
    "SourceThrottle": "deswm._throttle",
    "SqlReplicaLagProbe": "deswm._throttle",
    "VerifyReport": "deswm._verify",
    "verify_window": "deswm._verify",
}
"""Every public name, by the private module that defines it: the one list of the API."""

__all__ = sorted(_EXPORTS, key=lambda name: (not name.isupper(), name))
__version__: str


def _publish(namespace: dict[str, object]) -> None:
    """Give the exported classes and functions defined in ``namespace`` the path ``deswm``.

    Each private module that defines exported names calls this at its end, so the public
    path shows whichever way the object was imported; pickle then stores ``deswm.X``,
    which ``__getattr__`` resolves.
    """
    module = namespace["__name__"]
    for name, home in _EXPORTS.items():
        value = namespace.get(name) if home == module else None
        if isinstance(value, type) and "__annotations__" in vars(value):
            # typing.get_type_hints(cls) evaluates string annotations in the namespace of
            # cls.__module__; evaluate them here, in the defining module, while it is known.
            try:
                hints = _typing.get_type_hints(value, namespace, include_extras=True)
            except NameError:  # a name imported only for type checkers: stays a string
                hints = None
            if hints is not None:
                own = vars(value)["__annotations__"]
                value.__annotations__ = {k: v for k, v in hints.items() if k in own}
        if isinstance(value, (type, _FunctionType)):
            value.__module__ = __name__


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name == "__version__":
        from importlib.metadata import version

        return version("deswm")
    if not name.startswith("_"):
        from importlib.util import find_spec

        if find_spec(f"deswm.{name}") is not None:
            # A public subpackage (deswm.testing, deswm.serve), as attribute access finds it.
            return _importlib.import_module(f"deswm.{name}")
    raise AttributeError(f"module 'deswm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
