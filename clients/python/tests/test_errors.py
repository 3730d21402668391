"""Every contract error the sidecar serves, through the real sidecar, and the
retry policy (connection failures and 503 only, jittered exponential backoff)."""

from __future__ import annotations

import os
import pickle
import threading
import time
from datetime import timedelta

import pytest
from conftest import CountingTransport, Sidecar

from agentvault import (
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


def test_not_found(client: VaultClient, ns: str) -> None:
    missing = f"{ns}/missing"
    calls = [
        lambda: client.get(missing),
        lambda: client.get_secret(missing),
        lambda: client.get_json(missing),
        lambda: client.delete(missing),
        lambda: client.versions(missing),
        lambda: client.rollback(missing, 1),
        lambda: client.rotate(missing, "v"),
        lambda: client.update(missing, description="d"),
    ]
    for call in calls:
        with pytest.raises(SecretNotFoundError) as info:
            call()
        e = info.value
        assert (e.code, e.status) == ("not_found", 404)
        assert e.message and e.request_id
        assert isinstance(e, VaultError)
    assert client.exists(missing) is False

    client.put(f"{ns}/one", "v")
    with pytest.raises(SecretNotFoundError, match="no version 7"):
        client.get(f"{ns}/one", version=7)
    with pytest.raises(SecretNotFoundError):
        client.rollback(f"{ns}/one", 7)


def test_conflict_on_cas(client: VaultClient, ns: str) -> None:
    path = f"{ns}/cas"
    assert client.put(path, "first", cas=0) == 1  # 0: must not exist yet
    with pytest.raises(ConflictError) as info:
        client.put(path, "again", cas=0)
    assert (info.value.code, info.value.status) == ("conflict", 409)
    assert client.put(path, "second", cas=1) == 2
    with pytest.raises(ConflictError):
        client.put(path, "stale", cas=1)
    with pytest.raises(ConflictError):
        client.put_json(path, {"x": 1}, cas=5)
    assert client.get(path) == "second"


def test_expired_then_renewed(client: VaultClient, ns: str) -> None:
    path = f"{ns}/short-lived"
    client.put(path, "v", expires_at=timedelta(seconds=1))
    assert client.get(path) == "v"
    time.sleep(1.3)
    with pytest.raises(SecretExpiredError) as info:
        client.get(path)
    assert (info.value.code, info.value.status) == ("expired", 410)
    with pytest.raises(SecretExpiredError):
        client.batch([path]).raise_for_errors()
    assert client.exists(path) is True  # expired is not deleted
    with pytest.raises(SecretExpiredError):
        client.get_or_default(path, "d")  # only not_found falls back
    client.update(path, expires_at=None)  # renews
    assert client.get(path) == "v"


def test_rotated_out_version_expires_after_grace(client: VaultClient, ns: str) -> None:
    path = f"{ns}/rot"
    client.put(path, "old")
    client.rotate(path, "new", grace_period_seconds=0)
    with pytest.raises(SecretExpiredError):
        client.get(path, version=1)
    assert client.get(path) == "new"


@pytest.mark.parametrize(
    "bad", ["a//b", "/a", "a/", "a/../b", "a/./b", "..", "a b", "ä", "x" * 513]
)
def test_invalid_paths(client: VaultClient, bad: str) -> None:
    # Sent byte for byte (dot segments percent-encoded), so the sidecar judges
    # the path itself instead of an HTTP client resolving it to another one.
    with pytest.raises(InvalidRequestError) as info:
        client.get(bad)
    assert (info.value.code, info.value.status) == ("invalid_request", 400)
    with pytest.raises(InvalidRequestError):
        client.put(bad, "v")


def test_invalid_fields(client: VaultClient, ns: str) -> None:
    path = f"{ns}/fields"
    with pytest.raises(InvalidRequestError, match="tier"):
        client.put(path, "v", tier="gold")
    with pytest.raises(InvalidRequestError, match="type"):
        client.put(path, "v", type="password")
    with pytest.raises(InvalidRequestError, match="expires_at"):
        client.put(path, "v", expires_at="tomorrow")
    with pytest.raises(InvalidRequestError, match="description"):
        client.put(path, "v", description="d" * 2000)
    with pytest.raises(InvalidRequestError, match="scope"):
        client.put(path, "v", scope="no spaces allowed")
    client.put(path, "v")
    with pytest.raises(InvalidRequestError, match="version"):
        client.get(path, version=0)
    with pytest.raises(InvalidRequestError, match="version"):
        client.rollback(path, 0)
    with pytest.raises(InvalidRequestError, match="tier"):
        client.update(path, tier="gold")
    with pytest.raises(InvalidRequestError, match="limit"):
        client.list(ns, page_size=0)
    with pytest.raises(InvalidRequestError, match="limit"):
        client.list(ns, page_size=201)
    with pytest.raises(InvalidRequestError, match="prefix"):
        client.list("bad prefix")
    with pytest.raises(InvalidRequestError, match="paths"):
        client.batch([])
    with pytest.raises(InvalidRequestError, match="paths"):
        client.batch([f"{ns}/p{i}" for i in range(101)])
    with pytest.raises(InvalidRequestError, match="tier"):
        client.import_env("A=1\n", f"{ns}/imp", tier="gold")
    with pytest.raises(InvalidRequestError, match="grace_period_seconds"):
        client.rotate(path, "v", grace_period_seconds=10**9)


def test_too_large(client: VaultClient, ns: str) -> None:
    with pytest.raises(PayloadTooLargeError, match="value") as info:
        client.put(f"{ns}/big", "x" * (64 * 1024 + 1))
    assert (info.value.code, info.value.status) == ("too_large", 413)
    with pytest.raises(PayloadTooLargeError, match="body"):
        client.put(f"{ns}/huge", "x" * (2 * 1024 * 1024))
    with pytest.raises(PayloadTooLargeError):
        client.rotate(f"{ns}/big", "x" * (64 * 1024 + 1))
    assert client.exists(f"{ns}/big") is False


def test_get_json_on_non_json_value(client: VaultClient, ns: str) -> None:
    client.put(f"{ns}/notjson", "sk-not-json-VALUE")
    with pytest.raises(SecretFormatError) as info:
        client.get_json(f"{ns}/notjson")
    assert isinstance(info.value, ValueError)
    assert "sk-not-json-VALUE" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


# ---- unavailable: connection failures -------------------------------------


def _min_backoff(base: float, retries: int) -> float:
    # Retry n sleeps at least half of base * 2**n.
    return sum(base * 2**n / 2 for n in range(retries))


@pytest.mark.parametrize("kind", ["missing", "refused"])
def test_unreachable_socket_is_retried_then_unavailable(
    kind: str, dead_socket: str, tmp_path: os.PathLike[str]
) -> None:
    path = dead_socket if kind == "refused" else os.path.join(tmp_path, "nobody.sock")
    transport = CountingTransport(path)
    with VaultClient(socket=path, retries=3, backoff_base=0.05, transport=transport) as c:
        started = time.monotonic()
        with pytest.raises(VaultUnavailableError) as info:
            c.get("any/path")
        elapsed = time.monotonic() - started
    assert transport.attempts == 4  # 1 + retries
    e = info.value
    assert e.attempts == 4
    assert e.status is None and e.code == "connection_failed"
    assert e.request_id  # the id the client sent, same on every attempt
    assert e.__cause__ is None
    lower = _min_backoff(0.05, 3)  # 0.175s
    assert lower <= elapsed < lower * 2 + 1.0


def test_unreachable_put_is_retried_too(dead_socket: str) -> None:
    # The request never reached anyone, so even a write is safe to send again.
    transport = CountingTransport(dead_socket)
    with VaultClient(socket=dead_socket, retries=2, backoff_base=0.01, transport=transport) as c:
        with pytest.raises(VaultUnavailableError):
            c.put("any/path", "v")
    assert transport.attempts == 3


def test_retries_zero_means_one_attempt(dead_socket: str) -> None:
    transport = CountingTransport(dead_socket)
    with VaultClient(socket=dead_socket, retries=0, transport=transport) as c:
        with pytest.raises(VaultUnavailableError) as info:
            c.health()
    assert transport.attempts == 1 and info.value.attempts == 1
    with pytest.raises(ValueError):
        VaultClient(socket=dead_socket, retries=-1)


def test_backoff_is_exponential_and_capped() -> None:
    from agentvault._core import RetryPolicy

    policy = RetryPolicy(retries=10, backoff_base=0.1, backoff_max=1.0)
    for attempt in range(8):
        cap = min(1.0, 0.1 * 2**attempt)
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1  # jittered


# ---- unavailable: 503 from a real sidecar whose storage is down -------------


def test_503_is_retried_then_unavailable(storage_down_sidecar: Sidecar) -> None:
    transport = CountingTransport(storage_down_sidecar.socket)
    with VaultClient(
        socket=storage_down_sidecar.socket, retries=2, backoff_base=0.05, transport=transport
    ) as c:
        for call in (
            lambda: c.get("a/b"),
            lambda: c.put("a/b", "v"),
            lambda: c.batch(["a/b"]).raise_for_errors(),
            lambda: c.list(""),
            lambda: c.health(),
        ):
            transport.attempts = 0
            started = time.monotonic()
            with pytest.raises(VaultUnavailableError) as info:
                call()
            elapsed = time.monotonic() - started
            assert transport.attempts == 3
            e = info.value
            assert (e.code, e.status) == ("unavailable", 503)
            assert "storage unavailable" in e.message
            assert e.request_id
            assert elapsed >= _min_backoff(0.05, 2)


def test_4xx_is_not_retried(sidecar: Sidecar, ns: str) -> None:
    transport = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, transport=transport) as c:
        for call, exc in (
            (lambda: c.get(f"{ns}/missing"), SecretNotFoundError),
            (lambda: c.put(f"{ns}/x", "v", tier="gold"), InvalidRequestError),
        ):
            transport.attempts = 0
            with pytest.raises(exc):
                call()
            assert transport.attempts == 1


