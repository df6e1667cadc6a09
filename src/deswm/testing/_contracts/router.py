"""The contract of :class:`~deswm.ShardRouter`, as a reusable test class.

A router decides where every file lives forever, so its promises are strict (G5, G6):
routing is a pure function of ``(uid, created_at)``, the same in every process whatever
``PYTHONHASHSEED`` says; buckets are UTC days (the object names embed the day) and tile
time without gaps or overlaps; a key names an object in the DES layout. A router that
claims DES compatibility must also route exactly like the original DES tools (docs:
des-format). Subclass it in a ``Test*`` class and provide a ``router`` fixture::

    from deswm.testing import ShardRouterContract

    class TestMyRouter(ShardRouterContract):
        des_compatible = False  # a router of your own design

        @pytest.fixture
        def router(self):
            return MyRouter()

Capability flags (class attributes): ``des_compatible`` turns on the DES rules and test
vectors; ``check_processes`` re-runs routing in fresh interpreters, which needs the
router to pickle (its class importable from ``sys.path``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings

from deswm._errors import DeswmError, NaiveDatetimeError
from deswm._protocols import ShardRouter
from deswm._routing import require_day_buckets
from deswm._timeutil import format_day
from deswm.testing._strategies import created_ats, uids

__all__ = ["ShardRouterContract"]

US = timedelta(microseconds=1)
WHEN = datetime(2024, 5, 17, 10, tzinfo=UTC)
SAMPLE_UIDS: tuple[str | int, ...] = (
    "12345",
    12345,
    "007",
    "7",
    "0",
    "abc123",
    "zażółć",
    "😀-file",
    "²",
    "١٢",
    " 12",
    "x/y.json",
    "..",
    "a" * 300,
    "9" * 5000,
)
_NAME = re.compile(r"^(\d{8})_([0-9A-F]+)_(\d{4})\.des$")
_FIXED = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
_SCRIPT = """
import json, pickle, sys
from datetime import datetime
router = pickle.loads(sys.stdin.buffer.read())
out = []
for uid, when in json.loads(sys.argv[1]):
    key = router.route(uid, datetime.fromisoformat(when))
    out.append([router.shard_index(uid), key.hex, key.object_name(0)])
