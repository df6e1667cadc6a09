"""Hypothesis strategies for deswm's inputs and for the histories it must survive.

Inputs aim at the edges that broke earlier systems: uids of every DES routing kind (ASCII
digits with leading zeros, ASCII text with ``/`` and ``..``, unicode, very long),
``created_at`` exactly at midnight and one microsecond either side, ties on
``created_at``, zero-byte files. :func:`interruptions` draws schedules of faults and
rewinds for :func:`deswm.testing.assert_idempotent_replay`. Names are plural nouns, like
``hypothesis.strategies``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from deswm._checkpoints import POINTS, Checkpoint
from deswm._model import SourceRecord
from deswm.testing._dataset import Dataset
from deswm.testing._schedules import Cycle, Interruption, Rewind, Step, Target

__all__ = [
    "DEFAULT_CHECKPOINTS",
    "created_ats",
    "datasets",
    "file_contents",
    "interruptions",
    "source_records",
    "uids",
]

_DAY = timedelta(days=1)
_EPOCH = datetime(2024, 5, 10, tzinfo=UTC)

LocationOf = Callable[[int, str], str]
"""Maps a row's number and uid to its ``location``."""

DEFAULT_CHECKPOINTS: tuple[Checkpoint, ...] = (
    Checkpoint.CYCLE_STARTED,
    Checkpoint.BUCKET_BEFORE_PUBLISH,
    Checkpoint.BUCKET_AFTER_PUBLISH,
    Checkpoint.BUCKET_AFTER_COMMIT,
    Checkpoint.PACKER_AFTER_ADD,
    Checkpoint.PACKER_BEFORE_GROUP,
    Checkpoint.PACKER_MERGE_BEFORE_WRITE,
    Checkpoint.PACKER_AFTER_PART,
    Checkpoint.PACKER_BEFORE_DELETE,
    Checkpoint.PACKER_BEFORE_DIR_SYNC,
    Checkpoint.SHARDIO_PUBLISH_AFTER_WRITE,
    Checkpoint.SHARDIO_PUBLISH_AFTER_FSYNC,
    Checkpoint.SHARDIO_PUBLISH_AFTER_RENAME,
    Checkpoint.SOURCE_BETWEEN_PAGES,
)
"""Checkpoints :func:`interruptions` raises at: the write path, minus the store internals."""


def uids(*, max_long: int = 3000) -> st.SearchStrategy[str]:
    """uids of every kind DES routing distinguishes (none empty, all valid UTF-8)."""
    digits = st.text("0123456789", min_size=1, max_size=20)
    ascii_text = st.text(
        st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40
    ).filter(lambda u: not (u.isascii() and u.isdigit()))
    unicode_text = st.text(
        st.characters(exclude_categories=["Cs"], min_codepoint=128), min_size=1, max_size=20
    )
    mixed = st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1, max_size=30)
    long_text = st.text("abcXYZ-_/.09", min_size=200, max_size=max_long)
    return st.one_of(digits, ascii_text, unicode_text, mixed, long_text)


def created_ats(*, start: datetime = _EPOCH, days: int = 4) -> st.SearchStrategy[datetime]:
    """Aware UTC instants over ``days`` days from ``start`` (a UTC midnight).

    A third of them sit on a midnight or one microsecond either side of it.
    """
    day = st.integers(0, days - 1).map(lambda d: start + d * _DAY)
    near_midnight = st.tuples(
        st.integers(0, days),
        st.sampled_from([timedelta(0), timedelta(microseconds=-1), timedelta(microseconds=1)]),
    ).map(lambda t: start + t[0] * _DAY + t[1])
    anywhere = st.tuples(day, st.integers(0, 86_400 * 1_000_000 - 1)).map(
        lambda t: t[0] + timedelta(microseconds=t[1])
    )
    in_range = near_midnight.filter(lambda t: start <= t < start + days * _DAY)
    return st.one_of(in_range, anywhere, anywhere)


def file_contents(*, max_size: int = 4096) -> st.SearchStrategy[bytes]:
    """Empty files, compressible text and random bytes."""
    text = st.text(st.sampled_from('abc \n{}:,"0123'), max_size=max_size).map(str.encode)
    return st.one_of(st.just(b""), st.binary(max_size=max_size), text)


