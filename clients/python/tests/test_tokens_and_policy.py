"""Tokens (201 / 202), 401 and 403, written against the contract.

Every test here takes the `needs_tokens` fixture, which fails it plainly if
the sidecar does not serve `POST /v1/tokens`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest
from conftest import Sidecar

from agentvault import (
    ApprovalPendingError,
    AsyncVaultClient,
    AuthError,
    InvalidRequestError,
    PolicyDeniedError,
    SecretNotFoundError,
    Token,
    VaultClient,
    VaultError,
)

pytestmark = pytest.mark.usefixtures("needs_tokens")


def test_request_token_and_use_it(client: VaultClient, sidecar: Sidecar, ns: str) -> None:
    path = f"{ns}/openai/api-key"
    client.put(path, "sk-standard", tier="standard")
    before = datetime.now(timezone.utc)
    tok = client.request_token(
        f"secrets:read:{path}", ttl_seconds=120, max_uses=5, description="test token"
    )
    assert isinstance(tok, Token)
    assert tok.token.startswith("avt_")
    assert tok.scope == f"secrets:read:{path}"
    assert before + timedelta(seconds=100) < tok.expires_at < before + timedelta(seconds=140)
    assert (tok.max_uses, tok.uses_remaining) == (5, 5)
    assert tok.approval_status != "pending"
    # The token itself never shows.
    assert tok.token not in repr(tok) and tok.token not in str(tok)

    with VaultClient(socket=sidecar.socket, token=tok.token) as scoped:
        assert scoped.get(path) == "sk-standard"


def test_ttl_as_timedelta(client: VaultClient, ns: str) -> None:
    client.put(f"{ns}/t", "v", tier="standard")
    tok = client.request_token(f"secrets:read:{ns}/t", timedelta(minutes=2))
    assert tok.expires_at > datetime.now(timezone.utc) + timedelta(seconds=100)


def test_unknown_token_is_401(sidecar: Sidecar, client: VaultClient, ns: str) -> None:
    path = f"{ns}/x"
    client.put(path, "v", tier="standard")
    bogus = "avt_" + uuid.uuid4().hex
    with VaultClient(socket=sidecar.socket, token=bogus) as c:
        with pytest.raises(AuthError) as info:
            c.get(path)
    e = info.value
    assert (e.code, e.status) == ("unauthenticated", 401)
    assert e.request_id
    assert bogus not in str(e) and bogus not in repr(e)


def test_used_up_token_is_401(sidecar: Sidecar, client: VaultClient, ns: str) -> None:
    path = f"{ns}/once"
    client.put(path, "v", tier="standard")
    tok = client.request_token(f"secrets:read:{path}", ttl_seconds=60, max_uses=1)
    with VaultClient(socket=sidecar.socket, token=tok.token) as c:
        assert c.get(path) == "v"
        with pytest.raises(AuthError):
            c.get(path)


def test_bad_scope_is_400(client: VaultClient) -> None:
    with pytest.raises(InvalidRequestError):
        client.request_token("not-a-scope", ttl_seconds=60)


def test_token_for_critical_secret_waits_for_approval(client: VaultClient, ns: str) -> None:
    path = f"{ns}/payments/stripe"
    client.put(path, "sk-critical", tier="critical")
    with pytest.raises(ApprovalPendingError) as info:
        client.request_token(f"secrets:read:{path}", ttl_seconds=60)
    e = info.value
    assert (e.status, e.code) == (202, "approval_pending")
    assert e.approval_id
    assert e.approval_status == "pending"
    assert isinstance(e, VaultError)
    if e.token is not None:  # the sidecar may send the token that approval will enable
        assert e.token.token not in repr(e) + str(e) + repr(e.token) + str(e.token)


def test_policy_denied_is_403_with_reasons(client: VaultClient, ns: str) -> None:
    # A role-scoped secret belongs to that role only; this process has no role:
    # it may provision the secret, but only the role may move it to another scope.
    path = f"{ns}/role-only"
    client.put(path, "v", scope="some-other-role")
    with pytest.raises(PolicyDeniedError) as info:
        client.put(path, "v2", scope="yet-another-role")
    e = info.value
    assert (e.code, e.status) == ("policy_denied", 403)
    assert e.reasons and all(isinstance(r, str) for r in e.reasons)
    assert e.request_id


def test_a_secret_the_caller_may_not_read_answers_as_missing(client: VaultClient, ns: str) -> None:
    # No existence oracle: the same error, status and message as a missing path.
    path = f"{ns}/hidden"
    client.put(path, "v", scope="some-other-role")
    with pytest.raises(SecretNotFoundError) as hidden:
        client.get(path)
    with pytest.raises(SecretNotFoundError) as missing:
        client.get(f"{ns}/missing")
    assert (hidden.value.code, hidden.value.status) == ("not_found", 404)
    assert hidden.value.message.replace(path, "P") == missing.value.message.replace(
        f"{ns}/missing", "P"
    )


@pytest.mark.anyio
async def test_async_tokens(aclient: AsyncVaultClient, sidecar: Sidecar, ns: str) -> None:
    path = f"{ns}/async"
    await aclient.put(path, "av", tier="standard")
    tok = await aclient.request_token(f"secrets:read:{path}", 60, max_uses=2)
    async with AsyncVaultClient(socket=sidecar.socket, token=tok.token) as scoped:
        assert await scoped.get(path) == "av"
    async with AsyncVaultClient(socket=sidecar.socket, token="avt_nope") as bogus:
        with pytest.raises(AuthError):
            await bogus.get(path)
    await aclient.put(f"{ns}/crit", "c", tier="critical")
    with pytest.raises(ApprovalPendingError) as info:
        await aclient.request_token(f"secrets:read:{ns}/crit", 60)
    assert info.value.approval_id
    await aclient.put(f"{ns}/scoped", "v", scope="elsewhere")
    with pytest.raises(SecretNotFoundError):
        await aclient.get(f"{ns}/scoped")
    with pytest.raises(PolicyDeniedError):
        await aclient.put(f"{ns}/scoped", "v2", scope="somewhere-else")
