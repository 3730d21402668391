"""A compatibility layer for code written against the agentsecretstore SDK.

    from agentvault.compat import AgentVault, SecretTier

    async with AgentVault() as vault:
        await vault.set_secret("prod/openai/api-key", "sk-...", tier=SecretTier.CRITICAL)
        secret = await vault.get_secret("prod/openai/api-key")
        secret.value, secret.version, secret.accessed_at

``AgentVault`` is async-first; ``SyncAgentVault`` has the same methods,
blocking. Both speak the sidecar's own socket API (``/v1/...``) through
``AsyncVaultClient`` / ``VaultClient``, so every call is decided by the same
policy and audited the same way. What remains different:

- there is no remote ``base_url``: the sidecar runs next to the process and is
  reached over its Unix socket (``socket=``, ``$AGENTVAULT_SOCKET``), and a
  ``base_url`` other than ``unix:///path`` is refused;
- there is no agent key: the caller is identified by the kernel and the
  sidecar's SPIFFE ID, so ``agent_key=`` is accepted, ignored, and warned about;
- ``tier_map`` of ``import_env`` maps variable-name *prefixes* to tiers (a
  full name is a prefix of itself).
"""

from __future__ import annotations

import builtins
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from ._client import AsyncVaultClient, VaultClient
from ._core import Call, Page, Requests, TimeArg, put_body, read_dotenv
from ._errors import (
    ApprovalPendingError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    PolicyDeniedError,
    RateLimitedError,
    SecretExpiredError,
    SecretNotFoundError,
    VaultError,
    VaultUnavailableError,
)
from ._models import (
    Health,
    ImportResult,
    RotationResult,
    Secret,
    SecretMetadata,
    Token,
    VersionInfo,
)

__all__ = [
    "AccessedSecret",
    "AgentVault",
    "AgentVaultError",
    "ApprovalRequiredError",
    "AuthenticationError",
    "ConflictError",
    "ExpiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "ScopedToken",
    "SecretList",
    "SecretNotFoundError",
    "SecretTier",
    "SecretType",
    "ServiceUnavailableError",
    "SyncAgentVault",
    "ValidationError",
    "WriteResult",
]

# agentsecretstore's error names, as the SDK's own classes: `except
# PermissionDeniedError` catches a `PolicyDeniedError`, and the other way round.
# Each carries `.path`; a denial also `.required_scope`.
AgentVaultError = VaultError
AuthenticationError = AuthError
PermissionDeniedError = PolicyDeniedError
ApprovalRequiredError = ApprovalPendingError
RateLimitError = RateLimitedError
ValidationError = InvalidRequestError
ExpiredError = SecretExpiredError
ServiceUnavailableError = VaultUnavailableError


class SecretTier(str, Enum):
    """How carefully a secret is handled: ``critical`` reads are audited
    before they are answered and tokens covering them wait for approval."""

    STANDARD = "standard"
    SENSITIVE = "sensitive"
    CRITICAL = "critical"


class SecretType(str, Enum):
    API_KEY = "api_key"
    OAUTH_TOKEN = "oauth_token"
    DB_CREDENTIAL = "db_credential"
    SSH_KEY = "ssh_key"
    PAYMENT_CREDENTIAL = "payment_credential"
    CUSTOM = "custom"


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class AccessedSecret(Secret):
    """A ``Secret`` with the time this client read it (``accessed_at``, UTC).
    Like ``Secret``, its ``repr()`` and ``str()`` never show the value."""

    accessed_at: datetime = field(default_factory=_now)

    @classmethod
    def read(cls, secret: Secret) -> AccessedSecret:
        return cls(**{f.name: getattr(secret, f.name) for f in fields(secret)})


@dataclass(frozen=True)
class WriteResult:
    """Where a write left a secret: its path and its (new) active version."""

    path: str
    version: int


