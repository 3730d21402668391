"""Values never show: not in repr/str of the models, not in any exception, not
in any log record (the SDK's, httpx's or httpcore's) at DEBUG."""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from conftest import Sidecar

from agentvault import (
    AsyncVaultClient,
    BatchResult,
    ConflictError,
    InvalidRequestError,
    PayloadTooLargeError,
    SecretExpiredError,
    SecretFormatError,
    SecretNotFoundError,
    VaultClient,
    VaultError,
    VaultUnavailableError,
)


def secret_value() -> str:
    return f"sk-SECRET-{uuid.uuid4().hex}"


def assert_hidden(value: str, *objects: object) -> None:
    for obj in objects:
        assert value not in repr(obj), obj
        assert value not in str(obj), obj
        assert value not in format(obj), obj
        if isinstance(obj, BaseException):
            assert all(value not in str(a) for a in obj.args)
            text = "".join(traceback.format_exception(type(obj), obj, obj.__traceback__))
            assert value not in text
            assert obj.__cause__ is None


def test_secret_repr_and_str_hide_value(client: VaultClient, ns: str) -> None:
    value = secret_value()
    client.put(f"{ns}/s", value, description="desc", tags={"k": "v"})
    s = client.get_secret(f"{ns}/s")
    assert s.value == value
    assert_hidden(value, s, [s], {"s": s}, s.metadata)
    assert "redacted" in str(s)
    assert f"{ns}/s" in repr(s)  # the rest stays visible


def test_batch_result_hides_values(client: VaultClient, ns: str) -> None:
    value = secret_value()
    client.put(f"{ns}/b", value)
    result = client.batch([f"{ns}/b", f"{ns}/missing"])
    assert result[f"{ns}/b"] == value
    assert_hidden(value, result)
    assert f"{ns}/b" in repr(result)


def _raises(fn: Callable[[], object], exc: type[VaultError]) -> VaultError:
    with pytest.raises(exc) as info:
        fn()
    return info.value


def test_exceptions_never_carry_the_value(client: VaultClient, ns: str, dead_socket: str) -> None:
    value = secret_value()
    path = f"{ns}/e"
    client.put(path, value)
    errors = [
        _raises(lambda: client.put(path, value, cas=0), ConflictError),
        _raises(lambda: client.put(path, value, tier="gold"), InvalidRequestError),
        _raises(lambda: client.put(path, value * 3000), PayloadTooLargeError),
        _raises(lambda: client.put(path, value * 40000), PayloadTooLargeError),
        _raises(lambda: client.rotate(f"{ns}/missing", value), SecretNotFoundError),
        _raises(lambda: client.get_json(path), SecretFormatError),
        _raises(
            lambda: client.import_env(f"{value}\n", f"{ns}/imp"),  # a line with no `=`
            InvalidRequestError,
        ),
    ]
    client.put(f"{ns}/exp", value, expires_at=timedelta(milliseconds=1))
    errors.append(_raises(lambda: client.get(f"{ns}/exp"), SecretExpiredError))
    with VaultClient(socket=dead_socket, retries=1, backoff_base=0.01) as dead:
        errors.append(_raises(lambda: dead.put(path, value), VaultUnavailableError))
    assert_hidden(value, *errors)


def test_no_value_reaches_logging(
    sidecar: Sidecar,
    ns: str,
    dead_socket: str,
    tokens_served: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("agentvault", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    value = secret_value()
    rotated = secret_value()
    token_value = "avt_" + uuid.uuid4().hex  # a made-up token, sent where tokens are unknown
    with VaultClient(socket=sidecar.socket) as c:
        c.put(f"{ns}/log", value, tags={"k": "v"})
        assert c.get(f"{ns}/log") == value
        c.get_secret(f"{ns}/log")
        c.batch([f"{ns}/log", f"{ns}/missing"])
        c.rotate(f"{ns}/log", rotated, grace_period_seconds=60)
        c.list(f"{ns}/")
        c.versions(f"{ns}/log")
        c.import_env(f"K={value}\n", f"{ns}/imp")
        c.put_json(f"{ns}/json", {"v": value})
        c.get_json(f"{ns}/json")
        with pytest.raises(VaultError):
            c.put(f"{ns}/log", value, cas=99)
        if tokens_served:
            c.put(f"{ns}/tok", value, tier="standard")
            token_value = c.request_token(f"secrets:read:{ns}/tok", ttl_seconds=60).token
            with VaultClient(socket=sidecar.socket, token=token_value) as scoped:
                assert scoped.get(f"{ns}/tok") == value
    with VaultClient(socket=sidecar.socket, token="avt_" + uuid.uuid4().hex) as bogus:
        with pytest.raises(VaultError):
            bogus.get(f"{ns}/missing" if not tokens_served else f"{ns}/tok")
    with VaultClient(socket=dead_socket, retries=2, backoff_base=0.01) as dead:
        with pytest.raises(VaultUnavailableError):
            dead.put(f"{ns}/log", value)

    names = {r.name for r in caplog.records}
    # The capture did see the HTTP stack's debug records, and the SDK's own.
    assert any(n.startswith("httpcore") for n in names), names
    assert "httpx" in names and "agentvault" in names
    assert any("retry" in r.getMessage() for r in caplog.records if r.name == "agentvault")
    for record in caplog.records:
        text = record.getMessage() + repr(record.args) + repr(record.__dict__)
        for hidden in (value, rotated, token_value):
            assert hidden not in text, (record.name, record.getMessage())
    assert value not in caplog.text and token_value not in caplog.text


@pytest.mark.anyio
async def test_no_value_reaches_logging_async(
    sidecar: Sidecar, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    value = secret_value()
    async with AsyncVaultClient(socket=sidecar.socket) as c:
        await c.put(f"{ns}/alog", value)
        assert await c.get(f"{ns}/alog") == value
        result = await c.batch([f"{ns}/alog"])
        assert isinstance(result, BatchResult)
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    assert value not in caplog.text
    for record in caplog.records:
        assert value not in record.getMessage() + repr(record.args)
