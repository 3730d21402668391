"""VaultClient against a real sidecar: every method, success paths."""

from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import CountingTransport, Sidecar

import agentvault
from agentvault import (
    AuthError,
    BatchResult,
    Health,
    ImportResult,
    RotationResult,
    Secret,
    SecretMetadata,
    SecretNotFoundError,
    VaultClient,
    VersionInfo,
)


def test_health(client: VaultClient) -> None:
    h = client.health()
    assert isinstance(h, Health)
    assert h.status == "ok"
    assert h.storage == "embedded"
    assert h.identity.startswith("spiffe://")
    assert h.version


def test_put_get_roundtrip_with_metadata(client: VaultClient, ns: str) -> None:
    path = f"{ns}/openai/api-key"
    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    version = client.put(
        path,
        "sk-live-123",
        type="api_key",
        tier="critical",
        description="the OpenAI key",
        tags={"team": "research"},
    )
    assert version == 1
    assert client.get(path) == "sk-live-123"

    s = client.get_secret(path)
    assert isinstance(s, Secret)
    assert (s.path, s.value, s.version) == (path, "sk-live-123", 1)
    assert (s.type, s.tier, s.description) == ("api_key", "critical", "the OpenAI key")
    assert s.tags == {"team": "research"}
    assert s.scope is None and s.expires_at is None
    for t in (s.created_at, s.updated_at):
        assert t.tzinfo is not None and t.utcoffset() == timedelta(0)
        assert before < t < datetime.now(timezone.utc) + timedelta(seconds=5)
    assert s.metadata.path == path and not hasattr(s.metadata, "value")


def test_put_defaults_and_metadata_dict(client: VaultClient, ns: str) -> None:
    path = f"{ns}/plain"
    client.put(path, "v")
    s = client.get_secret(path)
    assert (s.type, s.tier, s.tags) == ("custom", "sensitive", {})

    # metadata= is a dict of the same fields; explicit keywords win over it.
    expires = datetime.now(timezone.utc) + timedelta(hours=2)
    client.put(
        path,
        "v2",
        {"tier": "standard", "type": "db_credential", "tags": {"a": "1"}, "expires_at": expires},
        tier="critical",
        description="from kwargs",
    )
    s = client.get_secret(path)
    assert (s.tier, s.type, s.tags, s.description, s.version) == (
        "critical",
        "db_credential",
        {"a": "1"},
        "from kwargs",
        2,
    )
    assert s.expires_at is not None
    assert abs((s.expires_at - expires).total_seconds()) < 1

    # Any other metadata key is user metadata, kept as a tag (tests/test_seeds.py).
    with pytest.raises(TypeError, match="kept as a tag"):
        client.put(path, "v3", {"owner": ["me"]})
    with pytest.raises(TypeError):
        client.put(path, 123)  # type: ignore[arg-type]


def test_put_keeps_unnamed_metadata_and_expires_at_per_write(client: VaultClient, ns: str) -> None:
    path = f"{ns}/keep"
    client.put(path, "a", tier="standard", tags={"k": "v"}, expires_at=timedelta(hours=1))
    client.put(path, "b")
    s = client.get_secret(path)
    assert (s.tier, s.tags, s.value) == ("standard", {"k": "v"}, "b")
    assert s.expires_at is None  # README: expires_at belongs to each write