@dataclass(frozen=True)
class SecretList:
    """One page of ``list_secrets``; pass ``next_cursor`` back for the next
    (``None``: this was the last)."""

    items: list[SecretMetadata]
    next_cursor: str | None


@dataclass(frozen=True)
class ScopedToken:
    """A scoped bearer token and its approval state. A token covering a
    critical secret waits for a human's approval (``is_pending``) and is
    usable once approved. ``repr()`` and ``str()`` hide ``token``."""

    token: str | None = field(repr=False)
    scope: str
    expires_at: datetime | None
    max_uses: int | None
    uses_remaining: int | None
    #: ``not_required``, ``approved``, ``pending`` or ``denied``.
    approval_status: str | None
    approval_id: str | None = None
    description: str | None = None

    @property
    def is_pending(self) -> bool:
        """Whether the token waits for an approver (``agentvault approvals``)."""
        return self.approval_status == "pending"

    @property
    def is_usable(self) -> bool:
        """Whether the token works now (it needed no approval, or got it)."""
        return self.token is not None and self.approval_status in (
            None,
            "not_required",
            "approved",
        )

    @classmethod
    def issued(cls, token: Token, description: str | None) -> ScopedToken:
        return cls(
            token=token.token,
            scope=token.scope,
            expires_at=token.expires_at,
            max_uses=token.max_uses,
            uses_remaining=token.uses_remaining,
            approval_status=token.approval_status,
            description=description,
        )

    @classmethod
    def pending(
        cls, error: ApprovalPendingError, scope: str, description: str | None
    ) -> ScopedToken:
        token = error.token
        return cls(
            token=token.token if token is not None else None,
            scope=token.scope if token is not None else scope,
            expires_at=token.expires_at if token is not None else None,
            max_uses=token.max_uses if token is not None else None,
            uses_remaining=token.uses_remaining if token is not None else None,
            approval_status=error.approval_status,
            approval_id=error.approval_id or None,
            description=description,
        )

    def __str__(self) -> str:
        return (
            f"ScopedToken(scope={self.scope!r}, "
            f"approval_status={self.approval_status!r}, token=<redacted>)"
        )


def _socket_of(
    socket: str | os.PathLike[str] | None, base_url: str | None
) -> str | os.PathLike[str] | None:
    if base_url is None:
        return socket
    if base_url.startswith("unix://"):
        if socket is not None:
            raise ValueError("give socket= or base_url='unix:///path', not both")
        return base_url.removeprefix("unix://")
    raise ValueError(
        f"base_url={base_url!r}: agentvault has no remote API; the sidecar runs next to "
        "this process and is reached over its Unix socket (socket=..., $AGENTVAULT_SOCKET, "
        "or base_url='unix:///path/to/agentvault.sock')"
    )


def _warn_agent_key(agent_key: str | None) -> None:
    if agent_key is not None:
        warnings.warn(
            "agent_key is not used: agentvault identifies the caller by the kernel "
            "(SO_PEERCRED) and the sidecar's SPIFFE ID; remove it from your configuration",
            UserWarning,
            stacklevel=3,
        )


def _namespace_prefix(namespace: str) -> str:
    return namespace if not namespace or namespace.endswith("/") else f"{namespace}/"


def _enum_text(value: str | Enum | None) -> str | None:
    if isinstance(value, Enum):
        return str(value.value)
    return value


def _set_body(
    value: str,
    *,
    tier: SecretTier | str | None,
    type: SecretType | str | None,
    description: str | None,
    tags: Mapping[str, str] | None,
    expires_at: TimeArg | None,
    scope: str | None,
    cas: int | None,
) -> dict[str, Any]:
    return put_body(
        value,
        None,
        tier=_enum_text(tier),
        type=_enum_text(type),
        description=description,
        tags=tags,
        expires_at=expires_at,
        scope=scope,
        cas=cas,
    )


def _get_call(path: str, version: int | None, token: str | None) -> Call[Secret]:
    call = Requests.get_secret(path, version)
    call.token = token
    return call


