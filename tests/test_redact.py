"""Secrets never leave deswm: URLs are masked from their parsed parts (G13, issue 18 item 4)."""

from __future__ import annotations

import contextlib
import json
import logging
import string
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from deswm._config import load_config
from deswm._errors import ConfigError, DeswmError
from deswm._model import FileFailure, WatermarkKey
from deswm._redact import is_secret_name, redact, redact_url, scrub, secret_values, url_secrets
from deswm._sources.sql import SqlSourceProvider
from deswm._stores.error_store import SqlErrorStore
from deswm._stores.sql import SqlWatermarkStore

UNREACHABLE = "127.0.0.1:1"
"""Nothing listens on port 1: a connection fails at once, without a password check."""


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        ("postgresql://u:p/ss@host/db", "postgresql://u:***@host/db", ["p/ss", "ss@"]),
        ("postgresql://u:p%40ss@host/db", "postgresql://u:***@host/db", ["p%40ss", "p@ss"]),
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db", ["p@ss", "ss@"]),
        ("mysql+pymysql://root@h/db", "mysql+pymysql://root@h/db", []),
        (
            "postgresql://u@h/db?password=pw1&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
            ["pw1"],
        ),
        (
            "s3://AK:se/cr@et@bucket/p?X-Amz-Signature=abc1&x=1#token=zz9",
            "s3://AK:***@bucket/p?X-Amz-Signature=***&x=1#token=***",
            ["se/cr", "abc1", "zz9"],
        ),
        (
            "https://acct.blob.core.windows.net/c/f?sv=2024&sig=SIGNED&sp=r",
            "https://acct.blob.core.windows.net/c/f?sv=2024&sig=***&sp=r",
            ["SIGNED"],
        ),
        ("https://TOKEN@github.com/x", "https://***@github.com/x", ["TOKEN"]),
        (
            "gs://b/o?auth=A1&pwd=B2&sas=C3&api_key=D4&session_token=E5&credentials=F6",
            "gs://b/o?auth=***&pwd=***&sas=***&api_key=***&session_token=***&credentials=***",
            ["A1", "B2", "C3", "D4", "E5", "F6"],
        ),
        ("s3://bucket/icon@2x.png", "s3://bucket/icon@2x.png", []),
        ("s3://bucket/dir:x/icon@2x.png", "s3://bucket/dir:x/icon@2x.png", []),
        ("/data/files/a#b.txt", "/data/files/a#b.txt", []),
    ],
)
def test_redact_url(url: str, shown: str, hidden: list[str]) -> None:
    assert redact_url(url) == shown
    for part in hidden:
        assert part not in redact_url(url)
        assert part not in redact(f"failed on {url}: try again")


def test_redact_keeps_the_words_around_a_url() -> None:
    text = "cannot open postgresql://u:p/w@h/db: refused, see s3://b/k?token=t0k"
    assert redact(text) == "cannot open postgresql://u:***@h/db: refused, see s3://b/k?token=***"


def test_secret_names_and_values() -> None:
    for name in ("password", "PWD", "X-Amz-Security-Token", "SecretAccessKey", "sig", "key"):
        assert is_secret_name(name)
    for name in ("sslmode", "region", "endpoint_url", "charset", "sp"):
        assert not is_secret_name(name)
    options = {"key": "AKIA1", "client_kwargs": {"region_name": "x", "aws_secret": "s3cr"}}
    assert sorted(secret_values(options)) == ["AKIA1", "s3cr"]
    assert "p/ss" in url_secrets(sa.make_url("postgresql://u:p%2Fss@h/db"))
    assert scrub("a p/ss b", ["p/ss"]) == "a *** b"


