"""The leak guard through the SDK, against a real sidecar: ``redact()`` (sync,
async, module level) and ``RedactingFilter`` on real log records."""

from __future__ import annotations

import base64
import io
import logging
import uuid

import pytest
from conftest import Sidecar

import agentvault
from agentvault import (
    AsyncVaultClient,
    RedactingFilter,
    Redaction,
    RedactionFinding,
    VaultClient,
)


def value() -> str:
    return f"sk-live-{uuid.uuid4().hex}"


def test_redact_replaces_values_and_encodings(client: VaultClient, ns: str) -> None:
    v = value()
    client.put(f"{ns}/api-key", v)
    text = f"key={v} b64={base64.b64encode(v.encode()).decode()} hex={v.encode().hex()} ok"
    r = client.redact(text)
    assert isinstance(r, Redaction)
    marker = f"[REDACTED:{ns}/api-key]"
    assert r.text == f"key={marker} b64={marker} hex={marker} ok"
    assert [(f.path, f.version, f.form) for f in r.findings] == [
        (f"{ns}/api-key", 1, "raw"),
        (f"{ns}/api-key", 1, "base64"),
        (f"{ns}/api-key", 1, "hex"),
    ]
    assert all(isinstance(f, RedactionFinding) for f in r.findings)
    first = r.findings[0]
    assert text.encode()[first.start : first.end].decode() == v
    # Unpacks as (text, findings); nothing found is no finding.
    redacted, findings = client.redact("nothing here")
    assert (redacted, findings) == ("nothing here", ())
    assert r.redacted and not client.redact("nothing here").redacted


def test_offsets_are_utf8_bytes_and_char_span_converts(client: VaultClient, ns: str) -> None:
    v = value()
    client.put(f"{ns}/k", v)
    text = f"ünïcödé → {v} ✓"
    (finding,) = client.redact(text).findings
    start, end = finding.char_span(text)
    assert text[start:end] == v
    assert finding.start > start  # multi-byte characters come before it


def test_short_values_are_not_matched(client: VaultClient, ns: str) -> None:
    client.put(f"{ns}/pin", "1234567")
    assert client.redact("pin 1234567").text == "pin 1234567"


def test_redact_rejects_non_str(client: VaultClient) -> None:
    with pytest.raises(TypeError):
        client.redact(b"bytes")  # type: ignore[arg-type]


def test_module_level_redact(sidecar: Sidecar, ns: str) -> None:
    v = value()
    with VaultClient(socket=sidecar.socket) as c:
        c.put(f"{ns}/m", v)
    agentvault.set_default_client(VaultClient(socket=sidecar.socket))
    try:
        assert agentvault.redact(f"x {v}").text == f"x [REDACTED:{ns}/m]"
    finally:
        agentvault.set_default_client(None)


@pytest.mark.anyio
async def test_async_redact(aclient: AsyncVaultClient, ns: str) -> None:
    v = value()
    await aclient.put(f"{ns}/async", v)
    r = await aclient.redact(f"async {v}")
    assert r.text == f"async [REDACTED:{ns}/async]"
    assert [f.form for f in r.findings] == ["raw"]


def logger_with_filter(flt: RedactingFilter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(flt)
    log = logging.getLogger(f"redact-test-{uuid.uuid4().hex}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    return log, stream


def test_logging_filter_scrubs_message_args_and_tracebacks(client: VaultClient, ns: str) -> None:
    v = value()
    client.put(f"{ns}/log", v)
    log, stream = logger_with_filter(RedactingFilter(client))
    marker = f"[REDACTED:{ns}/log]"

    log.info("in the format string " + v)
    log.warning("in an argument: %s (%d)", v, 7)
    log.info("as base64: %s", base64.b64encode(v.encode()).decode())
    try:
        raise RuntimeError(f"failed with {v}")
    except RuntimeError:
        log.exception("call failed")
    log.info("nothing secret, %s", "plain")

    out = stream.getvalue()
    assert v not in out
    assert base64.b64encode(v.encode()).decode() not in out
    assert f"INFO in the format string {marker}" in out
    assert f"WARNING in an argument: {marker} (7)" in out
    assert f"INFO as base64: {marker}" in out
    assert f"RuntimeError: failed with {marker}" in out
    assert "INFO nothing secret, plain" in out


def test_logging_filter_on_error(dead_socket: str) -> None:
    v = value()
    for on_error, expected in [
        ("withhold", "log message withheld: redaction failed (connection_failed)"),
        ("pass", v),
        ("drop", None),
    ]:
        with VaultClient(socket=dead_socket, retries=0) as dead:
            log, stream = logger_with_filter(RedactingFilter(dead, on_error=on_error))  # type: ignore[arg-type]
            log.error("value %s", v)
            out = stream.getvalue()
        if expected is None:
            assert out == "", on_error
        else:
            assert expected in out, (on_error, out)
        if on_error != "pass":
            assert v not in out
    with pytest.raises(ValueError):
        RedactingFilter(on_error="maybe")  # type: ignore[arg-type]


def test_logging_filter_makes_its_own_client(
    sidecar: Sidecar, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = value()
    with VaultClient(socket=sidecar.socket) as c:
        c.put(f"{ns}/own", v)
    monkeypatch.setenv("AGENTVAULT_SOCKET", sidecar.socket)
    flt = RedactingFilter()
    log, stream = logger_with_filter(flt)
    log.info("k=%s", v)
    flt.close()
    assert stream.getvalue() == f"INFO k=[REDACTED:{ns}/own]\n"