def _import_call(
    path: str | os.PathLike[str],
    namespace: str,
    tier: SecretTier | str | None,
    tier_map: Mapping[str, SecretTier | str] | None,
    dry_run: bool,
    overwrite: bool,
) -> Call[ImportResult]:
    prefixes = {k: str(_enum_text(v)) for k, v in (tier_map or {}).items()}
    return Requests.import_env(
        # `path` always names a file here (the SDK's own import_env also takes text).
        read_dotenv(Path(path)),
        namespace,
        tier=_enum_text(tier),
        tier_prefix=prefixes,
        dry_run=dry_run,
        overwrite=overwrite,
    )


class AgentVault:
    """The async client of the agentsecretstore-style API (see the module
    docstring). Use ``async with``, or ``await close()``.

    Args:
        socket: the sidecar's Unix socket (default ``$AGENTVAULT_SOCKET``,
            else ``/run/agentvault/agentvault.sock``).
        token: a bearer token sent with every call (``get_secret(token=)``
            overrides it for one call).
        timeout, retries, tenant: as for ``AsyncVaultClient``.
        base_url: only ``unix:///path`` (the socket); anything else is refused.
        agent_key: accepted and ignored, with a warning.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        tenant: str | None = None,
        base_url: str | None = None,
        agent_key: str | None = None,
    ) -> None:
        _warn_agent_key(agent_key)
        self._client = AsyncVaultClient(
            _socket_of(socket, base_url), timeout, retries, token, tenant=tenant
        )

    @property
    def client(self) -> AsyncVaultClient:
        """The underlying ``AsyncVaultClient`` (the SDK's full API)."""
        return self._client

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> AgentVault:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def health(self) -> Health:
        return await self._client.health()

    async def get_secret(
        self, path: str, version: int | None = None, token: str | None = None
    ) -> AccessedSecret:
        """The secret at ``path`` (or its ``version``), read with ``token``
        for this call if given."""
        return AccessedSecret.read(await self._client._run(_get_call(path, version, token)))

    async def set_secret(
        self,
        path: str,
        value: str,
        tier: SecretTier | str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        expires_at: TimeArg | None = None,
        *,
        type: SecretType | str | None = None,
        scope: str | None = None,
        cas: int | None = None,
    ) -> WriteResult:
        """Writes ``value`` as the new active version."""
        body = _set_body(
            value,
            tier=tier,
            type=type,
            description=description,
            tags=tags,
            expires_at=expires_at,
            scope=scope,
            cas=cas,
        )
        return WriteResult(path, await self._client._run(Requests.put(path, body)))

    async def delete_secret(self, path: str) -> None:
        await self._client.delete(path)

    async def list_secrets(
        self, namespace: str = "", limit: int = 50, cursor: str | None = None
    ) -> SecretList:
        """One page (``limit`` 1-200) of the secrets under ``namespace``
        (``prod`` lists ``prod/...``, not ``production/...``)."""
        page: Page = await self._client._run(
            Requests.list_page(_namespace_prefix(namespace), limit, cursor)
        )
        return SecretList(items=page.items, next_cursor=page.next_cursor)

    async def request_token(
        self,
        scope: str,
        ttl_seconds: int | float | timedelta = 3600,
        description: str | None = None,
        *,
        max_uses: int | None = None,
    ) -> ScopedToken:
        """A scoped token; one that waits for approval comes back with
        ``approval_status="pending"`` and its ``approval_id`` (not raised)."""
        try:
            token = await self._client.request_token(scope, ttl_seconds, max_uses, description)
        except ApprovalPendingError as pending:
            return ScopedToken.pending(pending, scope, description)
        return ScopedToken.issued(token, description)

    async def rotate_secret(
        self,
        path: str,
        new_value: str,
        grace_period_seconds: int | float | timedelta | None = None,
    ) -> RotationResult:
        return await self._client.rotate(path, new_value, grace_period_seconds)

    async def list_versions(self, path: str) -> builtins.list[VersionInfo]:
        """Every stored version, oldest first (``.is_active`` marks the active one)."""
        return await self._client.versions(path)

    async def rollback_secret(self, path: str, version: int) -> WriteResult:
        return WriteResult(path, await self._client.rollback(path, version))

    async def import_env(
        self,
        path: str | os.PathLike[str] = ".env",
        namespace: str = "env",
        tier_map: Mapping[str, SecretTier | str] | None = None,
        *,
        tier: SecretTier | str | None = None,
        dry_run: bool = False,
        overwrite: bool = False,
    ) -> ImportResult:
        """Imports the ``.env`` file at ``path``: each variable becomes
        ``<namespace>/<NAME>``; ``tier_map`` maps name prefixes to tiers."""
        call = _import_call(path, namespace, tier, tier_map, dry_run, overwrite)
        return await self._client._run(call)


class SyncAgentVault:
    """``AgentVault`` with blocking methods (same arguments). Use ``with``, or
    call ``close()``."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        tenant: str | None = None,
        base_url: str | None = None,
        agent_key: str | None = None,
    ) -> None:
        _warn_agent_key(agent_key)
        self._client = VaultClient(
            _socket_of(socket, base_url), timeout, retries, token, tenant=tenant
        )

    @property
    def client(self) -> VaultClient:
        """The underlying ``VaultClient`` (the SDK's full API)."""
        return self._client

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> SyncAgentVault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def health(self) -> Health:
        return self._client.health()

    def get_secret(
        self, path: str, version: int | None = None, token: str | None = None
    ) -> AccessedSecret:
        return AccessedSecret.read(self._client._run(_get_call(path, version, token)))

    def set_secret(
        self,
        path: str,
        value: str,
        tier: SecretTier | str | None = None,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
        expires_at: TimeArg | None = None,
        *,
        type: SecretType | str | None = None,
        scope: str | None = None,
        cas: int | None = None,
    ) -> WriteResult:
        body = _set_body(
            value,
            tier=tier,
            type=type,
            description=description,
            tags=tags,
            expires_at=expires_at,
            scope=scope,
            cas=cas,
        )
        return WriteResult(path, self._client._run(Requests.put(path, body)))

    def delete_secret(self, path: str) -> None:
        self._client.delete(path)

    def list_secrets(
        self, namespace: str = "", limit: int = 50, cursor: str | None = None
    ) -> SecretList:
        page = self._client._run(Requests.list_page(_namespace_prefix(namespace), limit, cursor))
        return SecretList(items=page.items, next_cursor=page.next_cursor)

    def request_token(
        self,
        scope: str,
        ttl_seconds: int | float | timedelta = 3600,
        description: str | None = None,
        *,
        max_uses: int | None = None,
    ) -> ScopedToken:
        try:
            token = self._client.request_token(scope, ttl_seconds, max_uses, description)
        except ApprovalPendingError as pending:
            return ScopedToken.pending(pending, scope, description)
        return ScopedToken.issued(token, description)

    def rotate_secret(
        self,
        path: str,
        new_value: str,
        grace_period_seconds: int | float | timedelta | None = None,
    ) -> RotationResult:
        return self._client.rotate(path, new_value, grace_period_seconds)

    def list_versions(self, path: str) -> builtins.list[VersionInfo]:
        return self._client.versions(path)

    def rollback_secret(self, path: str, version: int) -> WriteResult:
        return WriteResult(path, self._client.rollback(path, version))

    def import_env(
        self,
        path: str | os.PathLike[str] = ".env",
        namespace: str = "env",
        tier_map: Mapping[str, SecretTier | str] | None = None,
        *,
        tier: SecretTier | str | None = None,
        dry_run: bool = False,
        overwrite: bool = False,
    ) -> ImportResult:
        call = _import_call(path, namespace, tier, tier_map, dry_run, overwrite)
        return self._client._run(call)

