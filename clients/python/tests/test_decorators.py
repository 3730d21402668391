"""@secret and @secrets_batch, on plain and async functions, against a real sidecar."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import AsyncCountingTransport, CountingTransport, Sidecar

import agentvault
from agentvault import (
    AsyncVaultClient,
    SecretNotFoundError,
    VaultClient,
    secret,
    secrets_batch,
)


@pytest.fixture
def default_socket(sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Points the default clients at the test sidecar."""
    monkeypatch.setenv("AGENTVAULT_SOCKET", sidecar.socket)
    agentvault.set_default_client(None)
    yield sidecar.socket
    agentvault.set_default_client(None)


def test_secret_sync(default_socket: str, client: VaultClient, ns: str) -> None:
    client.put(f"{ns}/openai/api-key", "sk-1")

    @secret(f"{ns}/openai/api-key")
    def openai_key() -> str:
        raise AssertionError("the body never runs")

    assert openai_key() == "sk-1"
    assert openai_key.__name__ == "openai_key"
    client.put(f"{ns}/openai/api-key", "sk-2")
    assert openai_key() == "sk-2"  # read on every call: rotations show at once


def test_secret_required_default_and_json(
    default_socket: str, client: VaultClient, ns: str
) -> None:
    @secret(f"{ns}/missing")
    def required() -> str: ...

    with pytest.raises(SecretNotFoundError):
        required()

    @secret(f"{ns}/missing", required=False)
    def optional() -> str | None: ...

    assert optional() is None

    @secret(f"{ns}/missing", required=False, default="fallback")
    def with_default() -> str: ...

    assert with_default() == "fallback"

    @secret(f"{ns}/missing", default="implied")  # a default implies not required
    def implied() -> str: ...

    assert implied() == "implied"

    client.put_json(f"{ns}/flags", {"beta": True})

    @secret(f"{ns}/flags", as_json=True)
    def flags() -> dict[str, bool]: ...

    assert flags() == {"beta": True}


def test_secret_with_explicit_client(sidecar: Sidecar, ns: str) -> None:
    transport = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, transport=transport) as c:
        c.put(f"{ns}/k", "v")

        @secret(f"{ns}/k", client=c)
        def key() -> str: ...

        transport.attempts = 0
        assert key() == "v"
        assert transport.attempts == 1

        with pytest.raises(TypeError):

            @secret(f"{ns}/k", client=c)
            async def wrong() -> str: ...


@pytest.mark.anyio
async def test_secret_async(default_socket: str, aclient: AsyncVaultClient, ns: str) -> None:
    await aclient.put(f"{ns}/async-key", "ak")

    @secret(f"{ns}/async-key")
    async def key() -> str: ...

    assert await key() == "ak"

    @secret(f"{ns}/nope", required=False, default="d")
    async def missing() -> str: ...

    assert await missing() == "d"

    @secret(f"{ns}/nope")
    async def required() -> str: ...

    with pytest.raises(SecretNotFoundError):
        await required()

    await aclient.put_json(f"{ns}/cfg", [1, 2])

    @secret(f"{ns}/cfg", as_json=True, client=aclient)
    async def cfg() -> list[int]: ...

    assert await cfg() == [1, 2]


def test_secrets_batch_sync_one_request(sidecar: Sidecar, ns: str) -> None:
    transport = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, transport=transport) as c:
        c.put(f"{ns}/openai/api-key", "sk-o")
        c.put(f"{ns}/db/password", "pw")
        c.put(f"{ns}/x.y/z-1", "dotted")
        prefix = ns  # the prefix is part of the name

        @secrets_batch(f"{ns}/openai/api-key", f"{ns}/db/password", f"{ns}/x.y/z-1", client=c)
        def connect(greeting: str, **kwargs: str) -> dict[str, str]:
            return {"greeting": greeting, **kwargs}

        transport.attempts = 0
        got = connect("hi")
        assert transport.attempts == 1  # ONE batch request
        assert got == {
            "greeting": "hi",
            f"{prefix}_openai_api_key": "sk-o",
            f"{prefix}_db_password": "pw",
            f"{prefix}_x_y_z_1": "dotted",
        }
        assert connect.__name__ == "connect"

        # Explicit keywords win and are not fetched.
        transport.attempts = 0
        got = connect(
            "hi",
            **{
                f"{prefix}_openai_api_key": "override",
                f"{prefix}_db_password": "o2",
                f"{prefix}_x_y_z_1": "o3",
            },
        )
        assert got[f"{prefix}_openai_api_key"] == "override"
        assert transport.attempts == 0


def test_secrets_batch_default_client_and_names(default_socket: str, client: VaultClient) -> None:
    # Fixed paths, to show the documented names; unique values per run.
    import uuid

    key, pw = f"sk-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    client.put("openai/api-key", key)
    client.put("db/password", pw)

    @secrets_batch("openai/api-key", "db/password")
    def connect(openai_api_key: str, db_password: str) -> tuple[str, str]:
        return openai_api_key, db_password

    assert connect() == (key, pw)
    assert connect(db_password="other") == (key, "other")


def test_secrets_batch_missing(default_socket: str, client: VaultClient, ns: str) -> None:
    client.put(f"{ns}/a", "va")

    @secrets_batch(f"{ns}/a", f"{ns}/b")
    def strict(**kwargs: str) -> dict[str, str]:
        return kwargs

    with pytest.raises(SecretNotFoundError):
        strict()

    @secrets_batch(f"{ns}/a", f"{ns}/b", required=False)
    def lenient(**kwargs: str | None) -> dict[str, str | None]:
        return kwargs

    assert lenient() == {f"{ns}_a": "va", f"{ns}_b": None}


def test_secrets_batch_rejects_clashing_names() -> None:
    with pytest.raises(ValueError, match="both map"):
        secrets_batch("a/b-c", "a-b/c")
    with pytest.raises(ValueError):
        secrets_batch()


@pytest.mark.anyio
async def test_secrets_batch_async(sidecar: Sidecar, default_socket: str, ns: str) -> None:
    transport = AsyncCountingTransport(sidecar.socket)
    async with AsyncVaultClient(socket=sidecar.socket, transport=transport) as c:
        await c.put(f"{ns}/svc/api-key", "k")
        await c.put(f"{ns}/svc/db-password", "p")

        @secrets_batch(f"{ns}/svc/api-key", f"{ns}/svc/db-password", client=c)
        async def handler(n: int, **kwargs: str) -> tuple[int, dict[str, str]]:
            return n, kwargs

        transport.attempts = 0
        n, got = await handler(3)
        assert transport.attempts == 1
        assert (n, got) == (3, {f"{ns}_svc_api_key": "k", f"{ns}_svc_db_password": "p"})

    # Without a client: a fresh AsyncVaultClient on the default socket.
    @secrets_batch(f"{ns}/svc/api-key", f"{ns}/svc/missing")
    async def strict(**kwargs: str) -> None: ...

    with pytest.raises(SecretNotFoundError):
        await strict()

    @secrets_batch(f"{ns}/svc/api-key", f"{ns}/svc/missing", required=False)
    async def lenient(**kwargs: str | None) -> dict[str, str | None]:
        return kwargs

    assert await lenient() == {f"{ns}_svc_api_key": "k", f"{ns}_svc_missing": None}
