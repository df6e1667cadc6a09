"""All five contract suites against deswm's own implementations and the in-memory doubles.

The SQL store and source also run their contracts on PostgreSQL and MariaDB in
tests/stores and tests/sources; here each runs once on SQLite, next to its double and a
fault proxy without faults (which must change nothing), so this folder alone shows every
suite passing against every kind of implementation.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from deswm._model import SourceRecord
from deswm._packer import DesPacker
from deswm._protocols import FileReader, Packer, ShardRouter, SourceProvider, WatermarkStore
from deswm._readers import FsspecFileReader
from deswm._routing import DesRouter
from deswm._sources.sql import SqlSourceProvider
from deswm._stores.sql import SqlWatermarkStore
from deswm.testing import (
    FileReaderContract,
    MakePacker,
    MakeReader,
    MakeSource,
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    PackerContract,
    RecordingRouter,
    ShardRouterContract,
    SourceProviderContract,
    WatermarkStoreContract,
    clear_destination,
    inject,
    memory_packer,
)

WHEN = datetime(2024, 5, 17, 10, tzinfo=UTC)

# --- ShardRouter ------------------------------------------------------------------------


@pytest.mark.parametrize("n_bits", [4, 5, 8, 12, 16])
class TestDesRouter(ShardRouterContract):
    @pytest.fixture
    def router(self, n_bits: int) -> ShardRouter:
        return DesRouter(n_bits)


class TestRecordingRouter(ShardRouterContract):
    @pytest.fixture
    def router(self) -> ShardRouter:
        return RecordingRouter(DesRouter(8))


class TestInjectedRouter(ShardRouterContract):
    """A fault proxy without faults is invisible."""

    @pytest.fixture
    def router(self) -> ShardRouter:
        return inject(DesRouter(8))

    def test_same_routes_in_other_processes(self, router: ShardRouter) -> None:
        # A proxy holds a lock and fault plans, so it does not pickle; what it routes is
        # what the wrapped router routes, whose processes TestDesRouter checks.
        inner = DesRouter(8)
        for uid in ("12345", "abc123", "zażółć", "x" * 400):
            assert router.route(uid, WHEN) == inner.route(uid, WHEN)


# --- Packer -----------------------------------------------------------------------------


class TestDesPackerLocal(PackerContract):
    @pytest.fixture
    def make_packer(self, tmp_path: Path) -> MakePacker:
        numbers = itertools.count()
        return lambda router: DesPacker(tmp_path / f"dest{next(numbers)}", router, workers=0)


class TestDesPackerSpilling(PackerContract):
    """Every payload through the spill file, with worker threads: the same promises."""

    @pytest.fixture
    def make_packer(self, tmp_path: Path) -> MakePacker:
        numbers = itertools.count()
        return lambda router: DesPacker(
            tmp_path / f"dest{next(numbers)}", router, spill_threshold=0, workers=2
        )


class TestMemoryPacker(PackerContract):
    @pytest.fixture
    def make_packer(self, request: pytest.FixtureRequest) -> MakePacker:
        def make(router: ShardRouter) -> Packer:
            packer = memory_packer(router)
            request.addfinalizer(lambda: clear_destination(packer))
            return packer

        return make


class TestDesPackerS3(PackerContract):
    max_examples = 3

    @pytest.fixture
    def make_packer(self, moto_s3: Any) -> MakePacker:
        # One cached s3fs client for the packers and the archives that read them back.
        self.storage_options = {**moto_s3.storage_options, "skip_instance_cache": False}
        numbers = itertools.count()
        bucket = moto_s3.new_bucket()
        return lambda router: DesPacker(
            f"s3://{bucket}/dest{next(numbers)}",
            router,
            storage_options=self.storage_options,
            workers=0,
        )


class TestInjectedPacker(PackerContract):
    @pytest.fixture
    def make_packer(self, request: pytest.FixtureRequest) -> MakePacker:
        def make(router: ShardRouter) -> Packer:
            packer = memory_packer(router)
            request.addfinalizer(lambda: clear_destination(packer))
            return inject(packer)

        return make


# --- WatermarkStore -----------------------------------------------------------------------


class TestInjectedMemoryStore(WatermarkStoreContract):
    @pytest.fixture
    def store(self) -> WatermarkStore:
        return inject(MemoryWatermarkStore(actor="contract"))


class TestSqliteStore(WatermarkStoreContract):
    race_rounds = 2

    @pytest.fixture
    def store(self, sqlite_db_url: str) -> WatermarkStore:
        return SqlWatermarkStore(sqlite_db_url, actor="contract")


# --- SourceProvider -----------------------------------------------------------------------


class TestInjectedMemorySource(SourceProviderContract):
    @pytest.fixture
    def make_source(self) -> MakeSource:
        def make(records: Sequence[SourceRecord], *, page_size: int | None = None) -> Any:
            return inject(MemorySourceProvider(records))

        return make


class TestSqliteSource(SourceProviderContract):
    @pytest.fixture
    def make_source(self, sqlite_db_url: str) -> MakeSource:
        def make(records: Sequence[SourceRecord], *, page_size: int | None = None) -> Any:
            engine = sa.create_engine(sqlite_db_url)
            metadata = sa.MetaData()
            table = sa.Table(
                "files",
                metadata,
                sa.Column("uid", sa.String, primary_key=True),
                sa.Column("created_at", sa.DateTime, nullable=False),
                sa.Column("file_location", sa.String, nullable=False),
                sa.Column("size_bytes", sa.Integer),
            )
            metadata.create_all(engine)
            rows = [
                {
                    "uid": r.uid,
                    "created_at": r.created_at.replace(tzinfo=None),
                    "file_location": r.location,
                    "size_bytes": r.size,
                }
                for r in records
            ]
            if rows:
                with engine.begin() as conn:
                    conn.execute(table.insert(), rows)
            source: SourceProvider = SqlSourceProvider(
                sqlite_db_url, "files", page_size=page_size or 10_000
            )
            return source

        return make


# --- FileReader ---------------------------------------------------------------------------


class TestInjectedMemoryReader(FileReaderContract):
    @pytest.fixture
    def make_reader(self) -> MakeReader:
        def make(files: Mapping[str, bytes]) -> tuple[FileReader, dict[str, str]]:
            locations = {name: f"mem/{name}" for name in files}
            reader = MemoryFileReader({locations[n]: data for n, data in files.items()})
            return inject(reader), locations

        return make


class TestFsspecReaderLocal(FileReaderContract):
    @pytest.fixture
    def make_reader(self, tmp_path: Path) -> MakeReader:
        def make(files: Mapping[str, bytes]) -> tuple[FileReader, dict[str, str]]:
            for name, data in files.items():
                path = tmp_path / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            return FsspecFileReader(root=tmp_path), {name: name for name in files}

        return make


class TestFsspecReaderMemoryUrls(FileReaderContract):
    @pytest.fixture
    def make_reader(self) -> Iterator[MakeReader]:
        import fsspec

        fs = fsspec.filesystem("memory")
        root = f"memory://contract-{uuid.uuid4().hex}"

        def make(files: Mapping[str, bytes]) -> tuple[FileReader, dict[str, str]]:
            for name, data in files.items():
                fs.pipe_file(f"{root}/{name}", data)
            return FsspecFileReader(), {name: f"{root}/{name}" for name in files}

        yield make
        if fs.exists(root):
            fs.rm(root, recursive=True)
