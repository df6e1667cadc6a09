"""Defaults that both a constructor and the config file state, stated once.

The constructors take these as their keyword defaults and :mod:`deswm._config` as the
defaults of its settings, so a component built in Python and one built from a config
file without that setting behave alike. A leaf module: it imports nothing from deswm
and nothing heavy, so :mod:`deswm._config` can use it without loading SQLAlchemy.
"""

from __future__ import annotations

import getpass
import os
import socket
from typing import Final

__all__ = [
    "AUDIT_TABLE",
    "BUCKETS_IN_FLIGHT",
    "CREATED_AT_COLUMN",
    "DEFAULT_LOCK_TIMEOUT",
    "ERROR_TABLE",
    "EXECUTOR",
    "EXECUTORS",
    "FLAG_BATCH_SIZE",
    "FLAG_COLUMN",
    "FLAG_VALUE",
    "LAG_DAYS",
    "LANE_BATCH_ROWS",
    "LANE_TIMEOUT",
    "LEGACY_ROW_ID",
    "LOCATION_COLUMN",
    "MAX_FAILURE_RATIO",
    "N_BITS",
    "ON_ERROR",
    "PAGE_SIZE",
    "SIZE_COLUMN",
    "UID_COLUMN",
    "WORKERS",
    "default_actor",
]

DEFAULT_LOCK_TIMEOUT: Final = 60.0
"""Seconds a statement waits for a lock (or SQLite for a writer) before it fails."""

# [source] / SqlSourceProvider
UID_COLUMN: Final = "uid"
CREATED_AT_COLUMN: Final = "created_at"
LOCATION_COLUMN: Final = "file_location"
SIZE_COLUMN: Final = "size_bytes"
PAGE_SIZE: Final = 10_000

# [watermark] / WatermarkOrchestrator, LegacyArchiveConfigStore
LAG_DAYS: Final = 7
LEGACY_ROW_ID: Final = 1

# [archive] / DesRouter
N_BITS: Final = 8

# [run] / WatermarkOrchestrator, SqlErrorStore
ON_ERROR: Final = "stop"
MAX_FAILURE_RATIO: Final = 0.1
ERROR_TABLE: Final = "deswm_errors"
WORKERS: Final = "auto"
"""Lanes of the packing engine: ``"auto"`` = the CPUs this process may use."""
EXECUTORS: Final = ("auto", "inline", "threads", "processes", "dask")
EXECUTOR: Final = "auto"
"""Where lanes run: processes when they can (W > 1), else threads, else inline (W = 1)."""
BUCKETS_IN_FLIGHT: Final = 2
LANE_TIMEOUT: Final[float | None] = None
LANE_BATCH_ROWS: Final = 50_000
"""Rows of one lane's share of a bucket the coordinator keeps in memory; the rest spill
to a JSON-lines file (0: no bound)."""
AUDIT_TABLE: Final = "deswm_audit"

# [flag] / FlagJob
FLAG_COLUMN: Final = "archived"
FLAG_VALUE: Final = True
FLAG_BATCH_SIZE: Final = 1000


def default_actor() -> str:
    """``user@host`` of this process, for ``updated_by`` and the history.

    Containers often run as a uid without a passwd entry, where ``getpass.getuser()``
    raises; the numeric uid still tells an operator who it was.
    """
    try:
        user = getpass.getuser()
    except (OSError, KeyError, ImportError):
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    try:
        host = socket.gethostname()
    except OSError:
        host = "unknown-host"
    return f"{user}@{host}"
