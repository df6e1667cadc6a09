"""Importing an optional dependency: the one place that turns its absence into
:class:`~deswm.MissingExtraError` naming ``pip install 'deswm[EXTRA]'``."""

from __future__ import annotations

import importlib
from types import ModuleType

from deswm._errors import MissingExtraError

__all__ = ["require"]


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """``module`` imported, or :class:`~deswm.MissingExtraError` for ``feature``.

    Only the missing module itself counts: an ``ImportError`` from inside an installed
    package (a broken install) propagates as it is, so it is not misread as "install
    the extra".
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise
        raise MissingExtraError(feature, module=top, extra=extra) from None
