"""DesRouter: the DES test vectors, the digit rule, UTC days and stability across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deswm._errors import ConfigError, NaiveDatetimeError, SourceError
from deswm._model import ShardKey
from deswm._orchestrator import WatermarkOrchestrator
from deswm._packer import DesPacker
from deswm._routing import DesRouter, require_day_buckets, uid_text
from deswm.testing import (
    MemoryFileReader,
    MemorySourceProvider,
    MemoryWatermarkStore,
    RecordingRouter,
    memory_packer,
)


@pytest.mark.parametrize(
    ("uid", "created_at", "n_bits", "index", "hex_", "name"),
    [
        (12345, datetime(2024, 5, 17, 10, tzinfo=UTC), 8, 57, "39", "20240517_39_0000.des"),
        ("abc123", datetime(2023, 1, 1, tzinfo=UTC), 8, 92, "5C", "20230101_5C_0000.des"),
        ("abc123", datetime(2023, 1, 1, tzinfo=UTC), 16, 47964, "BB5C", "20230101_BB5C_0000.des"),
    ],
)
def test_des_test_vectors(
    uid: str | int, created_at: datetime, n_bits: int, index: int, hex_: str, name: str
) -> None:
    router = DesRouter(n_bits)
    key = router.route(uid, created_at)
    assert (key.index, key.hex, key.object_name(0)) == (index, hex_, name)
    assert key.prefix == name[: -len("0000.des")]
    assert zlib.crc32(b"abc123") == 0xCF02BB5C


def test_ascii_digits_route_by_value() -> None:
    router = DesRouter(8)
    assert router.shard_index("007") == router.shard_index("7") == 7
    assert router.shard_index("256") == 0
    assert router.shard_index(12345) == router.shard_index("12345") == 12345 % 256
    long_digits = "9" * 5000  # beyond int()'s default digit limit
    assert router.shard_index(long_digits) == int(long_digits[-8:]) % 256  # 10**8 % 256 == 0


def test_only_ascii_digits_count_as_digits() -> None:
    router = DesRouter(8)
    assert "²".isdigit()
    assert router.shard_index("²") == zlib.crc32("²".encode()) & 0xFF
    assert router.shard_index("١٢") == zlib.crc32("١٢".encode()) & 0xFF  # Arabic-Indic digits
    assert router.shard_index("12a") == zlib.crc32(b"12a") & 0xFF
    assert router.shard_index(" 12") == zlib.crc32(b" 12") & 0xFF  # no trimming
    assert router.shard_index("") == zlib.crc32(b"") & 0xFF


def test_int_uids_are_their_decimal_text() -> None:
    assert uid_text(42) == "42"
    assert uid_text("Ab") == "Ab"
    with pytest.raises(TypeError):
        uid_text(True)
    with pytest.raises(TypeError):
        uid_text(4.2)  # type: ignore[arg-type]


def test_aware_input_in_another_zone_routes_by_utc_day() -> None:
    router = DesRouter(8)
    warsaw_morning = datetime(2024, 5, 17, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert router.route("x", warsaw_morning).day == "20240516"
    new_york_evening = datetime(2024, 5, 17, 21, tzinfo=timezone(timedelta(hours=-4)))
    assert router.route("x", new_york_evening).day == "20240518"
    assert router.route("x", warsaw_morning).bucket == datetime(2024, 5, 16, tzinfo=UTC)


def test_naive_datetimes_are_rejected() -> None:
    router = DesRouter(8)
    with pytest.raises(NaiveDatetimeError):
        router.route("x", datetime(2024, 5, 17))
    with pytest.raises(NaiveDatetimeError):
        router.bucket_start(datetime(2024, 5, 17))
    with pytest.raises(NaiveDatetimeError):
        router.next_bucket(datetime(2024, 5, 17))


@pytest.mark.parametrize("n_bits", [3, 17, 0, -1, True, 8.0, "8", None])
def test_n_bits_out_of_range_is_a_config_error(n_bits: object) -> None:
    with pytest.raises(ConfigError) as info:
        DesRouter(n_bits)  # type: ignore[arg-type]
    assert info.value.key == "archive.n_bits"


@pytest.mark.parametrize(("n_bits", "width"), [(4, 1), (5, 2), (7, 2), (8, 2), (9, 3), (16, 4)])
def test_hex_is_fixed_width_for_every_n_bits(n_bits: int, width: int) -> None:
    router = DesRouter(n_bits)
    assert router.shard_count == 2**n_bits
    assert router.shard_hex(0) == "0" * width
    assert router.shard_hex(2**n_bits - 1) == format(2**n_bits - 1, "X").zfill(width)
    assert {len(router.shard_hex(i)) for i in range(0, 2**n_bits, max(1, 2**n_bits // 64))} == {
        width
    }
    with pytest.raises(ValueError, match="outside"):
        router.group(datetime(2024, 5, 17, tzinfo=UTC), 2**n_bits)


def test_bucket_arithmetic() -> None:
    router = DesRouter(8)
    instant = datetime(2024, 5, 17, 23, 59, 59, 999999, tzinfo=UTC)
    start = router.bucket_start(instant)
    assert start == datetime(2024, 5, 17, tzinfo=UTC)
    assert router.bucket_start(start) == start
    assert router.next_bucket(start) == datetime(2024, 5, 18, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a bucket start"):
        router.next_bucket(instant)
    assert router.bucket_of_day("20240517") == start
    with pytest.raises(ConfigError):
        router.bucket_of_day("2024-05-17")
    key = router.group(start, 57)
    assert key == ShardKey(start, 57, "39")
    with pytest.raises(ValueError, match="4-digit"):
        key.object_name(10000)


def test_routers_compare_by_width() -> None:
    assert DesRouter(8) == DesRouter(8)
    assert DesRouter(8) != DesRouter(12)
    assert hash(DesRouter(8)) == hash(DesRouter(8))
    assert repr(DesRouter(12)) == "DesRouter(n_bits=12)"


_UIDS = ["12345", "007", "7", "abc123", "zażółć", "😀-file", "²", "", "a" * 300, "x/y.json"]
_SCRIPT = """
import json, sys
from datetime import datetime, timezone
from deswm._routing import DesRouter
day = datetime(2024, 5, 17, 10, tzinfo=timezone.utc)
out = {n: [DesRouter(n).route(u, day).object_name(0) for u in json.loads(sys.argv[1])]
       for n in (4, 8, 12, 16, 5)}
