"""Mask secrets in URLs, options and messages before they reach a log, repr or error (G13).

One source of truth for what counts as a secret:

* the password of a URL's userinfo (``user:***@``), or the whole userinfo when it has no
  user name (``https://TOKEN@host``);
* query and ``#fragment`` parameters whose name says they carry a secret (``password``,
  ``token``, ``sig``, ``sas``, ``X-Amz-Signature``, ...);
* storage options under such a name;
* every password deswm has seen in a database URL this process (:func:`remember`), so a
  driver message that quotes one is scrubbed too.

URLs are masked from their parsed parts (SQLAlchemy's ``make_url`` for database URLs),
not by a pattern over the whole text: a password holding ``/``, ``@``, ``:`` or ``#``
must not end the match early and leak its tail.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus, unquote, unquote_plus

__all__ = [
    "MASK",
    "is_secret_name",
    "redact",
    "redact_url",
    "remember",
    "scrub",
    "secret_values",
    "url_secrets",
]

MASK: Final = "***"

_SECRET_WORDS: Final = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "key",
        "passphrase",
        "passwd",
        "password",
        "pass",
        "pwd",
        "sas",
        "secret",
        "sig",
        "signature",
        "token",
    }
)
_SECRET_PARTS: Final = ("password", "passwd", "secret", "token", "signature", "credential")
_WORD_SPLIT: Final = re.compile(r"[^a-z0-9]+")
# Where a URL starts in free text; the URL itself is then taken apart, not pattern-masked.
_URL_START: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_END: Final = re.compile(r"""[\s'"<>`]""")
# Backends whose URLs SQLAlchemy parses (its parser knows a password may hold ``/``).
_DB_BACKENDS: Final = frozenset(
    {
        "cockroachdb",
        "duckdb",
        "mariadb",
        "mssql",
        "mysql",
        "oracle",
        "postgres",
        "postgresql",
        "redshift",
        "snowflake",
        "sqlite",
    }
)
_MIN_SCRUB: Final = 3
"""Shorter remembered secrets are not scrubbed from free text (they would mangle it)."""

_known: set[str] = set()
_known_lock = threading.Lock()


def is_secret_name(name: object) -> bool:
    """Whether a query parameter or option called ``name`` carries a secret."""
    text = unquote_plus(str(name)).lower()
    if any(part in text for part in _SECRET_PARTS):
        return True
    words = [w for w in _WORD_SPLIT.split(text) if w]
    if any(word in _SECRET_WORDS or word.endswith("key") for word in words):
        return True  # ``AccountKey``, ``sslkey``, ``aws_access_key_id``
    return "".join(words) in _SECRET_WORDS


def _mask_params(text: str) -> str:
    """``a=1&token=x`` with the values of secret names masked; other text kept as is."""
    if "=" not in text:
        return text
    parts = []
    for item in re.split(r"([&;])", text):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={MASK}" if eq and is_secret_name(name) else item)
    return "".join(parts)


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """``(userinfo, host_and_path)`` of what follows ``scheme://``.

    A raw ``@`` or ``/`` inside a password would fool ``urlsplit``; here the userinfo
    runs to the last ``@`` before the first ``/`` that follows an ``@``. An ``@`` with a
    ``/`` in what would be the user name is part of a path (``bucket/icon@2x.png``).
    """
    first = rest.find("@")
    if first < 0:
        return None, rest
    user = rest[:first].split(":", 1)[0]
    if "/" in user:
        return None, rest  # the user name cannot hold a ``/``: this ``@`` is in a path
    slash = rest.find("/", first)
    end = rest.rfind("@", 0, slash if slash >= 0 else len(rest))
    return rest[:end], rest[end + 1 :]


def _mask_userinfo(userinfo: str) -> str:
    user, colon, _password = userinfo.partition(":")
    return f"{user}:{MASK}" if colon and user else MASK


def _generic(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    rest, hashmark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    userinfo, host = _split_userinfo(rest)
    masked = host if userinfo is None else f"{_mask_userinfo(userinfo)}@{host}"
    if question:
        masked += "?" + _mask_params(query)
    if hashmark:
        masked += "#" + _mask_params(fragment)
    return f"{scheme}://{masked}"


def _database(url: str) -> str | None:
    """SQLAlchemy's rendering with the password hidden, or None when it does not parse."""
    try:
        import sqlalchemy as sa

        parsed = sa.make_url(url)
    except Exception:
        return None
    if parsed.host and "@" in parsed.host:
        return None  # a raw ``@`` in the password: SQLAlchemy would show its tail as host
    rendered = parsed.render_as_string(hide_password=True)
    base, question, query = rendered.partition("?")
    return base + (question + _mask_params(query) if question else "")


def redact_url(url: object) -> str:
    """``url`` (a string or ``sqlalchemy.URL``) with every secret part masked."""
    if not isinstance(url, str):
        render = getattr(url, "render_as_string", None)
        text = render(hide_password=True) if render is not None else str(url)
        return scrub(_generic(text))
    scheme = url.partition("://")[0].lower()
    backend = scheme.split("+", 1)[0]
    masked = _database(url) if "://" in url and backend in _DB_BACKENDS else None
    return scrub(masked if masked is not None else _generic(url))


def redact(text: str) -> str:
    """``text`` with each URL in it masked (:func:`redact_url`) and known secrets scrubbed.

    Works on a bare URL, a location, or a message that quotes URLs among other words.
    """
    out: list[str] = []
    pos = 0
    for match in _URL_START.finditer(text):
        if match.start() < pos:
            continue
        end_match = _URL_END.search(text, match.end())
        end = end_match.start() if end_match else len(text)
        out.append(text[pos : match.start()])
        # Taken apart in place (not re-rendered), so the words around it stay as they were.
        out.append(_generic(text[match.start() : end]))
        pos = end
    out.append(text[pos:])
    return scrub("".join(out))


def url_secrets(url: object) -> list[str]:
    """The secret values in ``url``: its password and secret query values, encoded or not."""
    found: list[str] = []
    if isinstance(url, str):
        text = url
        scheme, _sep, rest = url.partition("://")
        userinfo, _host = _split_userinfo(rest.partition("#")[0].partition("?")[0])
        if userinfo is not None:
            _user, colon, raw = userinfo.partition(":")
            if colon:
                found.append(raw)
            elif scheme.lower().split("+", 1)[0] not in _DB_BACKENDS:
                found.append(userinfo)  # ``https://TOKEN@host``; a database user is no secret
    else:
        render = getattr(url, "render_as_string", None)
        text = render(hide_password=False) if render is not None else str(url)
        password = getattr(url, "password", None)
        if password is not None:
            found.append(str(password))
    for part in (text.partition("?")[2].partition("#")[0], text.partition("#")[2]):
        for item in re.split(r"[&;]", part):
            name, eq, value = item.partition("=")
            if eq and value and is_secret_name(name):
                found.append(value)
    variants: set[str] = set()
    for value in found:
        variants.update({value, unquote(value), quote(value, safe=""), quote_plus(value)})
    return sorted((v for v in variants if v), key=len, reverse=True)


def secret_values(options: Mapping[str, Any] | None, *, min_length: int = 1) -> list[str]:
    """String values stored under secret-sounding keys of (nested) storage options.

    Values shorter than ``min_length`` are left out: scrubbing them from a message would
    mangle its words more than it would hide.
    """
    found: list[str] = []

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                walk(inner, secret or is_secret_name(key))
        elif isinstance(value, list | tuple):
            for inner in value:
                walk(inner, secret)
        elif secret and isinstance(value, str) and len(value) >= max(min_length, 1):
            found.append(value)

    walk(options or {}, False)
    return found


def remember(url: object) -> None:
    """Scrub the secrets of ``url`` from every later :func:`redact`/:func:`scrub`."""
    values = [v for v in url_secrets(url) if len(v) >= _MIN_SCRUB]
    if values:
        with _known_lock:
            _known.update(values)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with ``secrets`` and every remembered secret replaced by ``***``."""
    with _known_lock:
        values = set(_known)
    values.update(s for s in secrets if s)
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text
