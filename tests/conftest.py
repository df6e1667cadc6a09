"""Backend fixtures shared by the whole suite.

Real services, one isolated namespace per test:

* ``sqlite``: a database file in the test's tmp_path;
* ``postgresql``: a fresh schema on ``DESWM_TEST_POSTGRES_URL``
  (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
* ``mysql``: a fresh database on ``DESWM_TEST_MYSQL_URL``
  (default ``mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4``);
* ``s3``: a moto S3 server started on 127.0.0.1 for the session, a fresh bucket per test.

A test that needs an unreachable service, or the optional C helper ``deswm._native`` where
it was not built, is skipped with the reason and how to enable it; with
``DESWM_REQUIRE_SERVICES=1`` (set by ``.ci/run``) it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

SQL_BACKENDS = ("sqlite", "postgresql", "mysql")
FS_BACKENDS = ("local", "memory", "s3")

POSTGRES_URL = os.environ.get(
    "DESWM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get(
    "DESWM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"
)
REQUIRE_SERVICES = os.environ.get("DESWM_REQUIRE_SERVICES", "") not in ("", "0")

_HOW_TO = {
    "postgresql": "start PostgreSQL or set DESWM_TEST_POSTGRES_URL "
    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)",
    "mysql": "start MariaDB/MySQL or set DESWM_TEST_MYSQL_URL "
    "(e.g. mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4)",
    "s3": "install the test extra (moto[server], s3fs): pip install -e '.[test]'",
    "deswm._native": "install deswm where a C compiler (cc) is on PATH: pip install -e '.[test]'",
}


def service_unavailable(name: str, reason: str) -> None:
    """Skip (or, with DESWM_REQUIRE_SERVICES=1, fail) a test whose service is missing."""
    message = f"{name} unavailable ({reason}); to run these tests {_HOW_TO.get(name, '')}"
    if REQUIRE_SERVICES:
        pytest.fail(f"DESWM_REQUIRE_SERVICES=1 but {message}", pytrace=False)
    pytest.skip(message)


@cache
def _probe(url: str) -> str | None:
    """None when the server answers, else the reason (cached per session)."""
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


def _unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'deswm-test.sqlite3'}"


# A test that fails while a connection of its own still holds a lock (a stream left open
# by a kept traceback) must not hang the suite in the DROP that cleans up after it: the
# DROP waits a bounded time, then the sessions still using the namespace are ended.
_DROP_WAIT_SECONDS = 20
_LOCK_WAIT_SECONDS = 120
_PG_BLOCKERS = (
    "SELECT DISTINCT l.pid FROM pg_locks l "
    "JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :name AND l.pid <> pg_backend_pid()"
)
_MYSQL_BLOCKERS = (
    "SELECT id FROM information_schema.processlist WHERE db = :name AND id <> CONNECTION_ID()"
)


def _drop_bounded(admin: sa.Engine, drop: str, blockers: str, name: str) -> None:
    """Run ``drop``; if another session's lock holds it past the wait, end that session."""
    postgres = admin.dialect.name == "postgresql"
    limit = (
        f"SET lock_timeout = '{_DROP_WAIT_SECONDS}s'"
        if postgres
        else f"SET SESSION lock_wait_timeout = {_DROP_WAIT_SECONDS}"
    )
    try:
        for attempt in range(2):
            try:
                with admin.begin() as conn:
                    conn.execute(sa.text(limit))
                    conn.execute(sa.text(drop))
                return
            except sa.exc.OperationalError:
                if attempt:
                    raise
            with admin.begin() as conn:
                pids = conn.execute(sa.text(blockers), {"name": name}).scalars().all()
                for pid in pids:
                    kill = (
                        f"SELECT pg_terminate_backend({int(pid)})"
                        if postgres
                        else f"KILL {int(pid)}"
                    )
                    with contextlib.suppress(sa.exc.DBAPIError):
                        conn.execute(sa.text(kill))
    finally:
        admin.dispose()


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    reason = _probe(POSTGRES_URL)
    if reason:
        service_unavailable("postgresql", reason)
    schema = _unique("deswm_t")
    admin = sa.create_engine(POSTGRES_URL, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    # No statement of a test may wait for a lock forever: psycopg's wait retries through
    # the signal pytest-timeout uses, so only the server can end such a wait.
    options = f"-csearch_path={schema} -clock_timeout={_LOCK_WAIT_SECONDS}s"
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": options})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop_bounded(admin, f'DROP SCHEMA "{schema}" CASCADE', _PG_BLOCKERS, schema)


def postgres_schema(url: str) -> str:
    """The schema a URL from :func:`postgres_url` puts its tables in."""
    options = sa.make_url(url).query["options"]
    assert isinstance(options, str)
    setting = next(word for word in options.split() if word.startswith("-csearch_path="))
    return setting.removeprefix("-csearch_path=")


@contextlib.contextmanager
def mysql_url() -> Iterator[str]:
    reason = _probe(MYSQL_URL)
    if reason:
        service_unavailable("mysql", reason)
    database = _unique("deswm_t")
    admin = sa.create_engine(MYSQL_URL, poolclass=sa.pool.NullPool)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4"))
    url = sa.make_url(MYSQL_URL).set(database=database)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        _drop_bounded(admin, f"DROP DATABASE IF EXISTS `{database}`", _MYSQL_BLOCKERS, database)


@contextlib.contextmanager
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An isolated, empty database for ``backend``; dropped afterwards."""
    if backend == "sqlite":
        with sqlite_url(tmp_path) as url:
            yield url
    elif backend == "postgresql":
        with postgres_url() as url:
            yield url
    elif backend == "mysql":
        with mysql_url() as url:
            yield url
    else:  # pragma: no cover - a typo in a parametrisation
        raise ValueError(backend)


@pytest.fixture(params=SQL_BACKENDS)
def sql_backend(request: pytest.FixtureRequest) -> str:
    """The name of each SQL backend in turn."""
    return str(request.param)


@pytest.fixture
def db_url(sql_backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an isolated, empty database on each SQL backend."""
    with database_url(sql_backend, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_db_url(tmp_path: Path) -> Iterator[str]:
    """Only the embedded default."""
    with sqlite_url(tmp_path) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on each SQL backend's isolated database."""
    eng = sa.create_engine(db_url)
    try:
        yield eng
    finally:
        eng.dispose()


# --- S3 (moto server) -----------------------------------------------------------------


class MotoS3:
    """A moto S3 server on 127.0.0.1 and how to reach it with s3fs."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"

    @property
    def storage_options(self) -> dict[str, Any]:
        # No region in client_kwargs: moto then rejects bucket creation (backends.md).
        return {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            "skip_instance_cache": True,
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options)

    def new_bucket(self) -> str:
        name = _unique("deswm-t").replace("_", "-")
        self.filesystem().mkdir(name)
        return name

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A moto S3 server for the session (skips when moto or s3fs is not installed)."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer  # noqa: F401
    except ImportError as exc:
        service_unavailable("s3", str(exc))
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    server = MotoS3()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: MotoS3) -> str:
    """A fresh, empty bucket on the moto server."""
    return moto_s3.new_bucket()


# --- fsspec destinations ----------------------------------------------------------------


class FsTarget:
    """An empty folder on one filesystem: its URL and the options to open it."""

    def __init__(self, kind: str, url: str, storage_options: dict[str, Any]) -> None:
        self.kind = kind
        self.url = url
        self.storage_options = storage_options

    def filesystem(self) -> Any:
        import fsspec

        fs, _ = fsspec.core.url_to_fs(self.url, **self.storage_options)
        return fs

    def join(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])

    def __repr__(self) -> str:
        return f"FsTarget({self.kind}, {self.url})"


@pytest.fixture(params=FS_BACKENDS)
def fs_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_fs_target(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> FsTarget:
    """An empty folder on ``kind`` (local, memory or s3), cleaned up after the test."""
    if kind == "local":
        folder = tmp_path / _unique("fs")
        folder.mkdir()
        return FsTarget("local", str(folder), {})
    if kind == "memory":
        import fsspec

        root = f"memory://{_unique('deswm')}"
        request.addfinalizer(lambda: _rm_memory(fsspec.filesystem("memory"), root))
        return FsTarget("memory", root, {})
    if kind == "s3":
        moto = request.getfixturevalue("moto_s3")
        bucket = moto.new_bucket()
        return FsTarget("s3", f"s3://{bucket}/archive", moto.storage_options)
    raise ValueError(kind)  # pragma: no cover


def _rm_memory(fs: Any, root: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(root, recursive=True)


@pytest.fixture
def fs_target(fs_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> FsTarget:
    """An empty folder on each filesystem backend (local, memory, s3)."""
    return make_fs_target(fs_backend, tmp_path, request)


@pytest.fixture
def fs_target_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], FsTarget]:
    """Build further empty folders on a named backend inside one test."""
    return lambda kind: make_fs_target(kind, tmp_path, request)