def test_errors_pickle(client: VaultClient, ns: str) -> None:
    with pytest.raises(SecretNotFoundError) as info:
        client.get(f"{ns}/missing")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is SecretNotFoundError
    assert (again.code, again.status, again.message, again.request_id) == (
        info.value.code,
        info.value.status,
        info.value.message,
        info.value.request_id,
    )


def test_batch_with_storage_down_is_retried_like_a_503(storage_down_sidecar: Sidecar) -> None:
    # With storage down the sidecar fails the whole batch with 503; the client
    # retries it and then raises.
    transport = CountingTransport(storage_down_sidecar.socket)
    with VaultClient(
        socket=storage_down_sidecar.socket, retries=2, backoff_base=0.01, transport=transport
    ) as c:
        with pytest.raises(VaultUnavailableError) as info:
            c.batch(["a/b", "c/d"])
    assert transport.attempts == 3
    assert info.value.status == 503


def test_retry_succeeds_once_the_sidecar_is_back() -> None:
    # A real outage: the sidecar stops, and comes back on the same socket and
    # data while the client is backing off; the read then goes through.
    s = Sidecar()
    try:
        transport = CountingTransport(s.socket)
        with VaultClient(
            socket=s.socket, retries=10, backoff_base=0.1, backoff_max=0.5, transport=transport
        ) as c:
            c.put("restart/key", "still-here")
            s.stop_process()
            restarter = threading.Timer(0.3, s.start)
            restarter.start()
            transport.attempts = 0
            try:
                assert c.get("restart/key") == "still-here"
            finally:
                restarter.join()
            assert transport.attempts >= 2
    finally:
        s.stop()