def test_expires_at_accepts_text_and_naive(client: VaultClient, ns: str) -> None:
    path = f"{ns}/times"
    client.put(path, "v", expires_at="2099-01-02T03:04:05Z")
    assert client.get_secret(path).expires_at == datetime(2099, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    client.put(path, "v", expires_at=datetime(2098, 5, 6, 7, 8, 9))  # naive = UTC
    assert client.get_secret(path).expires_at == datetime(2098, 5, 6, 7, 8, 9, tzinfo=timezone.utc)


def test_get_version_and_versions_and_rollback(client: VaultClient, ns: str) -> None:
    path = f"{ns}/db/password"
    assert client.put(path, "one") == 1
    assert client.put(path, "two") == 2
    assert client.get(path) == "two"
    assert client.get(path, version=1) == "one"
    assert client.get_secret(path, version=1).version == 1

    versions = client.versions(path)
    assert all(isinstance(v, VersionInfo) for v in versions)
    assert [(v.version, v.active) for v in versions] == [(1, False), (2, True)]
    assert versions[0].created_at <= versions[1].created_at

    assert client.rollback(path, 1) == 1
    assert client.get(path) == "one"
    assert [(v.version, v.active) for v in client.versions(path)] == [(1, True), (2, False)]


def test_rotate(client: VaultClient, ns: str) -> None:
    path = f"{ns}/rot"
    client.put(path, "old")
    r = client.rotate(path, "new", grace_period_seconds=120)
    assert isinstance(r, RotationResult)
    assert (r.new_version, r.old_version) == (2, 1)
    expected = datetime.now(timezone.utc) + timedelta(seconds=120)
    assert abs((r.old_expires_at - expected).total_seconds()) < 10
    assert client.get(path) == "new"
    assert client.get(path, version=1) == "old"  # inside the grace period

    r2 = client.rotate(path, "newer", timedelta(minutes=1))
    assert (r2.new_version, r2.old_version) == (3, 2)
    r3 = client.rotate(path, "newest")  # sidecar's default grace
    assert r3.old_expires_at > datetime.now(timezone.utc)


def test_exists_delete(client: VaultClient, ns: str) -> None:
    path = f"{ns}/gone"
    assert client.exists(path) is False
    client.put(path, "v")
    assert client.exists(path) is True
    assert client.delete(path) is None
    assert client.exists(path) is False
    with pytest.raises(SecretNotFoundError):
        client.get(path)


def test_get_or_default(client: VaultClient, ns: str) -> None:
    assert client.get_or_default(f"{ns}/missing", "fallback") == "fallback"
    assert client.get_or_default(f"{ns}/missing") is None
    client.put(f"{ns}/here", "v")
    assert client.get_or_default(f"{ns}/here", "fallback") == "v"


def test_json_roundtrip(client: VaultClient, ns: str) -> None:
    path = f"{ns}/config"
    doc = {"region": "eu", "n": [1, 2, 3], "nested": {"ok": True}, "text": "é"}
    assert client.put_json(path, doc, tier="standard") == 1
    assert client.get_json(path) == doc
    assert json.loads(client.get(path)) == doc
    assert client.get_secret(path).tier == "standard"


def test_update_metadata(client: VaultClient, ns: str) -> None:
    path = f"{ns}/upd"
    client.put(path, "v", tags={"a": "1"}, description="before", expires_at=timedelta(hours=1))
    m = client.update(path, description="after", tier="critical")
    assert isinstance(m, SecretMetadata)
    assert (m.description, m.tier, m.tags, m.version) == ("after", "critical", {"a": "1"}, 1)
    assert m.expires_at is not None  # left out: unchanged
    m = client.update(path, tags={"b": "2"}, type="api_key", expires_at=None)
    assert (m.tags, m.type, m.expires_at) == ({"b": "2"}, "api_key", None)
    s = client.get_secret(path)
    assert (s.value, s.version, s.description) == ("v", 1, "after")  # no new version


def test_list_follows_cursor(sidecar: Sidecar, ns: str) -> None:
    transport = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, transport=transport) as c:
        paths = [f"{ns}/list/k{i:02d}" for i in range(7)]
        for p in paths:
            c.put(p, "v", tags={"i": p[-2:]})
        c.put(f"{ns}/other", "v")
        transport.attempts = 0
        items = c.list(f"{ns}/list/", page_size=2)
        assert transport.attempts == 4  # 2+2+2+1: followed next_cursor to the end
        assert [m.path for m in items] == paths
        assert all(isinstance(m, SecretMetadata) for m in items)
        assert items[3].tags == {"i": "03"}
        assert not any(hasattr(m, "value") for m in items)

        assert [m.path for m in c.iter_list(f"{ns}/list/", page_size=3)] == paths
        assert len(c.list(f"{ns}/")) == 8  # default page size
        assert c.list(f"{ns}/nothing-here/") == []


def test_batch(client: VaultClient, ns: str) -> None:
    a, b, missing = f"{ns}/a", f"{ns}/b", f"{ns}/missing"
    client.put(a, "va")
    client.put(b, "vb")
    result = client.batch([a, b, missing, a])
    assert isinstance(result, BatchResult)
    assert result.secrets == {a: "va", b: "vb"}
    assert dict(result) == {a: "va", b: "vb"}
    assert result[a] == "va" and a in result and len(result) == 2
    assert result.get(missing) is None and result.get(missing, "d") == "d"
    assert set(result.errors) == {missing}
    err = result.errors[missing]
    assert isinstance(err, SecretNotFoundError)
    assert (err.code, err.status) == ("not_found", 404)
    assert result.request_id
    assert not result.ok
    with pytest.raises(SecretNotFoundError):
        result[missing]
    with pytest.raises(KeyError):
        result[f"{ns}/never-asked"]
    with pytest.raises(SecretNotFoundError):
        result.raise_for_errors()
    client.batch([a]).raise_for_errors()


