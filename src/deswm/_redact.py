"""Mask secrets in URLs and locations before they reach a log, repr or error (G13)."""

from __future__ import annotations

import re

__all__ = ["redact"]

_USERINFO = re.compile(r"(?<=://)([^/@:]*):[^/@]*@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&][^=&#]*(?:signature|token|secret|password|credential|key|sig)[^=&#]*=)[^&#]*"
)


def redact(text: str) -> str:
    """``text`` with URL passwords (``user:***@``) and signed query parameters masked.

    Works for database URLs (``postgresql+psycopg://u:pw@host/db``) and fsspec URLs or
    presigned locations alike.
    """
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))