@st.composite
def source_records(
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 40,
    start: datetime = _EPOCH,
    days: int = 4,
    location_prefix: str = "",
    location: LocationOf | None = None,
    max_long_uid: int = 3000,
    uid_strategy: st.SearchStrategy[str] | None = None,
) -> list[SourceRecord]:
    """Rows with unique uids; ties on ``created_at`` are drawn on purpose.

    Args:
        location: ``location(number, uid)`` gives each row's location (your layout:
            ``lambda n, uid: f"tenant-a/{n}.bin"``, an ``s3://`` URL, ...); by default
            ``f"{location_prefix}{number}.dat"``.
        uid_strategy: draw uids from this instead of :func:`uids` (e.g. your own key
            format, or ``uids()`` filtered to what your table's column accepts).
    """
    count = draw(st.integers(min_size, max_size))
    names = draw(
        st.lists(
            uid_strategy if uid_strategy is not None else uids(max_long=max_long_uid),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    instants = draw(
        st.lists(created_ats(start=start, days=days), min_size=1, max_size=max(count, 1))
    )
    name_of = location or (lambda number, _uid: f"{location_prefix}{number}.dat")
    records = []
    for number, uid in enumerate(names):
        # Reusing earlier instants produces ties on created_at.
        created_at = instants[number % len(instants)]
        records.append(SourceRecord(uid, created_at, name_of(number, uid)))
    return records


@st.composite
def datasets(
    draw: st.DrawFn,
    *,
    min_size: int = 0,
    max_size: int = 30,
    start: datetime = _EPOCH,
    days: int = 4,
    location_prefix: str = "",
    location: LocationOf | None = None,
    max_file_size: int = 1500,
    max_long_uid: int = 400,
    uid_strategy: st.SearchStrategy[str] | None = None,
) -> Dataset:
    """Source rows (as :func:`source_records`) with the bytes of each file.

    Each record's ``size`` is its file's length, as a ``size_bytes`` column would hold.
    Load :attr:`Dataset.records` into your table and serve :attr:`Dataset.contents`
    from your reader, or use :meth:`Dataset.source` and :meth:`Dataset.reader`.
    """
    records = draw(
        source_records(
            min_size=min_size,
            max_size=max_size,
            start=start,
            days=days,
            location_prefix=location_prefix,
            location=location,
            max_long_uid=max_long_uid,
            uid_strategy=uid_strategy,
        )
    )
    contents: dict[str, bytes] = {}
    sized = []
    for record in records:
        if record.location not in contents:
            contents[record.location] = draw(file_contents(max_size=max_file_size))
        sized.append(
            SourceRecord(
                record.uid, record.created_at, record.location, len(contents[record.location])
            )
        )
    return Dataset(tuple(sized), contents)


def _interruption(
    targets: Sequence[Target], checkpoints: Sequence[str], max_call: int
) -> st.SearchStrategy[Interruption]:
    call = st.integers(1, max_call)
    options: dict[Target, st.SearchStrategy[Interruption]] = {
        "store": st.builds(
            Interruption,
            st.just("store"),
            st.sampled_from(["advance", "get", "initialize"]),
            call,
            st.sampled_from(["raise", "raise_after"]),
        ),
        "source": st.builds(
            Interruption,
            st.just("source"),
            st.just("iter_records"),
            st.just(1),
            st.just("cut"),
            st.integers(0, 30),
        ),
        "reader": st.builds(
            Interruption,
            st.just("reader"),
            st.just("read_many"),
            st.integers(1, 5 * max_call),
            st.sampled_from(["raise", "missing"]),
        ),
        "packer": st.one_of(
            st.builds(
                Interruption,
                st.just("packer"),
                st.sampled_from(["add", "publish"]),
                call,
                st.sampled_from(["raise", "raise_after"]),
            ),
            # Not raise_after: a writer opened but never handed out could not be closed.
            st.builds(Interruption, st.just("packer"), st.just("open_bucket"), call),
        ),
    }
    if checkpoints:
        options["checkpoint"] = st.builds(
            Interruption, st.just("checkpoint"), st.sampled_from(list(checkpoints)), call
        )
    return st.one_of([options[target] for target in targets if target in options])


def interruptions(
    *,
    min_size: int = 1,
    max_size: int = 6,
    targets: Sequence[Target] = ("store", "source", "reader", "packer", "checkpoint"),
    checkpoints: Sequence[str] = DEFAULT_CHECKPOINTS,
    max_call: int = 6,
    max_rewind: int = 4,
) -> st.SearchStrategy[list[Step]]:
    """Schedules of cycles (some interrupted) and rewinds, for ``assert_idempotent_replay``.

    Args:
        targets: where faults may strike: the store (a failed or unacknowledged
            ``advance``), the source (a stream cut mid-window), the reader (an error, or
            a file missing for one cycle), the packer (``add``/``publish`` failing, or a
            publish whose success is not reported) and named checkpoints.
        checkpoints: the checkpoints a fault may be raised at.
        max_call: the highest call number a fault waits for (small values hit often).
        max_rewind: the most days one rewind moves the watermark back (0: no rewinds).

    Shrinks towards short schedules of clean cycles, so a failing example ends up as the
    one fault that matters.
    """
    unknown = [name for name in checkpoints if name not in POINTS]
    if unknown:
        raise ValueError(f"unknown checkpoint {unknown[0]!r}; known: {', '.join(POINTS)}")
    cycles = st.builds(Cycle, st.none() | _interruption(targets, checkpoints, max_call))
    step: st.SearchStrategy[Step] = cycles
    if max_rewind > 0:
        step = st.one_of(cycles, st.builds(Rewind, st.integers(1, max_rewind)))
    return st.lists(step, min_size=min_size, max_size=max_size)
