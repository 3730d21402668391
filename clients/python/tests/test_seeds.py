"""The hexr-style snippets of the documents agentvault was designed from, run
as written against a real sidecar (issue 18, item 1)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Sidecar

import agentvault
from agentvault import (
    Health,
    PolicyDeniedError,
    SecretMetadata,
    TenantMismatchError,
    VaultClient,
    VaultUnavailableError,
    secrets_batch,
)


@pytest.fixture
def default_socket(sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AGENTVAULT_SOCKET", sidecar.socket)
    agentvault.set_default_client(None)
    yield sidecar.socket
    agentvault.set_default_client(None)


def test_put_with_arbitrary_metadata_keeps_it_as_tags(client: VaultClient, ns: str) -> None:
    vault = client
    vault.put(f"{ns}/db/password", "p@ssw0rd", metadata={"rotation": "90d"})
    s = vault.get_secret(f"{ns}/db/password")
    assert s.value == "p@ssw0rd"
    assert s.tags == {"rotation": "90d"}

    # Known keys still map to their fields; numbers and booleans are written out;
    # an explicit `tags` wins over user metadata of the same name.
    vault.put(
        f"{ns}/db/password",
        "p2",
        metadata={"tier": "critical", "owner": "data-team", "max_age_days": 90, "pii": True},
        tags={"owner": "platform"},
    )
    s = vault.get_secret(f"{ns}/db/password")
    assert s.tier == "critical"
    assert s.tags == {"owner": "platform", "max_age_days": "90", "pii": "true"}


def test_tenant_is_checked_against_the_sidecar(sidecar: Sidecar, ns: str) -> None:
    # The dev sidecar serves tenant `dev` (spiffe://dev.local/agent/dev/dev-agent).
    with VaultClient(socket=sidecar.socket, tenant="dev", timeout=30.0) as vault:
        assert vault.tenant == "dev"
        vault.put(f"{ns}/t", "v")
        assert vault.get(f"{ns}/t") == "v"
    with VaultClient(socket=sidecar.socket, tenant="acme-corp", timeout=30.0) as vault:
        with pytest.raises(TenantMismatchError) as info:
            vault.put(f"{ns}/t", "other")
        e = info.value
        assert (e.expected, e.served) == ("acme-corp", "dev")
        assert "acme-corp" in str(e) and sidecar.socket in str(e)
    with VaultClient(socket=sidecar.socket) as vault:
        assert vault.get(f"{ns}/t") == "v"  # the refused client wrote nothing
    with pytest.raises(ValueError):
        VaultClient(socket=sidecar.socket, tenant="")


@pytest.mark.anyio
async def test_tenant_is_checked_async(sidecar: Sidecar, ns: str) -> None:
    async with agentvault.AsyncVaultClient(socket=sidecar.socket, tenant="acme-corp") as vault:
        with pytest.raises(TenantMismatchError):
            await vault.get(f"{ns}/anything")


def test_list_returns_path_strings_with_metadata(client: VaultClient, ns: str) -> None:
    vault = client
    for name in ("a", "b", "c"):
        vault.put(f"{ns}/list/{name}", "v", tier="standard")
    paths = vault.list(f"{ns}/list/")
    assert paths == [f"{ns}/list/a", f"{ns}/list/b", f"{ns}/list/c"]
    assert f"{ns}/list/b" in vault.list(f"{ns}/list/")
    assert all(isinstance(p, str) for p in paths)
    assert ", ".join(paths) == f"{ns}/list/a, {ns}/list/b, {ns}/list/c"
    assert Path(paths[0]).name == "a"
    # ... and still the metadata the typed API promised.
    first = paths[0]
    assert isinstance(first, SecretMetadata)
    assert (first.path, first.version, first.tier) == (f"{ns}/list/a", 1, "standard")
    assert {first: 1}[f"{ns}/list/a"] == 1  # hashes as its path
    assert "SecretMetadata(path=" in repr(first)


def test_health_is_dict_like(client: VaultClient) -> None:
    health = client.health()
    assert isinstance(health, Health)
    assert health["status"] == "ok"
    assert health["version"] == health.version != ""
    assert health["tenant"] == "dev"
    assert dict(health)["status"] == "ok"
    assert health.get("nothing") is None
    with pytest.raises(KeyError):
        health["nothing"]


def test_secrets_batch_list_form_injects_parameters_by_name(default_socket: str) -> None:
    agentvault.put("OPENAI_API_KEY", "sk-openai")
    agentvault.put("ANTHROPIC_API_KEY", "sk-anthropic")

    @secrets_batch(["OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
    def main(OPENAI_API_KEY: str, ANTHROPIC_API_KEY: str) -> str:
        return f"{OPENAI_API_KEY}|{ANTHROPIC_API_KEY}"

    assert main() == "sk-openai|sk-anthropic"


def test_secrets_batch_varargs_form_fills_kwargs(default_socket: str, ns: str) -> None:
    agentvault.put(f"{ns}/openai/api-key", "sk-1")
    agentvault.put(f"{ns}/db/password", "pw")

    @secrets_batch(f"{ns}/openai/api-key", f"{ns}/db/password")
    def connect(**secrets: str) -> dict[str, str]:
        return secrets

    assert connect() == {f"{ns}_openai_api_key": "sk-1", f"{ns}_db_password": "pw"}
    with pytest.raises(TypeError):
        secrets_batch([1])  # type: ignore[list-item]


def test_errors_name_their_path_and_the_scope_that_would_cover_it(
    sidecar: Sidecar, ns: str
) -> None:
    path = f"{ns}/private"
    with VaultClient(socket=sidecar.socket) as owner:
        owner.put(path, "v", scope="nobody-has-this-role")
        with pytest.raises(PolicyDeniedError) as info:
            # only the role a secret is scoped to may move it to another scope
            owner.put(path, "v2", scope="another-role")
    e = info.value
    assert e.path == path
    assert e.required_scope == f"secrets:write:{path}"
    assert e.reasons


def test_missing_socket_says_which_and_how_to_start_one(tmp_path: Path) -> None:
    sock = str(tmp_path / "nobody.sock")
    with VaultClient(socket=sock, retries=0) as vault:
        with pytest.raises(VaultUnavailableError) as info:
            vault.get("a/b")
    message = str(info.value)
    assert sock in message
    assert "no such socket" in message
    assert f"agentvault dev --socket {sock}" in message


def test_stale_socket_is_told_apart(dead_socket: str) -> None:
    with VaultClient(socket=dead_socket, retries=0) as vault:
        with pytest.raises(VaultUnavailableError) as info:
            vault.health()
    assert dead_socket in str(info.value)
    assert "nothing listens" in str(info.value)
