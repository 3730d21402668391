"""The lazily-created default client behind ``agentvault.get/put/delete`` and
the decorators."""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Mapping
from typing import Any

from ._client import VaultClient
from ._core import TimeArg
from ._models import Redaction

__all__ = ["default_client", "delete", "get", "put", "redact", "set_default_client"]

_lock = threading.Lock()
_client: VaultClient | None = None
_owner_pid: int | None = None


def default_client() -> VaultClient:
    """The process-wide client, created on first use with the defaults
    (``$AGENTVAULT_SOCKET`` or ``/run/agentvault/agentvault.sock``). A forked
    child gets its own, since a connection pool must not cross a fork."""
    global _client, _owner_pid
    with _lock:
        if _client is None or _owner_pid != os.getpid():
            _client = VaultClient()
            _owner_pid = os.getpid()
        return _client


def set_default_client(client: VaultClient | None) -> None:
    """Replaces the default client (``None``: forget it, so the next use makes
    a new one, e.g. after changing ``$AGENTVAULT_SOCKET``). The replaced client
    is closed if this process made it."""
    global _client, _owner_pid
    with _lock:
        old, old_pid = _client, _owner_pid
        _client = client
        _owner_pid = os.getpid() if client is not None else None
    if old is not None and old is not client and old_pid == os.getpid():
        old.close()


def _close_at_exit() -> None:
    if _client is not None and _owner_pid == os.getpid():
        _client.close()


atexit.register(_close_at_exit)


def get(path: str, *, version: int | None = None) -> str:
    """The value of the secret at ``path``, through the default client."""
    return default_client().get(path, version=version)


def put(
    path: str,
    value: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    tier: str | None = None,
    type: str | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    expires_at: TimeArg | None = None,
    scope: str | None = None,
    cas: int | None = None,
) -> int:
    """Writes a secret through the default client; returns the new version
    (see ``VaultClient.put``)."""
    return default_client().put(
        path,
        value,
        metadata,
        tier=tier,
        type=type,
        description=description,
        tags=tags,
        expires_at=expires_at,
        scope=scope,
        cas=cas,
    )


def redact(text: str) -> Redaction:
    """``text`` with every secret value the caller may read replaced, through
    the default client (see ``VaultClient.redact``)."""
    return default_client().redact(text)


def delete(path: str) -> None:
    """Deletes a secret through the default client."""
    default_client().delete(path)
