"""The one map from storage failures to what they mean for deswm.

s3fs raises ``OSError`` subclasses translated from botocore's ``ClientError`` (chained as
``__cause__``); aiohttp raises ``ClientResponseError`` with a ``status``; local disks raise
``OSError`` with an ``errno``. Every decision deswm takes on a failure reads it here:

* **412** (``PreconditionFailed``): a conditional request lost; on a pinned read the
  object changed (:class:`~deswm.ObjectChangedError`), on a conditional write the
  compare-and-set failed;
* **409** (``ConditionalRequestConflict``): another conditional write on the key is in
  flight; retry;
* **416** (``InvalidRange``): a suffix range of an empty object;
* **missing key** as opposed to a missing bucket (which is an error, not "no object");
* **transient**: connection trouble, timeouts, HTTP 5xx, throttling: worth a retry.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator, Mapping
from typing import Final

from deswm._errors import ObjectChangedError

__all__ = [
    "error_code",
    "http_status",
    "is_conditional_conflict",
    "is_invalid_range",
    "is_missing_key",
    "is_precondition_failed",
    "is_transient",
    "object_changed",
]

# errno values that say "try again": busy/throttled (s3fs maps SlowDown and 503 to EBUSY),
# remote I/O (s3fs maps 500 to EREMOTEIO), timeouts and dropped connections, stale NFS.
_TRANSIENT_ERRNOS: Final = frozenset(
    {
        errno.EAGAIN,
        errno.EBUSY,
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EPIPE,
        errno.EREMOTEIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)
_TRANSIENT_CODES: Final = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
# Exception class names of HTTP stacks (botocore, aiohttp, urllib3) that are transient.
_TRANSIENT_NAMES: Final = re.compile(
    r"Timeout|ConnectionError|ConnectionClosed|ServerDisconnected|ClientPayloadError"
    r"|IncompleteRead|ProtocolError|ResponseStreamingError"
)


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of one exception (a botocore ``ClientError``), if it has one."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):
        code = response.get("Error", {}).get("Code")
        return code if isinstance(code, str) else None
    return None


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of one exception (botocore ``ClientError`` or aiohttp), if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, Mapping):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    status = getattr(exc, "status", None)  # aiohttp ClientResponseError
    return status if isinstance(status, int) and 100 <= status <= 599 else None


def _answers(exc: BaseException) -> Iterator[tuple[str, int | None]]:
    """``(code, status)`` of an s3fs error and of the botocore error it chains."""
    for candidate in (exc, exc.__cause__):
        if candidate is not None and isinstance(getattr(candidate, "response", None), Mapping):
            yield str(error_code(candidate) or ""), http_status(candidate)


def _is(exc: BaseException, codes: tuple[str, ...], status: int) -> bool:
    return any(code in codes or got == status for code, got in _answers(exc))


def is_precondition_failed(exc: BaseException) -> bool:
    """HTTP 412: an ``IfMatch``/``IfNoneMatch`` condition failed."""
    return _is(exc, ("PreconditionFailed", "412"), 412)


def is_conditional_conflict(exc: BaseException) -> bool:
    """HTTP 409: another conditional write on the key is in flight; retry."""
    return _is(exc, ("ConditionalRequestConflict",), 409)


def is_invalid_range(exc: BaseException) -> bool:
    """HTTP 416: S3's answer to a suffix range of an empty object."""
    return _is(exc, ("InvalidRange", "416"), 416)


def is_missing_key(exc: BaseException) -> bool:
    """A missing object, as opposed to a missing bucket (which is an error)."""
    if not isinstance(exc, FileNotFoundError):
        return False
    return not any(code == "NoSuchBucket" for code, _ in _answers(exc))


def object_changed(name: str, exc: BaseException) -> BaseException:
    """A pinned read's failure as deswm sees it: a 412 means the object was replaced."""
    if is_precondition_failed(exc):
        return ObjectChangedError(name, "the object's ETag changed")
    return exc


def is_transient(exc: BaseException) -> bool:
    """Whether retrying might help: connection trouble, timeouts, HTTP 5xx, throttling.

    Looks through the exception and its causes (s3fs chains the botocore error). Missing
    files, permission errors and HTTP 4xx other than 429 are never transient.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError | PermissionError | IsADirectoryError):
            return False
        verdict = _transient_verdict(current)
        if verdict is not None:
            return verdict
        current = current.__cause__ or current.__context__
    return False


def _transient_verdict(exc: BaseException) -> bool | None:
    if error_code(exc) in _TRANSIENT_CODES:
        return True
    status = http_status(exc)
    if status is not None:
        return status >= 500 or status == 429
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if any(_TRANSIENT_NAMES.search(cls.__name__) for cls in type(exc).__mro__):
        return True
    return None
