"""429 `rate_limited` → RateLimitedError, from a real sidecar started with a
tiny rate (`--rate-limit 1`, so a burst of two)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest

from agentvault import AsyncVaultClient, RateLimitedError, VaultClient, VaultError
from agentvault._errors import parse_retry_after

from conftest import AsyncCountingTransport, CountingTransport, Sidecar


@pytest.fixture
def slow_sidecar() -> Iterator[Sidecar]:
    s = Sidecar("--rate-limit", "1")
    yield s
    s.stop()


def test_429_maps_to_rate_limited_with_retry_after(slow_sidecar: Sidecar) -> None:
    transport = CountingTransport(uds=slow_sidecar.socket)
    with VaultClient(socket=slow_sidecar.socket, transport=transport) as c:
        with pytest.raises(RateLimitedError) as info:
            for n in range(20):
                c.put(f"burst/{n}", "v")
        attempts = transport.attempts
    e = info.value
    assert isinstance(e, VaultError)
    assert (e.code, e.status) == ("rate_limited", 429)
    assert e.request_id
    assert e.retry_after is not None and 1 <= e.retry_after <= 2
    assert attempts <= 3, "429 is not retried: the caller decides, with retry_after"


@pytest.mark.anyio
async def test_429_async(slow_sidecar: Sidecar) -> None:
    transport = AsyncCountingTransport(uds=slow_sidecar.socket)
    async with AsyncVaultClient(socket=slow_sidecar.socket, transport=transport) as c:
        with pytest.raises(RateLimitedError) as info:
            for n in range(20):
                await c.get_or_default(f"burst/{n}", "none")
        assert info.value.retry_after is not None and info.value.retry_after >= 1
        assert transport.attempts <= 3
        # Health is never limited, so a client can still tell the sidecar is up.
        assert (await c.health()).status == "ok"


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    parsed = parse_retry_after(when)
    assert parsed is not None and 25 <= parsed <= 31
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
