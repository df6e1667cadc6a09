"""The HTTP retrieval service: archived files by ``(uid, created_at)`` (``deswm[serve]``).

:func:`create_app` builds the ASGI application (Starlette) over one :class:`Archive`;
:func:`serve` runs it with uvicorn from a config file's ``[serve]`` section, as
``deswm serve`` does. Endpoints, auth and metrics: docs/serving.md.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from starlette.applications import Starlette
from starlette.middleware import Middleware

from deswm._archive import Archive
from deswm._errors import ConfigError
from deswm.serve._app import Service, build_routes
from deswm.serve._auth import TokenAuth, is_loopback, resolve_token
from deswm.serve._metrics import MetricsMiddleware, ServeMetrics

if TYPE_CHECKING:
    from deswm._config import ArchiveConfig, Config

__all__ = [
    "KEEP_ALIVE_SECONDS",
    "build_archive",
    "create_app",
    "is_loopback",
    "resolve_token",
    "serve",
    "worker_app",
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

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        service.close()

    app = Starlette(routes=build_routes(service), middleware=middleware, lifespan=lifespan)
    app.state.archive = archive
    app.state.metrics = metrics
    return app


def build_archive(config: ArchiveConfig | Config) -> Archive:
    """The archive of a config file, with the cache bounds of its ``[serve]`` section."""
    return Archive(
        config.archive.url,
        config.build_router(),
        storage_options=config.archive.storage_options or None,
        cache_size=config.serve.cache_entries,
        cache_bytes=config.serve.cache_bytes,
    )


def serve(
    config: ArchiveConfig | Config,
    *,
    host: str | None = None,
    port: int | None = None,
    workers: int | None = None,
    insecure_no_auth: bool = False,
) -> None:
    """Run the service with uvicorn until interrupted (SIGINT/SIGTERM end it gracefully).

    With ``workers`` above 1, uvicorn starts that many processes on one listening socket;
    each loads the config file again (``config.path``) and has its own index cache.

    Raises :class:`~deswm.ConfigError` before listening when a non-loopback host
    has no token (see :func:`resolve_token`), or when ``workers`` > 1 and the config did
    not come from a file.
    """
    import uvicorn

    settings = config.serve
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    workers = settings.workers if workers is None else workers
    token = resolve_token(settings.token_env, host, insecure_no_auth=insecure_no_auth)
    app: Any
    if workers > 1:
        if config.path is None:
            raise ConfigError(
                "several workers load the config file again, and this config has none",
                key="serve.workers",
                hint="load the config with load_archive_config(path), or use one worker",
            )
        os.environ[_WORKER_ENV] = json.dumps(
            {"config": str(config.path.resolve()), "host": host, "insecure": insecure_no_auth}
        )
        app = f"{__name__}:worker_app"
    elif workers == 1:
        app = create_app(build_archive(config), token=token, threads=settings.threads)
    else:
        raise ConfigError(f"must be at least 1, got {workers}", key="serve.workers")
    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers,
        host=host,
        port=port,
        log_level="info",
        access_log=settings.access_log,
        proxy_headers=False,
        # Longer than a load balancer's idle timeout (AWS ALB: 60 s), so the balancer,
        # not the service, closes idle connections: no request races a closing socket.
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


_WORKER_ENV: Final = "DESWM_SERVE_WORKER"
"""What :func:`serve` hands its worker processes: the config file, host and auth choice."""


def worker_app() -> Starlette:
    """The app of one worker process of ``deswm serve --workers N`` (a uvicorn factory)."""
    from deswm._config import load_archive_config

    spec = json.loads(os.environ[_WORKER_ENV])
    config = load_archive_config(spec["config"])
    token = resolve_token(config.serve.token_env, spec["host"], insecure_no_auth=spec["insecure"])
    return create_app(build_archive(config), token=token, threads=config.serve.threads)
