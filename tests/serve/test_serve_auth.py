"""Authentication of the retrieval service: a token from the environment, loopback default."""
# ruff: noqa: F811 - the fixtures imported from serving are redefined as parameters

from __future__ import annotations

from typing import Any

import pytest
from serving import path, query, server, start  # noqa: F401 - fixtures

from deswm._archive import Archive
from deswm._errors import ConfigError
from deswm.serve import is_loopback, resolve_token
from packed_files import FILES, ROUTER, archive_url  # noqa: F401 - fixture

TOKEN = "s3cr3t-token-0123456789"


def test_requests_need_the_token(archive_url: str, start: Any) -> None:
    server = start(Archive(archive_url, ROUTER), token=TOKEN)
    created_at, data = FILES["hello.txt"]
    url, params = path("hello.txt"), query(created_at)
    missing = server.client.get(url, params=params)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert set(missing.json()) == {"error", "hint"}
    for headers in (
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
        {"X-API-Key": TOKEN[:-1]},
    ):
        assert server.client.get(url, params=params, headers=headers).status_code == 401
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"X-API-Key": TOKEN}):
        response = server.client.get(url, params=params, headers=headers)
        assert response.status_code == 200
        assert response.content == data
    assert server.client.get("/metrics").status_code == 401
    # Probes stay open: load balancers and kubelets send no credentials.
    assert server.client.get("/healthz").status_code == 200
    assert server.client.get("/readyz").status_code == 200
    metrics = server.client.get("/metrics", headers={"X-API-Key": TOKEN}).text
    assert 'route="/files/{uid}",status="401"' in metrics
    assert TOKEN not in metrics


def test_without_a_token_nothing_is_asked(server: Any) -> None:
    created_at, data = FILES["hello.txt"]
    assert server.client.get(path("hello.txt"), params=query(created_at)).content == data


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_resolve_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DESWM_TEST_TOKEN", raising=False)
    assert resolve_token("DESWM_TEST_TOKEN", "127.0.0.1", insecure_no_auth=False) is None
    with pytest.raises(ConfigError, match=r"refusing to serve on 0\.0\.0\.0") as refused:
        resolve_token("DESWM_TEST_TOKEN", "0.0.0.0", insecure_no_auth=False)
    assert "--insecure-no-auth" in str(refused.value)
    assert resolve_token("DESWM_TEST_TOKEN", "0.0.0.0", insecure_no_auth=True) is None
    monkeypatch.setenv("DESWM_TEST_TOKEN", TOKEN)
    assert resolve_token("DESWM_TEST_TOKEN", "0.0.0.0", insecure_no_auth=False) == TOKEN
    monkeypatch.setenv("DESWM_TEST_TOKEN", "tiny-tok")
    with pytest.raises(ConfigError, match="at least 16") as short:
        resolve_token("DESWM_TEST_TOKEN", "127.0.0.1", insecure_no_auth=False)
    assert "tiny-tok" not in str(short.value)  # the token itself is never quoted
