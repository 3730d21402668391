"""429 `rate_limited` → RateLimitedError, through httpx.MockTransport.

This is the only mocked response in the suite, and only because no sidecar
path produces 429 yet (the contract lists it; the sidecar does not rate-limit
so far). Replace it with a real-sidecar test once it does.
"""

from __future__ import annotations

import email.utils
import time

import httpx
import pytest

from agentvault import AsyncVaultClient, RateLimitedError, VaultClient, VaultError


def rate_limited(retry_after: str | None) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"x-request-id": "req-429"}
        if retry_after is not None:
            headers["retry-after"] = retry_after
        return httpx.Response(
            429,
            headers=headers,
            json={"error": {"code": "rate_limited", "message": "caller over its rate"}},
        )

    return httpx.MockTransport(handler), seen


def test_429_maps_to_rate_limited_with_retry_after() -> None:
    transport, seen = rate_limited("7")
    with VaultClient(socket="/unused.sock", transport=transport) as c:
        with pytest.raises(RateLimitedError) as info:
            c.get("a/b")
    e = info.value
    assert isinstance(e, VaultError)
    assert (e.code, e.status, e.message, e.request_id) == (
        "rate_limited",
        429,
        "caller over its rate",
        "req-429",
    )
    assert e.retry_after == 7.0
    assert len(seen) == 1  # 429 is not retried: the caller decides, with retry_after


def test_retry_after_as_http_date_and_absent() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    transport, _ = rate_limited(when)
    with VaultClient(socket="/unused.sock", transport=transport) as c:
        with pytest.raises(RateLimitedError) as info:
            c.put("a/b", "v")
    assert info.value.retry_after is not None and 25 <= info.value.retry_after <= 31

    transport, _ = rate_limited(None)
    with VaultClient(socket="/unused.sock", transport=transport) as c:
        with pytest.raises(RateLimitedError) as info:
            c.batch(["a/b"])
    assert info.value.retry_after is None


@pytest.mark.anyio
async def test_429_async() -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            429,
            headers={"retry-after": "2"},
            json={"error": {"code": "rate_limited", "message": "slow down"}},
        )

    async with AsyncVaultClient(socket="/unused.sock", transport=httpx.MockTransport(handler)) as c:
        with pytest.raises(RateLimitedError) as info:
            await c.get("a/b")
    assert info.value.retry_after == 2.0
    assert len(seen) == 1