def test_a_raw_at_in_a_database_password_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "deswm.toml"
    config.write_text(
        '[source]\nurl = "postgresql+psycopg://u:p@ss-word@db.example/files"\n'
        '[archive]\nurl = "archive"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert caught.value.key == "source.url"
    assert "%40" in str(caught.value)
    assert "ss-word" not in str(caught.value)
    with pytest.raises(ConfigError) as direct:
        SqlWatermarkStore("mysql+pymysql://u:p@ss-word@db.example/files")
    assert direct.value.key == "watermark.url"
    assert "ss-word" not in str(direct.value)


def test_a_slash_in_the_password_is_not_in_the_config_repr(tmp_path: Path) -> None:
    config = tmp_path / "deswm.toml"
    config.write_text(
        '[source]\nurl = "postgresql+psycopg://u:top/secret@db.example/files"\n'
        '[watermark]\nurl = "mysql+pymysql://u:other/secret@db.example/w?token=tok3n"\n'
        '[archive]\nurl = "s3://bucket/des?sig=s1gned"\n'
    )
    text = repr(load_config(config))
    for secret in ("top/secret", "other/secret", "tok3n", "s1gned", "secret@"):
        assert secret not in text


# --- the property: a generated password appears nowhere --------------------------------------

passwords = st.text(
    alphabet=st.sampled_from(string.ascii_letters + string.digits + "/@:%#?&=+!$'()*,;[] ~-_."),
    min_size=8,
    max_size=24,
)


def _db_url(backend: str, password: str, host: str = UNREACHABLE, query: str = "") -> str:
    driver = "postgresql+psycopg" if backend == "postgresql" else "mysql+pymysql"
    return f"{driver}://deswm_nobody:{quote(password, safe='')}@{host}/test{query}"


def _everything_said(password: str, tmp_path: Path, backend: str) -> list[str]:
    """repr()s, errors, CLI output and -v log lines of deswm facing an unreachable database."""
    url = _db_url(backend, password, query="?connect_timeout=2&password=" + quote(password))
    said: list[str] = []
    store = SqlWatermarkStore(url)
    source = SqlSourceProvider(url, "files")
    errors = SqlErrorStore(url)
    said += [repr(store), repr(source), repr(errors), store.url, source.redacted_url]
    for attempt in (
        lambda: store.get(WatermarkKey("p")),
        lambda: source.null_created_at(),
        lambda: errors.list(),
    ):
        try:
            attempt()
        except DeswmError as exc:
            said += [str(exc), repr(exc)]
    for closable in (store, source, errors):
        closable.close()
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    config = folder / "deswm.toml"
    config.write_text(
        f"[source]\nurl = {json.dumps(url)}\n[archive]\nurl = {json.dumps(str(folder / 'a'))}\n"
    )
    said.append(repr(load_config(config)))
    said += _cli(["-vv", "stats", "--json", "-c", str(config)])
    said += _cli(["-v", "watermark", "get", "-c", str(config)])
    return said


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    logger = logging.getLogger("deswm")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _cli(args: list[str]) -> list[str]:
    import io
    import sys

    from deswm.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with _restored_logging():
            code = main(args)
    finally:
        sys.stdout, sys.stderr = saved
    assert code in (1, 2), (code, out.getvalue(), err.getvalue())
    return [out.getvalue(), err.getvalue()]


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(password=passwords)
def test_a_generated_password_appears_nowhere(password: str, backend: str, tmp_path: Path) -> None:
    baseline = "\n".join(_everything_said("Placeholder-0", tmp_path, backend))
    assume(password not in baseline and quote(password, safe="") not in baseline)
    said = _everything_said(password, tmp_path, backend)
    assert any("***" in text for text in said)
    for text in said:
        assert password not in text
        assert quote(password, safe="") not in text


def _failure(message: str) -> FileFailure:
    return FileFailure(
        uid="u1",
        created_at=datetime(2024, 5, 1, tzinfo=UTC),
        location="f.dat",
        stage="read",
        error_type="OSError",
        message=message,
    )


def _pg_admin() -> sa.Engine:
    from conftest import POSTGRES_URL, _probe, service_unavailable

    reason = _probe(POSTGRES_URL)
    if reason:
        service_unavailable("postgresql", reason)
    return sa.create_engine(POSTGRES_URL, poolclass=sa.pool.NullPool)


def _mysql_admin() -> sa.Engine:
    from conftest import MYSQL_URL, _probe, service_unavailable

    reason = _probe(MYSQL_URL)
    if reason:
        service_unavailable("mysql", reason)
    return sa.create_engine(MYSQL_URL, poolclass=sa.pool.NullPool)


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
@settings(max_examples=15, deadline=None)
@given(password=passwords)
def test_a_refused_login_never_shows_the_password(password: str, backend: str) -> None:
    """A real server refusing the login (unknown role on PostgreSQL, which trusts any
    password; a wrong password for root on MariaDB): every error is password-free."""
    admin = _pg_admin() if backend == "postgresql" else _mysql_admin()
    host = f"{admin.url.host}:{admin.url.port}"
    user = "deswm_nobody" if backend == "postgresql" else "root"
    url = _db_url(backend, password, host=host).replace("deswm_nobody", user, 1)
    admin.dispose()
    store = SqlWatermarkStore(url)
    source = SqlSourceProvider(url, "files")
    errors = SqlErrorStore(url)
    said: list[str] = []
    try:
        for attempt in (
            lambda: store.get(WatermarkKey("p")),
            lambda: store.initialize(WatermarkKey("p"), datetime(2024, 5, 1, tzinfo=UTC)),
            lambda: source.null_created_at(),
            lambda: errors.record(
                WatermarkKey("p"),
                [_failure(url)],
            ),
        ):
            with pytest.raises(DeswmError) as caught:
                attempt()
            said += [str(caught.value), repr(caught.value)]
    finally:
        for closable in (store, source, errors):
            closable.close()
    assert any("***" in text or "denied" in text or "does not exist" in text for text in said)
    for text in said:
        assert password not in text
        assert quote(password, safe="") not in text


def test_an_error_table_row_never_holds_the_password(tmp_path: Path) -> None:
    secret = "row/secret@pw"
    url = f"postgresql://u:{quote(secret, safe='')}@db.example/files"
    sa.make_url(url)  # a valid URL
    from deswm._redact import remember

    remember(url)
    store = SqlErrorStore(f"sqlite:///{tmp_path / 'e.db'}")
    failure = _failure(f"{secret} via {url}")
    store.record(WatermarkKey("p"), [failure])
    (row,) = store.list()
    assert secret not in row.failure.message
    assert quote(secret, safe="") not in row.failure.message
    store.close()


def test_secret_values_can_leave_out_values_too_short_to_scrub() -> None:
    options = {"token": "abc", "client_kwargs": {"aws_secret_access_key": "long-secret"}}
    assert sorted(secret_values(options)) == ["abc", "long-secret"]
    assert secret_values(options, min_length=4) == ["long-secret"]
