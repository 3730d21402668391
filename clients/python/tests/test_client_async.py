"""AsyncVaultClient against a real sidecar: every method, errors and retries."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from conftest import AsyncCountingTransport, Sidecar

from agentvault import (
    AsyncVaultClient,
    BatchResult,
    ConflictError,
    Health,
    InvalidRequestError,
    PayloadTooLargeError,
    RotationResult,
    Secret,
    SecretExpiredError,
    SecretMetadata,
    SecretNotFoundError,
    VaultUnavailableError,
)

pytestmark = pytest.mark.anyio


async def test_health(aclient: AsyncVaultClient) -> None:
    h = await aclient.health()
    assert isinstance(h, Health) and h.status == "ok"


async def test_crud_and_metadata(aclient: AsyncVaultClient, ns: str) -> None:
    path = f"{ns}/db/password"
    assert await aclient.exists(path) is False
    assert await aclient.put(path, "one", {"tier": "standard"}, tags={"t": "1"}) == 1
    assert await aclient.exists(path) is True
    assert await aclient.get(path) == "one"
    s = await aclient.get_secret(path)
    assert isinstance(s, Secret)
    assert (s.value, s.tier, s.tags, s.version) == ("one", "standard", {"t": "1"}, 1)
    assert await aclient.put(path, "two", cas=1) == 2
    assert await aclient.get(path, version=1) == "one"
    m = await aclient.update(path, description="async", expires_at=timedelta(hours=1))
    assert isinstance(m, SecretMetadata) and m.description == "async" and m.expires_at
    assert (await aclient.update(path, expires_at=None)).expires_at is None
    await aclient.delete(path)
    assert await aclient.exists(path) is False


async def test_versions_rollback_rotate(aclient: AsyncVaultClient, ns: str) -> None:
    path = f"{ns}/v"
    await aclient.put(path, "a")
    await aclient.put(path, "b")
    assert [(v.version, v.active) for v in await aclient.versions(path)] == [(1, False), (2, True)]
    assert await aclient.rollback(path, 1) == 1
    assert await aclient.get(path) == "a"
    r = await aclient.rotate(path, "c", grace_period_seconds=30)
    assert isinstance(r, RotationResult) and (r.new_version, r.old_version) == (3, 1)
    assert await aclient.get(path) == "c"
    assert await aclient.get(path, version=1) == "a"


async def test_json_and_default(aclient: AsyncVaultClient, ns: str) -> None:
    await aclient.put_json(f"{ns}/j", {"a": [1, 2]})
    assert await aclient.get_json(f"{ns}/j") == {"a": [1, 2]}
    assert await aclient.get_or_default(f"{ns}/none", 42) == 42
    assert await aclient.get_or_default(f"{ns}/j") == '{"a":[1,2]}'


async def test_list_follows_cursor(sidecar: Sidecar, ns: str) -> None:
    transport = AsyncCountingTransport(sidecar.socket)
    async with AsyncVaultClient(socket=sidecar.socket, transport=transport) as c:
        paths = [f"{ns}/l/{i}" for i in range(5)]
        for p in paths:
            await c.put(p, "v")
        transport.attempts = 0
        items = await c.list(f"{ns}/l/", page_size=2)
        assert [m.path for m in items] == paths
        assert transport.attempts == 3
        assert [m.path async for m in c.iter_list(f"{ns}/l/", page_size=4)] == paths


async def test_batch(aclient: AsyncVaultClient, ns: str) -> None:
    await aclient.put(f"{ns}/a", "va")
    result = await aclient.batch([f"{ns}/a", f"{ns}/b"])
    assert isinstance(result, BatchResult)
    assert result.secrets == {f"{ns}/a": "va"}
    assert isinstance(result.errors[f"{ns}/b"], SecretNotFoundError)


async def test_import_env(aclient: AsyncVaultClient, ns: str, tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("API_KEY=k1\nCRIT_TOKEN=k2\n")
    dry = await aclient.import_env(env, ns, tier_prefix={"CRIT_": "critical"}, dry_run=True)
    assert (dry.created, dry.dry_run) == (2, True)
    done = await aclient.import_env(env, ns, tier_prefix={"CRIT_": "critical"})
    assert {s.path: s.tier for s in done.secrets} == {
        f"{ns}/API_KEY": "sensitive",
        f"{ns}/CRIT_TOKEN": "critical",
    }
    assert await aclient.get(f"{ns}/CRIT_TOKEN") == "k2"


async def test_errors(aclient: AsyncVaultClient, ns: str) -> None:
    with pytest.raises(SecretNotFoundError):
        await aclient.get(f"{ns}/missing")
    await aclient.put(f"{ns}/c", "v")
    with pytest.raises(ConflictError):
        await aclient.put(f"{ns}/c", "v", cas=0)
    with pytest.raises(InvalidRequestError):
        await aclient.get(f"{ns}/../etc")
    with pytest.raises(PayloadTooLargeError):
        await aclient.put(f"{ns}/big", "x" * 70000)
    await aclient.put(f"{ns}/exp", "v", expires_at=timedelta(seconds=1))
    assert await aclient.get(f"{ns}/exp") == "v"
    await anyio.sleep(1.3)
    with pytest.raises(SecretExpiredError):
        await aclient.get(f"{ns}/exp")


async def test_unreachable_is_retried(dead_socket: str) -> None:
    transport = AsyncCountingTransport(dead_socket)
    async with AsyncVaultClient(
        socket=dead_socket, retries=3, backoff_base=0.05, transport=transport
    ) as c:
        started = time.monotonic()
        with pytest.raises(VaultUnavailableError) as info:
            await c.get("a/b")
        elapsed = time.monotonic() - started
    assert transport.attempts == 4 and info.value.attempts == 4
    assert info.value.status is None
    assert elapsed >= 0.175


async def test_503_is_retried(storage_down_sidecar: Sidecar) -> None:
    transport = AsyncCountingTransport(storage_down_sidecar.socket)
    async with AsyncVaultClient(
        socket=storage_down_sidecar.socket, retries=1, backoff_base=0.01, transport=transport
    ) as c:
        with pytest.raises(VaultUnavailableError) as info:
            await c.put("a/b", "v")
    assert transport.attempts == 2
    assert (info.value.status, info.value.attempts) == (503, 2)


async def test_concurrent_requests_share_one_client(aclient: AsyncVaultClient, ns: str) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(aclient.put, f"{ns}/c{i}", f"v{i}")
    result = await aclient.batch([f"{ns}/c{i}" for i in range(20)])
    assert result.ok and result[f"{ns}/c7"] == "v7"


async def test_async_context_manager_closes(sidecar: Sidecar) -> None:
    async with AsyncVaultClient(socket=sidecar.socket) as c:
        await c.health()
    assert c._http.is_closed
