"""The one error map: what each storage failure means."""

from __future__ import annotations

import errno

import pytest
from botocore.exceptions import ClientError

from deswm._errors import ObjectChangedError
from deswm._objectstore.errors import (
    error_code,
    http_status,
    is_conditional_conflict,
    is_invalid_range,
    is_missing_key,
    is_precondition_failed,
    is_transient,
    object_changed,
)


def _s3(code: str, status: int, wrap: type[OSError] = OSError) -> OSError:
    """An s3fs-style error: an OSError chaining botocore's ClientError."""
    cause = ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )
    exc = wrap(errno.EIO, code)
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("code", "status", "precondition", "conflict", "invalid_range"),
    [
        ("PreconditionFailed", 412, True, False, False),
        ("", 412, True, False, False),
        ("ConditionalRequestConflict", 409, False, True, False),
        ("InvalidRange", 416, False, False, True),
        ("AccessDenied", 403, False, False, False),
    ],
)
def test_status_classification(
    code: str, status: int, precondition: bool, conflict: bool, invalid_range: bool
) -> None:
    exc = _s3(code, status)
    assert is_precondition_failed(exc) is precondition
    assert is_conditional_conflict(exc) is conflict
    assert is_invalid_range(exc) is invalid_range


def test_plain_os_errors_have_no_status() -> None:
    exc = OSError(errno.EIO, "disk")
    assert (error_code(exc), http_status(exc)) == (None, None)
    assert not is_precondition_failed(exc)


def test_a_missing_key_is_not_a_missing_bucket() -> None:
    assert is_missing_key(_s3("NoSuchKey", 404, FileNotFoundError))
    assert is_missing_key(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_missing_key(_s3("NoSuchBucket", 404, FileNotFoundError))
    assert not is_missing_key(_s3("NoSuchKey", 404))  # not a FileNotFoundError


def test_a_failed_pin_is_an_object_changed_error() -> None:
    changed = object_changed("part.des", _s3("PreconditionFailed", 412))
    assert isinstance(changed, ObjectChangedError)
    other = _s3("AccessDenied", 403)
    assert object_changed("part.des", other) is other


class ReadTimeoutError(Exception):
    """Named like botocore's: the class name says it is transient."""


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (_s3("SlowDown", 503), True),
        (_s3("InternalError", 500), True),
        (_s3("TooMany", 429), True),
        (_s3("AccessDenied", 403), False),
        (OSError(errno.ECONNRESET, "reset"), True),
        (OSError(errno.EIO, "io"), False),
        (TimeoutError(), True),
        (ReadTimeoutError(), True),
        (FileNotFoundError(errno.ENOENT, "gone"), False),
        (PermissionError(errno.EACCES, "no"), False),
        (ValueError("bad"), False),
    ],
)
def test_transient_classification(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_transient_looks_through_the_cause_chain() -> None:
    outer = RuntimeError("wrapped")
    outer.__cause__ = OSError(errno.ETIMEDOUT, "timed out")
    assert is_transient(outer)


def test_aiohttp_style_status() -> None:
    exc = Exception("server error")
    exc.status = 502  # type: ignore[attr-defined]
    assert http_status(exc) == 502
    assert is_transient(exc)
