"""Pure functions: time parsing/formatting, path quoting, keyword names."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest

from agentvault._core import Requests, identifier_for, quote_path
from agentvault._models import format_time, parse_time


def test_parse_time() -> None:
    utc = timezone.utc
    assert parse_time("2026-11-23T17:10:30.141363515Z") == datetime(
        2026, 11, 23, 17, 10, 30, 141363, tzinfo=utc
    )
    assert parse_time("2026-11-23T17:10:30Z") == datetime(2026, 11, 23, 17, 10, 30, tzinfo=utc)
    assert parse_time("2026-11-23T19:10:30.5+02:00") == datetime(
        2026, 11, 23, 17, 10, 30, 500000, tzinfo=utc
    )
    assert parse_time("2026-11-23T17:10:30") == datetime(2026, 11, 23, 17, 10, 30, tzinfo=utc)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_format_time() -> None:
    assert format_time(datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)) == "2030-01-02T03:04:05Z"
    assert format_time(datetime(2030, 1, 2, 3, 4, 5)) == "2030-01-02T03:04:05Z"
    east = timezone(timedelta(hours=2))
    assert format_time(datetime(2030, 1, 2, 5, 4, 5, tzinfo=east)) == "2030-01-02T03:04:05Z"
    assert format_time("2030-01-02T03:04:05Z") == "2030-01-02T03:04:05Z"
    soon = parse_time(format_time(timedelta(seconds=60)))
    assert abs((soon - datetime.now(timezone.utc)).total_seconds() - 60) < 5


def test_quote_path_keeps_paths_byte_for_byte() -> None:
    assert quote_path("prod/openai/api-key") == "prod/openai/api-key"
    assert quote_path("a.b/c_d-e") == "a.b/c_d-e"
    assert quote_path("a/../b") == "a/%2E%2E/b"
    assert quote_path("./a") == "%2E/a"
    assert quote_path("a b?c#d") == "a%20b%3Fc%23d"


def test_identifier_for() -> None:
    assert identifier_for("openai/api-key") == "openai_api_key"
    assert identifier_for("db/password") == "db_password"
    assert identifier_for("x.y/z-1") == "x_y_z_1"


def test_route_probe_recognizes_a_missing_route() -> None:
    import httpx
    from conftest import route_missing

    missing = httpx.Response(
        404, json={"error": {"code": "not_found", "message": "no route for `/v1/tokens`"}}
    )
    served = httpx.Response(400, json={"error": {"code": "invalid_request", "message": "scope"}})
    assert route_missing(missing) is True
    assert route_missing(served) is False
    assert route_missing(httpx.Response(404, text="not json")) is False


def test_writes_carry_one_idempotency_key_per_call_reused_by_every_attempt() -> None:
    client = httpx.Client(base_url="http://agentvault")
    put = Requests.put("a/b", {"value": "v"})
    first, retry = put.build(client), put.build(client)
    key = first.headers["idempotency-key"]
    assert len(key) >= 16 and retry.headers["idempotency-key"] == key
    assert put.idempotent, "a keyed PUT may be resent after a broken connection"
    assert Requests.put("a/b", {"value": "v"}).build(client).headers["idempotency-key"] != key
    assert "idempotency-key" not in Requests.get_secret("a/b").build(client).headers
    # The sidecar deduplicates every write of a secret by its key, not only PUT.
    for write in (
        Requests.update("a/b", {"description": "d"}),
        Requests.delete("a/b"),
        Requests.rollback("a/b", 1),
        Requests.rotate("a/b", "v2", None),
        Requests.import_env(
            "A=1", "ns", tier=None, tier_prefix=None, dry_run=False, overwrite=False
        ),
    ):
        assert write.idempotent, f"{write.method} {write.url}"
        assert "idempotency-key" in write.build(client).headers
