"""deswm: archive the files of a huge SQL table into DES shards, tracked by a watermark.

Everything a host application needs is importable from here; submodules hold the
details (``deswm.container`` for the raw format, ``deswm.testing`` for test tools).
"""

from deswm.archive import *
from deswm.config import *
from deswm.errors import *
from deswm.flagging import *
from deswm.model import *
from deswm.orchestrator import *
from deswm.packer import *
from deswm.protocols import *
from deswm.purge import *
from deswm.readers import *
from deswm.routing import *
from deswm.shardio import PartInfo
from deswm.sources.sql import *
from deswm.sqltypes import *
from deswm.stores.errors import *
from deswm.stores.legacy import LegacyArchiveConfigStore
from deswm.stores.objectstore import ObjectStoreWatermarkStore
from deswm.stores.sql import *
from deswm.verify import *

__version__: str
__all__ = [
    "DEFAULT_STAGE",
    "FLAGGED_STAGE",
    "PURGED_STAGE",
    "Archive",
    "ArchiveSettings",
    "ArchivedDuplicateError",
    "ArchivedEntry",
    "ArchivedFile",
    "BadRowError",
    "BucketResult",
    "BucketWriter",
    "Codec",
    "Config",
    "ConfigError",
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
    "FsspecFileReader",
    "IndexCacheStats",
    "LegacyArchiveConfigStore",
    "LocationOutsideRootError",
    "LocationReference",
    "NaiveDatetimeError",
    "NotArchivedError",
    "ObjectChangedError",
    "ObjectStoreWatermarkStore",
    "PackError",
    "Packer",
    "PartInfo",
    "Partition",
    "PendingStats",
    "PublishedShard",
    "PurgeError",
    "PurgeJob",
    "PurgeResult",
    "ReadResult",
    "RecordedFailure",
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
    "SqlErrorStore",
    "SqlSourceProvider",
    "SqlWatermarkStore",
    "UnplaceableRowError",
    "UnverifiedEntryError",
    "UtcDateTime",
    "VerifyReport",
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
    "load_config",
    "verify_window",
]


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("deswm")
    raise AttributeError(f"module 'deswm' has no attribute {name!r}")
