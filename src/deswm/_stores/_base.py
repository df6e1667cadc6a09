"""What every watermark store checks before it touches its storage.

:class:`WatermarkStoreBase` owns the argument checks and the ``advance`` preamble the
:class:`~deswm.WatermarkStore` contract spells out (aware UTC instants, never
backwards, an equal position writes nothing, well-formed keys), so each store keeps only
its storage-specific part in the ``_*_watermark`` and ``_list_history`` hooks, and the
stores cannot drift apart on the rules they share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import ClassVar

from deswm._errors import ConfigError, WatermarkError
from deswm._model import Watermark, WatermarkChange, WatermarkKey
from deswm._timeutil import format_utc, require_utc

__all__ = ["WatermarkStoreBase"]


class WatermarkStoreBase(ABC):
    """The shared half of a :class:`~deswm.WatermarkStore`.

    Subclasses implement the hooks, which receive checked arguments (a valid key, aware
    UTC positions), and :meth:`list`. ``pipeline_max`` and ``stage_max`` bound the
    length of key names (``None``: any non-empty string); :meth:`_check_storable` adds
    what else a store cannot hold.
    """

    pipeline_max: ClassVar[int | None] = None
    stage_max: ClassVar[int | None] = None

    # --- WatermarkStore -----------------------------------------------------------

    def get(self, key: WatermarkKey) -> Watermark | None:
        """The stored watermark, or ``None`` if it was never initialised."""
        self._check_key(key)
        return self._get_watermark(key)

    def initialize(
        self,
        key: WatermarkKey,
        position: datetime,
        *,
        lag: timedelta | None = None,
        partitions: int = 1,
    ) -> Watermark:
        """Create the watermark at ``position`` if absent and return the stored one."""
        self._check_key(key)
        position = require_utc(position, "initial watermark position")
        if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
            raise ConfigError(f"must be an integer >= 1, got {partitions!r}", key="partitions")
        if lag is not None and not isinstance(lag, timedelta):
            raise ConfigError(f"must be a timedelta, got {lag!r}", key="lag")
        return self._initialize_watermark(key, position, lag, partitions)

    def advance(self, current: Watermark, position: datetime) -> Watermark:
        """Compare-and-set ``current`` to ``position`` (see the protocol).

        Refuses a backwards move with :class:`~deswm.WatermarkError` before the
        storage is touched, and returns ``current`` for an equal position without a
        write, so a cycle with nothing new costs no write (G4).
        """
        position = require_utc(position, "new watermark position")
        if position < current.position:
            raise WatermarkError(
                f"watermark {current.key} cannot move backwards from "
                f"{format_utc(current.position)} to {format_utc(position)} with advance()",
                hint="To replay on purpose use set() (deswm watermark set), which records "
                "a reason in the history",
            )
        if position == current.position:
            return current
        self._check_key(current.key)
        return self._advance_watermark(current, position)

    def set(self, key: WatermarkKey, position: datetime, *, reason: str) -> Watermark:
        """Set the position in any direction, creating the watermark, and record why."""
        self._check_key(key)
        position = require_utc(position, "watermark position")
        if not isinstance(reason, str):
            raise ConfigError(f"must be a string, got {type(reason).__name__}", key="reason")
        return self._set_watermark(key, position, reason)

    @abstractmethod
    def list(self, pipeline: str | None = None) -> Sequence[Watermark]:
        """Every stored watermark, or those of one pipeline, ordered by key."""

    def history(
        self, key: WatermarkKey | None = None, *, limit: int = 100
    ) -> Sequence[WatermarkChange]:
        """Manual changes, newest first, at most ``limit``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError(f"must be an integer >= 0, got {limit!r}", key="limit")
        return self._list_history(key, limit)

    # --- the storage-specific part -------------------------------------------------

    @abstractmethod
    def _get_watermark(self, key: WatermarkKey) -> Watermark | None: ...

    @abstractmethod
    def _initialize_watermark(
        self, key: WatermarkKey, position: datetime, lag: timedelta | None, partitions: int
    ) -> Watermark: ...

    @abstractmethod
    def _advance_watermark(self, current: Watermark, position: datetime) -> Watermark:
        """The compare-and-set itself: ``position`` is after ``current.position``."""

    @abstractmethod
    def _set_watermark(self, key: WatermarkKey, position: datetime, reason: str) -> Watermark: ...

    @abstractmethod
    def _list_history(self, key: WatermarkKey | None, limit: int) -> Sequence[WatermarkChange]: ...

    # --- keys ---------------------------------------------------------------------

    def _check_key(self, key: WatermarkKey) -> None:
        """Reject keys this store cannot hold, before its storage truncates or fails."""
        if not isinstance(key, WatermarkKey):
            raise ConfigError(f"expected a WatermarkKey, got {type(key).__name__}", key="key")
        for what, value, limit in (
            ("pipeline", key.pipeline, self.pipeline_max),
            ("stage", key.stage, self.stage_max),
        ):
            if (
                not isinstance(value, str)
                or not value
                or (limit is not None and len(value) > limit)
            ):
                wanted = (
                    "a non-empty string"
                    if limit is None
                    else f"a string of 1 to {limit} characters"
                )
                raise ConfigError(f"watermark {what} must be {wanted}, got {value!r}", key=what)
        if isinstance(key.partition, bool) or not isinstance(key.partition, int):
            raise ConfigError(
                f"watermark partition must be an integer, got {key.partition!r}", key="partition"
            )
        self._check_storable(key)

    def _check_storable(self, key: WatermarkKey) -> None:  # noqa: B027 - an optional hook
        """What else a well-formed key must satisfy here (a hook; nothing by default)."""