def test_import_env_text(client: VaultClient, ns: str) -> None:
    dotenv = "# comment\nOPENAI_API_KEY=sk-1\nSTRIPE_SECRET=sk_live\nexport DB_URL='postgres://x'\n"
    target = f"{ns}/app"
    dry = client.import_env(dotenv, target, tier_prefix={"STRIPE_": "critical"}, dry_run=True)
    assert isinstance(dry, ImportResult)
    assert (dry.created, dry.updated, dry.skipped, dry.dry_run) == (3, 0, 0, True)
    assert not client.exists(f"{target}/OPENAI_API_KEY")  # dry run wrote nothing

    done = client.import_env(dotenv, target, tier="standard", tier_prefix={"STRIPE_": "critical"})
    assert (done.created, done.dry_run) == (3, False)
    tiers = {s.path: (s.tier, s.action) for s in done.secrets}
    assert tiers == {
        f"{target}/OPENAI_API_KEY": ("standard", "created"),
        f"{target}/STRIPE_SECRET": ("critical", "created"),
        f"{target}/DB_URL": ("standard", "created"),
    }
    assert client.get(f"{target}/DB_URL") == "postgres://x"

    again = client.import_env("OPENAI_API_KEY=sk-2\n", target)
    assert (again.created, again.updated, again.skipped) == (0, 0, 1)
    assert client.get(f"{target}/OPENAI_API_KEY") == "sk-1"
    over = client.import_env("OPENAI_API_KEY=sk-2\n", target, overwrite=True)
    assert (over.updated, over.secrets[0].action) == (1, "updated")
    assert client.get(f"{target}/OPENAI_API_KEY") == "sk-2"

    dup = client.import_env("A=1\nA=2\n", f"{ns}/dup")
    assert dup.duplicates == {"A": [1, 2]}
    assert client.get(f"{ns}/dup/A") == "2"


def test_import_env_path(client: VaultClient, ns: str, tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("TOKEN=abc\nOTHER=def\n")
    by_pathlike = client.import_env(env, f"{ns}/p1")
    by_str = client.import_env(str(env), f"{ns}/p2")
    assert by_pathlike.created == by_str.created == 2
    assert client.get(f"{ns}/p2/OTHER") == "def"
    with pytest.raises(FileNotFoundError):
        client.import_env(str(tmp_path / "missing.env"), f"{ns}/p3")


def test_context_manager_closes(sidecar: Sidecar) -> None:
    with VaultClient(socket=sidecar.socket) as c:
        assert c.health().status == "ok"
    assert c._http.is_closed


def test_socket_from_environment(sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTVAULT_SOCKET", sidecar.socket)
    with VaultClient() as c:
        assert c.socket == sidecar.socket
        assert c.health().status == "ok"
    monkeypatch.delenv("AGENTVAULT_SOCKET")
    with VaultClient() as c:
        assert c.socket == "/run/agentvault/agentvault.sock"


def test_module_level_functions(sidecar: Sidecar, ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTVAULT_SOCKET", sidecar.socket)
    agentvault.set_default_client(None)
    try:
        path = f"{ns}/module"
        assert agentvault.put(path, "mv", tier="standard") == 1
        assert agentvault.get(path) == "mv"
        assert agentvault.put(path, "mv2", cas=1) == 2
        assert agentvault.get(path, version=1) == "mv"
        first = agentvault.default_client()
        assert first is agentvault.default_client()  # lazily created once
        assert first.socket == sidecar.socket
        agentvault.delete(path)
        with pytest.raises(SecretNotFoundError):
            agentvault.get(path)
    finally:
        agentvault.set_default_client(None)


def test_token_header_is_sent(sidecar: Sidecar, ns: str) -> None:
    transport = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, token="avt_example", transport=transport) as c:
        with contextlib.suppress(AuthError):  # the sidecar may reject the made-up token
            c.health()
        assert transport.last_headers is not None
        assert transport.last_headers["authorization"] == "Bearer avt_example"
        assert "avt_example" not in repr(c)
    plain = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, transport=plain) as c:
        c.health()
        assert plain.last_headers is not None and "authorization" not in plain.last_headers


def test_request_id_is_sent_and_echoed(sidecar: Sidecar, ns: str) -> None:
    transport = CountingTransport(sidecar.socket)
    with VaultClient(socket=sidecar.socket, transport=transport) as c:
        with pytest.raises(SecretNotFoundError) as info:
            c.get(f"{ns}/nope")
        assert transport.last_headers is not None
        assert info.value.request_id == transport.last_headers["x-request-id"]
