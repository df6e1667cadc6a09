"""The contract of :class:`~deswm.Packer`, as a reusable test class.

The packer is where files become durable, so its promises carry "never lose a file":
determinism (G2: the same files in, byte-identical objects out, whatever the order of
ties), a monotone archive (G3: a later publish keeps every entry already published),
nothing on abort, a typed error for a duplicate uid, and ``archived()`` lookups the
orchestrator uses to accept a source file that is already archived. Subclass it in a
``Test*`` class and provide a ``make_packer`` fixture returning a factory: given a
router, it returns a packer on a **new, empty** destination each time it is called::

    from deswm.testing import PackerContract

    class TestMyPacker(PackerContract):
        @pytest.fixture
        def make_packer(self, tmp_path):
            folders = iter(range(100))
            return lambda router: DesPacker(tmp_path / str(next(folders)), router)

The contract reads results back through three hooks that work for any ``DesPacker``
(set ``storage_options`` for a remote destination). A packer of your own design, with
its own object layout, overrides them: :meth:`~PackerContract.published` (``{name:
sha256}`` of what a reader can see), :meth:`~PackerContract.leftovers` (everything,
temp files included) and :meth:`~PackerContract.reader` (something with
``get(uid, created_at) -> bytes``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from hypothesis import HealthCheck, given, settings

from deswm._errors import DeswmError, DuplicateUidError
from deswm._model import SourceRecord
from deswm._protocols import BucketWriter, Packer, ShardRouter
from deswm._routing import DesRouter
from deswm.testing._checks import ReadsBack
from deswm.testing._dataset import Dataset
from deswm.testing._packers import archive_for, snapshot
from deswm.testing._strategies import datasets

__all__ = ["MakePacker", "PackerContract"]

DAY = datetime(2024, 5, 17, tzinfo=UTC)

Item = tuple[SourceRecord, bytes]


class MakePacker(Protocol):
    """Returns a packer using ``router`` on a new, empty destination."""

    def __call__(self, router: ShardRouter) -> Packer: ...


def _item(uid: str, seconds: float, data: bytes) -> Item:
    return SourceRecord(uid, DAY + timedelta(seconds=seconds), f"/src/{uid}", len(data)), data


def _items(count: int, start: int = 0) -> list[Item]:
    """Mixed uids and contents; every third pair ties on created_at."""
    out = []
    for n in range(start, start + count):
        uid = ["{}", "f{}.json", "zażółć-{}", "x/../{}"][n % 4].format(n)
        data = random.Random(n).randbytes(n * 37 % 500) if n % 2 else b"text %d " % n * (n % 9)
        out.append(_item(uid, n // 3, data))
    return out


def _ordered(items: Sequence[Item]) -> list[Item]:
    return sorted(items, key=lambda item: (item[0].created_at, item[0].uid))


def _ties_shuffled(items: Sequence[Item], seed: int) -> list[Item]:
    """Same created_at order, ties in another uid order (another database collation)."""
    rnd = random.Random(seed)
    keyed = [(item[0].created_at, rnd.random(), item) for item in items]
    return [item for *_, item in sorted(keyed, key=lambda k: (k[0], k[1]))]


class PackerContract:
    """Tests every promise of the :class:`~deswm.Packer` protocol.

    Subclasses override the ``make_packer`` fixture; ``storage_options`` (for the
    default hooks on a remote destination) and ``max_examples`` (of the property
    test; keep it small for slow stores) are class attributes.
    """

    storage_options: Mapping[str, Any] | None = None
    max_examples: int = 10

    @pytest.fixture
    def make_packer(self) -> MakePacker:
        """A factory of packers; every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `make_packer` fixture to return a "
            "factory: make_packer(router) -> Packer on a new, empty destination"
        )

    def make_router(self) -> ShardRouter:
        """The router packers are made with (16 groups a day keeps object counts low)."""
        return DesRouter(4)

    # --- hooks ------------------------------------------------------------------------

    def published(self, packer: Packer) -> Mapping[str, str]:
        """``{name: sha256}`` of every object a reader can see at the destination."""
        return snapshot(_des(packer), storage_options=self.storage_options)

    def leftovers(self, packer: Packer) -> Mapping[str, str]:
        """Every object at the destination, temp files included."""
        return snapshot(_des(packer), storage_options=self.storage_options, hidden=True)

    def reader(self, packer: Packer) -> ReadsBack:
        """Reads files back (``get(uid, created_at)``) from what ``packer`` published.

        Called once per check, so a reader may cache what it learns along the way.
        """
        return archive_for(_des(packer), storage_options=self.storage_options)

    # --- helpers ----------------------------------------------------------------------

    def pack(self, packer: Packer, items: Sequence[Item]) -> Any:
        with packer.open_bucket(DAY) as writer:
            for record, data in items:
                writer.add(record, data)
            return writer.publish()

    def assert_reads_back(self, packer: Packer, items: Sequence[Item]) -> None:
        reader = self.reader(packer)
        for record, data in items:
            got = reader.get(record.uid, record.created_at)
            assert got == data, f"uid {record.uid!r} reads back wrong"

    # --- the protocol -----------------------------------------------------------------

    def test_satisfies_the_protocol(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        assert isinstance(packer, Packer)
        with packer.open_bucket(DAY) as writer:
            assert isinstance(writer, BucketWriter)
            assert writer.bucket == DAY
            writer.abort()

    def test_pack_and_read_back(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        items = [*_items(40), _item("empty", 3, b""), _item("0042", 3, b"leading zeros")]
        result = self.pack(packer, _ordered(items))
        assert result.bucket == DAY
        assert result.files == len(items)
        assert result.bytes_in == sum(len(data) for _, data in items)
        assert self.published(packer), "publish wrote nothing"
        self.assert_reads_back(packer, items)

    def test_empty_bucket_publishes_nothing(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        result = self.pack(packer, [])
        assert result.files == 0
        assert self.leftovers(packer) == {}

    # --- determinism (G2) -------------------------------------------------------------

    def test_ties_in_any_order_give_identical_objects(self, make_packer: MakePacker) -> None:
        router = self.make_router()
        items = _items(30)
        objects = []
        for seed in range(3):
            packer = make_packer(router)
            self.pack(packer, _ties_shuffled(items, seed))
            objects.append(self.published(packer))
        assert objects[0] == objects[1] == objects[2], "objects depend on the order of ties"

    def test_replaying_a_bucket_changes_no_byte(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        items = _ordered(_items(25))
        self.pack(packer, items)
        before = self.published(packer)
        self.pack(packer, items)
        assert self.published(packer) == before

    def test_any_bucket_is_deterministic(self, make_packer: MakePacker) -> None:
        router = self.make_router()

        @settings(
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(data=datasets(max_size=25, start=DAY, days=1, max_file_size=600))
        def check(data: Dataset) -> None:
            items = [(record, data.contents[record.location]) for record in data.records]
            first, second = make_packer(router), make_packer(router)
            self.pack(first, _ordered(items))
            self.pack(second, _ties_shuffled(items, 1))
            assert self.published(first) == self.published(second)
            self.assert_reads_back(first, items)

        check()

    # --- merge (G3) -------------------------------------------------------------------

    def test_a_later_publish_keeps_old_entries(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        old, new = _items(20), _items(20, start=10)  # 10..19 again, 20..29 new
        self.pack(packer, _ordered(old))
        self.pack(packer, _ordered(new))
        self.assert_reads_back(packer, old + new)

    def test_files_gone_from_the_source_stay_archived(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        items = _ordered(_items(20))
        self.pack(packer, items)
        before = self.published(packer)
        self.pack(packer, items[::3])  # the rest was purged from the source
        self.assert_reads_back(packer, items)
        assert self.published(packer) == before, "a replay of a subset rewrote objects"

    def test_a_changed_file_replaces_its_entry(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        items = _ordered(_items(10))
        self.pack(packer, items)
        record, _ = items[4]
        self.pack(packer, [(record, b"the new bytes")])
        self.assert_reads_back(packer, [*items[:4], (record, b"the new bytes"), *items[5:]])

    # --- failure --------------------------------------------------------------------------

    def test_abort_publishes_nothing(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        writer = packer.open_bucket(DAY)
        for record, data in _ordered(_items(20)):
            writer.add(record, data)
        writer.abort()
        writer.abort()  # safe twice
        assert self.leftovers(packer) == {}

    def test_leaving_the_block_without_publish_aborts(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        self.pack(packer, _ordered(_items(5)))
        before = self.leftovers(packer)

        def fill_then_fail() -> None:
            with packer.open_bucket(DAY) as writer:
                for record, data in _ordered(_items(10, start=100)):
                    writer.add(record, data)
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            fill_then_fail()
        assert self.leftovers(packer) == before

    def test_duplicate_uid_is_a_typed_error(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        self.pack(packer, _ordered(_items(5)))
        before = self.published(packer)
        first = _item("twice", 10, b"one")
        second = _item("twice", 20, b"two")

        def pack_twice() -> None:
            with packer.open_bucket(DAY) as writer:
                writer.add(*first)
                writer.add(*second)
                writer.publish()

        with pytest.raises(DuplicateUidError) as caught:
            pack_twice()
        assert "twice" in str(caught.value)
        assert isinstance(caught.value, DeswmError)
        assert self.published(packer) == before, "a bucket with a duplicate was published"

    # --- archived() -------------------------------------------------------------------

    def test_archived_finds_published_entries(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        items = _ordered(_items(12))
        self.pack(packer, items)
        with packer.open_bucket(DAY) as writer:
            for record, data in items:
                entry = writer.archived(record)
                assert entry is not None, f"uid {record.uid!r} is not reported archived"
                assert entry.uid == record.uid
                assert entry.size == len(data)
                assert entry.sha256 == hashlib.sha256(data).hexdigest()
            unknown = SourceRecord("never-packed", DAY + timedelta(hours=1), "/src/x")
            assert writer.archived(unknown) is None
            writer.abort()

    def test_archived_of_an_empty_destination(self, make_packer: MakePacker) -> None:
        packer = make_packer(self.make_router())
        with packer.open_bucket(DAY) as writer:
            record, _ = _items(1)[0]
            assert writer.archived(record) is None
            writer.abort()


def _des(packer: Packer) -> Any:
    """The packer the default hooks can read (a DesPacker, perhaps behind a proxy)."""
    target = getattr(packer, "target", packer)
    if not hasattr(target, "store"):
        raise TypeError(
            f"{packer!r} is not a DesPacker: override published(), leftovers() and "
            "reader() to read what it wrote"
        )
    return target
