"""The agentsecretstore-compatible surface (`agentvault.compat`), as its users
write it, against a real sidecar (issue 18, item 2)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import Sidecar

from agentvault import SecretMetadata
from agentvault.compat import (
    AccessedSecret,
    AgentVault,
    AgentVaultError,
    AuthenticationError,
    PermissionDeniedError,
    ScopedToken,
    SecretList,
    SecretNotFoundError,
    SecretTier,
    SecretType,
    SyncAgentVault,
)


@pytest.mark.anyio
async def test_async_round_trip(sidecar: Sidecar, ns: str) -> None:
    async with AgentVault(socket=sidecar.socket) as vault:
        before = datetime.now(timezone.utc)
        written = await vault.set_secret(
            f"{ns}/openai/api-key",
            "sk-live-123",
            tier=SecretTier.CRITICAL,
            description="OpenAI production key",
            tags={"team": "research"},
            expires_at=timedelta(days=30),
            type=SecretType.API_KEY,
        )
        assert (written.path, written.version) == (f"{ns}/openai/api-key", 1)
        secret = await vault.get_secret(f"{ns}/openai/api-key")
        assert isinstance(secret, AccessedSecret)
        assert secret.value == "sk-live-123"
        assert (secret.tier, secret.type) == ("critical", "api_key")
        assert secret.tier == SecretTier.CRITICAL
        assert secret.tags == {"team": "research"}
        assert secret.description == "OpenAI production key"
        assert secret.expires_at is not None
        assert before <= secret.accessed_at <= datetime.now(timezone.utc)
        assert "sk-live-123" not in repr(secret) and "sk-live-123" not in str(secret)

        rotated = await vault.rotate_secret(f"{ns}/openai/api-key", "sk-live-456")
        assert (rotated.old_version, rotated.new_version) == (1, 2)
        versions = await vault.list_versions(f"{ns}/openai/api-key")
        assert [(v.version, v.is_active) for v in versions] == [(1, False), (2, True)]
        back = await vault.rollback_secret(f"{ns}/openai/api-key", 1)
        assert back.version == 1
        assert (await vault.get_secret(f"{ns}/openai/api-key")).value == "sk-live-123"
        old = await vault.get_secret(f"{ns}/openai/api-key", version=2)
        assert old.value == "sk-live-456"

        with pytest.raises(SecretNotFoundError) as info:
            await vault.get_secret(f"{ns}/nothing")
        assert info.value.path == f"{ns}/nothing"
        assert isinstance(info.value, AgentVaultError)
        await vault.delete_secret(f"{ns}/openai/api-key")
        with pytest.raises(SecretNotFoundError):
            await vault.get_secret(f"{ns}/openai/api-key")


def test_sync_list_secrets_pages_with_cursor(sidecar: Sidecar, ns: str) -> None:
    with SyncAgentVault(socket=sidecar.socket) as vault:
        for i in range(5):
            vault.set_secret(f"{ns}/app/k{i}", f"v{i}")
        vault.set_secret(f"{ns}/application/other", "x")  # not in namespace `{ns}/app`
        page = vault.list_secrets(f"{ns}/app", limit=2)
        assert isinstance(page, SecretList)
        seen = [m.path for m in page.items]
        while page.next_cursor is not None:
            page = vault.list_secrets(f"{ns}/app", limit=2, cursor=page.next_cursor)
            seen += [m.path for m in page.items]
        assert seen == [f"{ns}/app/k{i}" for i in range(5)]
        assert all(isinstance(m, SecretMetadata) for m in page.items)


def test_request_token_issued_and_pending(sidecar: Sidecar, ns: str) -> None:
    with SyncAgentVault(socket=sidecar.socket) as vault:
        vault.set_secret(f"{ns}/std/key", "s", tier="standard")
        token = vault.request_token(
            scope=f"secrets:read:{ns}/std/*", ttl_seconds=600, description="report job"
        )
        assert isinstance(token, ScopedToken)
        assert token.is_usable and not token.is_pending
        assert token.scope == f"secrets:read:{ns}/std/*"
        assert token.description == "report job"
        assert token.expires_at is not None and token.token is not None
        assert token.token not in repr(token) and token.token not in str(token)
        # The per-call token reads what its scope covers.
        assert vault.get_secret(f"{ns}/std/key", token=token.token).value == "s"
        with pytest.raises(AuthenticationError):
            vault.get_secret(f"{ns}/std/key", token="avt_unknown")

        vault.set_secret(f"{ns}/crit/key", "c", tier=SecretTier.CRITICAL)
        pending = vault.request_token(scope=f"secrets:read:{ns}/crit/*", ttl_seconds=600)
        assert pending.is_pending and not pending.is_usable
        assert pending.approval_status == "pending"
        assert pending.approval_id
        assert pending.token is not None
        with pytest.raises(PermissionDeniedError) as info:
            vault.get_secret(f"{ns}/crit/key", token=pending.token)
        assert info.value.required_scope == f"secrets:read:{ns}/crit/key"
        assert info.value.path == f"{ns}/crit/key"


def test_import_env_with_tier_map(sidecar: Sidecar, ns: str, tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("API_URL=https://example.org\nSTRIPE_KEY=sk_live_1\n")
    with SyncAgentVault(socket=sidecar.socket) as vault:
        report = vault.import_env(
            path=env, namespace=f"{ns}/app", tier_map={"STRIPE_": SecretTier.CRITICAL}
        )
        assert report.created == 2
        assert vault.get_secret(f"{ns}/app/STRIPE_KEY").tier == "critical"
        assert vault.get_secret(f"{ns}/app/API_URL").value == "https://example.org"


def test_what_remains_different(sidecar: Sidecar) -> None:
    with pytest.raises(ValueError, match="no remote API"):
        SyncAgentVault(base_url="https://api.agentsecretstore.example")
    with SyncAgentVault(base_url=f"unix://{sidecar.socket}") as vault:
        assert vault.health()["status"] == "ok"
    with pytest.warns(UserWarning, match="agent_key is not used"):
        SyncAgentVault(socket=sidecar.socket, agent_key="ask_123").close()
