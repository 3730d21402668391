"""Checked by mypy --strict in test_typing.py (never run): the public API
type-checks as a user would write it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import agentvault
from agentvault import (
    AsyncVaultClient,
    BatchResult,
    PolicyDeniedError,
    RateLimitedError,
    Secret,
    SecretMetadata,
    VaultClient,
    secret,
    secrets_batch,
)


def sync_usage() -> None:
    value: str = agentvault.get("a/b")
    version: int = agentvault.put("a/b", "v", {"tier": "critical"}, tags={"k": "v"})
    agentvault.delete("a/b")
    with VaultClient(socket="/tmp/x.sock", timeout=5.0, retries=2, token="avt_x", tenant="t") as c:
        s: Secret = c.get_secret("a/b")
        when: datetime | None = s.expires_at
        maybe: str | None = c.get_or_default("a/b")
        either: str | int = c.get_or_default("a/b", 3)
        metas: list[SecretMetadata] = c.list("a/")
        names: Sequence[str] = c.list("a/")
        first: str = c.list("a/")[0]
        status: str = c.health()["status"]
        del names, first, status
        batch: BatchResult = c.batch(["a/b"])
        got: str | None = batch.get("a/b")
        c.update("a/b", expires_at=None, description="d")
        c.put("a/b", "v", expires_at=timedelta(days=1), cas=version)
        c.rotate("a/b", "v2", grace_period_seconds=timedelta(minutes=5))
        c.import_env("A=1\n", "ns", tier_prefix={"A": "critical"}, dry_run=True)
        del value, when, maybe, either, metas, got
    try:
        pass
    except PolicyDeniedError as e:
        reasons: list[str] = e.reasons
        del reasons
    except RateLimitedError as e:
        wait: float | None = e.retry_after
        del wait


async def async_usage() -> None:
    async with AsyncVaultClient() as c:
        value: str = await c.get("a/b")
        metas: list[SecretMetadata] = await c.list()
        del value, metas


@secret("a/b")
def key() -> str:
    raise NotImplementedError  # replaced by @secret


@secret("a/b", as_json=True)
async def config() -> dict[str, int]:
    raise NotImplementedError


@secrets_batch("openai/api-key", "db/password")
def connect(openai_api_key: str, db_password: str) -> int:
    return len(openai_api_key + db_password)


@secrets_batch(["OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
def main(OPENAI_API_KEY: str, ANTHROPIC_API_KEY: str) -> int:
    return len(OPENAI_API_KEY + ANTHROPIC_API_KEY)


@secrets_batch("openai/api-key")
async def aconnect(openai_api_key: str) -> int:
    return len(openai_api_key)


async def decorated() -> None:
    n: int = connect()
    m: int = await aconnect()
    k: str = key()
    cfg: dict[str, int] = await config()
    del n, m, k, cfg


async def compat_usage() -> None:
    from agentvault.compat import AgentVault, PermissionDeniedError, SecretTier, SyncAgentVault

    async with AgentVault() as vault:
        await vault.set_secret("a/b", "v", tier=SecretTier.CRITICAL, tags={"k": "v"})
        s = await vault.get_secret("a/b", version=1, token="avt_x")
        when: datetime = s.accessed_at
        page = await vault.list_secrets("a", limit=10)
        cursor: str | None = page.next_cursor
        tok = await vault.request_token(scope="secrets:read:a/*", ttl_seconds=60)
        pending: bool = tok.is_pending
        active: list[bool] = [v.is_active for v in await vault.list_versions("a/b")]
        del when, cursor, pending, active
    with SyncAgentVault() as sync_vault:
        try:
            sync_vault.import_env(path=".env", tier_map={"STRIPE_": "critical"})
        except PermissionDeniedError as e:
            scope: str | None = e.required_scope
            where: str | None = e.path
            del scope, where
