from collections.abc import Callable
from typing import Any, TypeVar

_E = TypeVar("_E", bound=tuple[Any, ...])

def read_file(dirfd: int, path: str, /) -> bytes | None: ...
def planned_entries(
    records: bytes | bytearray | memoryview,
    entry_type: type[_E],
    codecs: tuple[str | None, ...],
    day_prefix: Callable[[int], str],
    layout: tuple[int, int, int, int, int, int, int],
    /,
) -> list[_E]: ...
