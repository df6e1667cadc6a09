"""The HTTP retrieval service: archived files by ``(uid, created_at)`` (``deswm[serve]``).

:func:`create_app` builds the ASGI application (Starlette) over one :class:`Archive`;
:func:`serve` runs it with uvicorn from a config file's ``[serve]`` section, as
``deswm serve`` does. Endpoints, auth and metrics: docs/serving.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware

from deswm.archive import Archive
from deswm.serve._app import Service, build_routes
from deswm.serve._auth import TokenAuth, is_loopback, resolve_token
from deswm.serve._metrics import MetricsMiddleware, ServeMetrics

if TYPE_CHECKING:
    from deswm.config import Config

__all__ = [
    "KEEP_ALIVE_SECONDS",
    "build_archive",
    "create_app",
    "is_loopback",
    "resolve_token",
    "serve",
]

KEEP_ALIVE_SECONDS: Final = 75
"""How long an idle keep-alive connection stays open."""


def create_app(archive: Archive, *, token: str | None = None, threads: int = 40) -> Starlette:
    """The retrieval service over ``archive`` (its index cache is shared by all requests).

    Args:
        archive: where files are read from; its storage backend gets a counting wrapper
            for the ``deswm_serve_backend_requests_total`` metric.
        token: the bearer token / API key every request but the probes must present
            (``None``: no authentication; see :func:`resolve_token`).
        threads: archive reads running at once on worker threads.
    """
    metrics = ServeMetrics(archive)
    service = Service(archive, metrics, threads=threads)
    middleware = [Middleware(MetricsMiddleware, metrics=metrics)]
    if token is not None:
        middleware.append(Middleware(TokenAuth, token=token))
    app = Starlette(routes=build_routes(service), middleware=middleware)
    app.state.archive = archive
    app.state.metrics = metrics
    return app


def build_archive(config: Config) -> Archive:
    """The archive of a config file, with the cache bounds of its ``[serve]`` section."""
    return Archive(
        config.archive.url,
        config.build_router(),
        storage_options=config.archive.storage_options or None,
        cache_size=config.serve.cache_entries,
        cache_bytes=config.serve.cache_bytes,
    )


def serve(
    config: Config,
    *,
    host: str | None = None,
    port: int | None = None,
    insecure_no_auth: bool = False,
) -> None:
    """Run the service with uvicorn until interrupted (SIGINT/SIGTERM end it gracefully).

    Raises :class:`~deswm.errors.ConfigError` before listening when a non-loopback host
    has no token (see :func:`resolve_token`).
    """
    import uvicorn

    settings = config.serve
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    token = resolve_token(settings.token_env, host, insecure_no_auth=insecure_no_auth)
    app = create_app(build_archive(config), token=token, threads=settings.threads)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        proxy_headers=False,
        # Longer than a load balancer's idle timeout (AWS ALB: 60 s), so the balancer,
        # not the service, closes idle connections: no request races a closing socket.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )
