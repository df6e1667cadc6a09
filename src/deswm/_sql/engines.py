"""The engine a SQL store holds: made from a URL (owned) or passed in (borrowed)."""

from __future__ import annotations

import sqlalchemy as sa

from deswm._engines import engine_from
from deswm._redact import redact_url

__all__ = ["EngineOwner"]


class EngineOwner:
    """``url`` and ``close`` for a store whose engine may be its own or its caller's."""

    _engine: sa.Engine
    _owns_engine: bool

    def _hold_engine(self, engine_or_url: object, key: str) -> None:
        self._engine, self._owns_engine = engine_from(engine_or_url, key=key)

    @property
    def url(self) -> str:
        """The database URL with its password replaced by ``***``."""
        return redact_url(self._engine.url)

    def close(self) -> None:
        """Dispose the engine if this store created it; a passed-in engine is left alone."""
        if self._owns_engine:
            self._engine.dispose()
