"""Optional authentication of the retrieval service: one shared secret from the environment.

A request is authenticated by ``Authorization: Bearer <token>`` or ``X-API-Key: <token>``,
compared in constant time (:func:`hmac.compare_digest`). ``/healthz`` and ``/readyz``
stay open (load balancer and kubelet probes send no credentials); everything else,
``/metrics`` included, needs the token when one is configured.

Without a token the service only starts on a loopback address, unless the operator says
``--insecure-no-auth`` (e.g. behind an authenticating proxy on a private network).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from deswm._errors import ConfigError

__all__ = ["TokenAuth", "is_loopback", "resolve_token"]

OPEN_PATHS: Final = frozenset({"/healthz", "/readyz"})
MIN_TOKEN_LENGTH: Final = 16


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(token_env: str, host: str, *, insecure_no_auth: bool) -> str | None:
    """The token requests must present, or ``None`` when the service runs without auth.

    Raises :class:`~deswm.ConfigError` for a token shorter than 16 characters and
    for a non-loopback ``host`` without a token (unless ``insecure_no_auth``).
    """
    token = os.environ.get(token_env, "").strip()
    if token:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"the token in ${token_env} has {len(token)} characters; at least "
                f"{MIN_TOKEN_LENGTH} are needed",
                key="serve.token_env",
                hint="Generate one, e.g. "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        return token
    if is_loopback(host) or insecure_no_auth:
        return None
    raise ConfigError(
        f"refusing to serve on {host} without authentication: ${token_env} is not set",
        key="serve.token_env",
        hint=f"Set {token_env} to a secret token, bind to 127.0.0.1, or pass "
        "--insecure-no-auth if a proxy in front authenticates",
    )


class TokenAuth:
    """ASGI middleware: 401 unless the request carries the token (open paths excepted)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self._app(scope, receive, send)
            return
        body = json.dumps(
            {
                "error": "authentication required",
                "hint": "send Authorization: Bearer <token> or X-API-Key: <token>",
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="deswm"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        presented: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credentials.strip()
            elif name == b"x-api-key":
                presented = value.strip()
        return presented is not None and hmac.compare_digest(presented, self._token)