print(json.dumps(out))
"""


def test_routes_are_identical_across_processes_and_hash_seeds() -> None:
    day = datetime(2024, 5, 17, 10, tzinfo=UTC)
    here = {
        str(n): [DesRouter(n).route(u, day).object_name(0) for u in _UIDS]
        for n in (4, 8, 12, 16, 5)
    }
    seen = []
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, json.dumps(_UIDS)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        seen.append(json.loads(done.stdout))
    assert all(result == here for result in seen)


# --- the whole datetime range (G17) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("created_at", "name"),
    [
        (datetime(999, 6, 1, 10, tzinfo=UTC), "09990601_0A_0000.des"),
        (datetime(1, 1, 1, tzinfo=UTC), "00010101_0A_0000.des"),
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "99991231_0A_0000.des"),
    ],
)
def test_years_before_1000_and_the_last_day_have_four_digit_names(
    created_at: datetime, name: str
) -> None:
    router = DesRouter(8)
    key = router.route(10, created_at)
    assert key.object_name(0) == name
    assert router.bucket_of_day(key.day) == key.bucket


@given(st.datetimes(timezones=st.just(UTC)))
def test_every_day_name_has_eight_digits_and_parses_back(created_at: datetime) -> None:
    router = DesRouter(4)
    key = router.route("x", created_at)
    assert key.day == f"{created_at.year:04d}{created_at.month:02d}{created_at.day:02d}"
    assert router.bucket_of_day(key.day) == key.bucket
    if key.bucket < datetime(9999, 12, 31, tzinfo=UTC):
        assert router.next_bucket(key.bucket) - key.bucket == timedelta(days=1)


def test_the_last_day_has_no_end_and_says_so() -> None:
    with pytest.raises(SourceError) as caught:
        DesRouter(8).next_bucket(datetime(9999, 12, 31, tzinfo=UTC))
    assert "99991231" in str(caught.value)
    assert "filter_query" in str(caught.value)


@pytest.mark.parametrize("day", ["9990601", "099906011", "0999-06-", "00000101", "20240230"])
def test_a_day_name_is_exactly_eight_digits_of_a_real_day(day: str) -> None:
    with pytest.raises(ConfigError):
        DesRouter(8).bucket_of_day(day)


# --- buckets are UTC days -------------------------------------------------------------------


class OtherBuckets:
    """A router of DesRouter's shards whose buckets are ``length`` long from ``origin``.

    Internally consistent (route is its parts), so only the bucket rule can refuse it.
    """

    def __init__(self, length: timedelta, origin: datetime) -> None:
        self._shards = DesRouter(8)
        self._length = length
        self._origin = origin

    def __repr__(self) -> str:
        return f"OtherBuckets({self._length}, {self._origin.isoformat()})"

    @property
    def shard_count(self) -> int:
        return self._shards.shard_count

    def shard_index(self, uid: str | int) -> int:
        return self._shards.shard_index(uid)

    def route(self, uid: str | int, created_at: datetime) -> ShardKey:
        return self.group(self.bucket_start(created_at), self.shard_index(uid))

    def group(self, bucket: datetime, index: int) -> ShardKey:
        return ShardKey(bucket.astimezone(UTC), index, self._shards.shard_hex(index))

    def bucket_start(self, instant: datetime) -> datetime:
        return self._origin + (instant - self._origin) // self._length * self._length

    def next_bucket(self, bucket: datetime) -> datetime:
        return bucket + self._length


UTC_DAYS = OtherBuckets(timedelta(days=1), datetime(2000, 1, 1, tzinfo=UTC))
NOT_UTC_DAYS = {
    "hours": OtherBuckets(timedelta(hours=1), datetime(2000, 1, 1, tzinfo=UTC)),
    "weeks": OtherBuckets(timedelta(days=7), datetime(2024, 5, 13, tzinfo=UTC)),  # Mondays
    "weeks from the probe's day": OtherBuckets(
        timedelta(days=7), datetime(2024, 5, 17, tzinfo=UTC)
    ),
    "local days": OtherBuckets(
        timedelta(days=1), datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    ),
    "UTC days in another zone": OtherBuckets(
        timedelta(days=1), datetime(2000, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    ),
}


def test_routers_of_utc_days_pass_the_bucket_rule() -> None:
    require_day_buckets(DesRouter(4))
    require_day_buckets(RecordingRouter(DesRouter(16)))
    require_day_buckets(UTC_DAYS)


@pytest.mark.parametrize("router", NOT_UTC_DAYS.values(), ids=NOT_UTC_DAYS.keys())
def test_buckets_that_are_not_utc_days_are_refused(router: OtherBuckets) -> None:
    with pytest.raises(ConfigError, match="does not bucket by UTC day") as caught:
        require_day_buckets(router)
    assert caught.value.key == "router"
    assert "{YYYYMMDD}_{HEX}_{NNNN}.des" in str(caught.value.hint)


@pytest.mark.parametrize("router", NOT_UTC_DAYS.values(), ids=NOT_UTC_DAYS.keys())
def test_the_packer_and_the_orchestrator_refuse_them(router: OtherBuckets, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="does not bucket by UTC day"):
        DesPacker(tmp_path, router)
    with pytest.raises(ConfigError, match="does not bucket by UTC day"):
        WatermarkOrchestrator(
            MemoryWatermarkStore(),
            MemorySourceProvider([]),
            MemoryFileReader({}),
            router,
            memory_packer(),
            pipeline="p",
        )
    DesPacker(tmp_path, UTC_DAYS)  # the same router with UTC days is fine