print(json.dumps(out))
"""


def _utc(value: datetime) -> None:
    assert value.tzinfo is not None, f"{value!r} is naive"
    assert value.utcoffset() == timedelta(0), f"{value!r} is not UTC"


class ShardRouterContract:
    """Tests every promise of the :class:`~deswm.ShardRouter` protocol.

    Subclasses override the ``router`` fixture and may set ``des_compatible`` and
    ``check_processes`` to ``False``.
    """

    des_compatible: bool = True
    check_processes: bool = True

    @pytest.fixture
    def router(self) -> ShardRouter:
        """The router under test; every subclass must override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `router` fixture to return the "
            "ShardRouter under test"
        )

    def test_satisfies_the_protocol(self, router: ShardRouter) -> None:
        assert isinstance(router, ShardRouter)
        assert isinstance(router.shard_count, int)
        assert router.shard_count >= 1

    # --- purity (G6) --------------------------------------------------------------

    def test_routing_is_repeatable_and_order_free(self, router: ShardRouter) -> None:
        first = [router.route(uid, WHEN) for uid in SAMPLE_UIDS]
        backwards = [router.route(uid, WHEN) for uid in reversed(SAMPLE_UIDS)]
        assert first == list(reversed(backwards)), "a route depends on earlier calls"
        assert [router.shard_index(uid) for uid in SAMPLE_UIDS] == [k.index for k in first]

    @_FIXED
    @given(uid=uids(), created_at=created_ats())
    def test_route_agrees_with_its_parts(
        self, router: ShardRouter, uid: str, created_at: datetime
    ) -> None:
        key = router.route(uid, created_at)
        index = router.shard_index(uid)
        assert 0 <= index < router.shard_count
        assert key.index == index
        assert key.bucket == router.bucket_start(created_at)
        assert key == router.group(key.bucket, index)
        assert router.route(uid, created_at) == key

    def test_int_uid_routes_as_its_decimal_text(self, router: ShardRouter) -> None:
        for number in (0, 7, 255, 256, 12345, 2**40 + 3):
            assert router.route(number, WHEN) == router.route(str(number), WHEN)

    def test_same_instant_in_any_zone_routes_alike(self, router: ShardRouter) -> None:
        for offset in (-12, -4, 2, 5.5, 14):
            zone = timezone(timedelta(hours=offset))
            for instant in (WHEN, WHEN.replace(hour=0), WHEN.replace(hour=23, minute=59)):
                local = instant.astimezone(zone)
                assert router.route("abc123", local) == router.route("abc123", instant)
                assert router.bucket_start(local) == router.bucket_start(instant)

    def test_same_routes_in_other_processes(self, router: ShardRouter) -> None:
        if not self.check_processes:
            pytest.skip("check_processes = False")
        try:
            blob = pickle.dumps(router)
        except Exception as exc:
            pytest.fail(
                f"{router!r} does not pickle ({exc}); make it picklable or set "
                "check_processes = False and prove cross-process stability another way"
            )
        cases = [
            [uid, (WHEN + timedelta(hours=n)).isoformat()] for n, uid in enumerate(SAMPLE_UIDS)
        ]
        here = []
        for uid, when in cases:
            key = router.route(uid, datetime.fromisoformat(str(when)))
            here.append([router.shard_index(uid), key.hex, key.object_name(0)])
        # One fresh interpreter with another hash seed than ours: the built-in hash()
        # would differ there, so any use of it in routing shows.
        seed = "1" if os.environ.get("PYTHONHASHSEED") == "0" else "0"
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        }
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, json.dumps(cases)],
            input=blob,
            env=env,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        assert json.loads(done.stdout) == here, f"routes differ with PYTHONHASHSEED={seed}"

    # --- buckets (G5, G10) --------------------------------------------------------

    @_FIXED
    @given(instant=created_ats(days=40))
    def test_buckets_tile_time(self, router: ShardRouter, instant: datetime) -> None:
        start = router.bucket_start(instant)
        end = router.next_bucket(start)
        _utc(start)
        _utc(end)
        assert start <= instant < end
        assert router.bucket_start(start) == start, "a bucket start is its own bucket"
        assert router.bucket_start(end) == end
        assert router.bucket_start(end - US) == start, "a gap between buckets"
        assert router.bucket_start(start - US) < start, "buckets overlap"

    @_FIXED
    @given(instant=created_ats(days=40))
    def test_buckets_are_utc_days(self, router: ShardRouter, instant: datetime) -> None:
        # Object names embed the UTC day, so no other bucket length can be named.
        utc = instant.astimezone(UTC)
        day = utc.replace(hour=0, minute=0, second=0, microsecond=0)
        assert router.bucket_start(instant) == day
        assert router.next_bucket(day) == day + timedelta(days=1)
        assert router.route("abc123", instant).day == format_day(utc)
        require_day_buckets(router)

    def test_midnight_belongs_to_the_bucket_it_starts(self, router: ShardRouter) -> None:
        midnight = router.bucket_start(WHEN)
        assert router.route("a", midnight).bucket == midnight
        assert router.route("a", midnight - US).bucket < midnight

    def test_naive_datetimes_are_rejected(self, router: ShardRouter) -> None:
        naive = WHEN.replace(tzinfo=None)
        start = router.bucket_start(WHEN).replace(tzinfo=None)
        for call in (
            lambda: router.route("a", naive),
            lambda: router.bucket_start(naive),
            lambda: router.next_bucket(start),
        ):
            with pytest.raises(NaiveDatetimeError):
                call()

    # --- keys ---------------------------------------------------------------------

    def test_keys_name_objects_in_the_des_layout(self, router: ShardRouter) -> None:
        widths = set()
        bucket = router.bucket_start(WHEN)
        step = max(1, router.shard_count // 97)
        for index in [*range(0, router.shard_count, step), router.shard_count - 1]:
            key = router.group(bucket, index)
            match = _NAME.match(key.object_name(0))
            assert match is not None, key.object_name(0)
            assert match.group(1) == format_day(bucket.astimezone(UTC)) == key.day
            assert int(match.group(2), 16) == index
            assert key.object_name(0).startswith(key.prefix)
            assert key.prefix.endswith("_")
            widths.add(len(key.hex))
        assert len(widths) == 1, f"shard hex of several widths: {sorted(widths)}"

    def test_group_rejects_indexes_out_of_range(self, router: ShardRouter) -> None:
        bucket = router.bucket_start(WHEN)
        for index in (-1, router.shard_count):
            with pytest.raises((ValueError, DeswmError)):
                router.group(bucket, index)

    # --- DES compatibility --------------------------------------------------------

    def test_des_rules(self, router: ShardRouter) -> None:
        if not self.des_compatible:
            pytest.skip("des_compatible = False")
        count = router.shard_count
        bits = count.bit_length() - 1
        assert count == 2**bits, f"DES shard counts are powers of two, not {count}"
        assert 4 <= bits <= 16, f"DES has 2**4 to 2**16 shards, not {count}"
        width = -(-bits // 4)
        for uid in SAMPLE_UIDS:
            text = str(uid)
            expected = (
                int(text[-16:]) % count  # 10**16 is a multiple of 2**16: same modulo
                if text.isascii() and text.isdigit()
                else zlib.crc32(text.encode("utf-8")) & (count - 1)
            )
            key = router.route(uid, WHEN)
            assert key.index == expected, f"uid {text[:40]!r}"
            assert key.hex == format(expected, "X").zfill(width)
        assert router.shard_index("007") == router.shard_index("7")

    def test_des_test_vectors(self, router: ShardRouter) -> None:
        if not self.des_compatible:
            pytest.skip("des_compatible = False")
        vectors: dict[int, list[tuple[str | int, datetime, str]]] = {
            256: [
                (12345, datetime(2024, 5, 17, 10, tzinfo=UTC), "20240517_39_0000.des"),
                ("abc123", datetime(2023, 1, 1, tzinfo=UTC), "20230101_5C_0000.des"),
            ],
            65536: [("abc123", datetime(2023, 1, 1, tzinfo=UTC), "20230101_BB5C_0000.des")],
        }
        for uid, created_at, name in vectors.get(router.shard_count, []):
            assert router.route(uid, created_at).object_name(0) == name
        # Any width: the vector's crc32, masked.
        key = router.route("abc123", datetime(2023, 1, 1, tzinfo=UTC))
        assert key.index == 0xCF02BB5C & (router.shard_count - 1)
