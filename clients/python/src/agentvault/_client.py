"""``VaultClient`` (blocking) and ``AsyncVaultClient`` (asyncio or trio, via
anyio): the same methods, one sending with ``httpx.Client``, the other with
``httpx.AsyncClient``, both over the sidecar's Unix socket."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import anyio
import httpx

from ._core import (
    UNSET,
    Call,
    Outcome,
    Requests,
    RetryPolicy,
    TimeArg,
    _Unset,
    classify_exception,
    classify_response,
    decode_json_value,
    encode_json_value,
    log_retry,
    make_client_kwargs,
    put_body,
    read_dotenv,
    resolve_socket,
    tenant_mismatch,
    unique,
    update_body,
)
from ._errors import SecretNotFoundError
from ._models import (
    BatchResult,
    Health,
    ImportResult,
    Redaction,
    RotationResult,
    Secret,
    SecretMetadata,
    Token,
    VersionInfo,
)

__all__ = ["AsyncVaultClient", "VaultClient"]

T = TypeVar("T")
D = TypeVar("D")

_LIST_GUARD = 1_000_000  # pages; a cursor that never ends is a sidecar bug


class _Settings:
    """Constructor arguments common to both clients."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None,
        timeout: float | httpx.Timeout,
        retries: int,
        token: str | None,
        backoff_base: float,
        backoff_max: float,
        tenant: str | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if tenant is not None and (not isinstance(tenant, str) or not tenant):
            raise ValueError("tenant must be a non-empty str")
        self.socket = resolve_socket(socket)
        self.tenant = tenant
        #: Set once the sidecar was seen to serve ``tenant``.
        self.tenant_checked = tenant is None
        self.timeout = timeout
        self.token = token
        self.retry = RetryPolicy(
            retries=retries, backoff_base=backoff_base, backoff_max=backoff_max
        )


class VaultClient:
    """A blocking client of the agentvault sidecar.

    Args:
        socket: the sidecar's Unix socket; default ``$AGENTVAULT_SOCKET``, else
            ``/run/agentvault/agentvault.sock``.
        timeout: seconds (or an ``httpx.Timeout``) for each attempt.
        retries: how many times to retry after a connection failure or a 503
            (so at most ``retries + 1`` attempts), with jittered exponential backoff.
        token: a bearer token (``avt_...``) sent as ``Authorization: Bearer``.
        tenant: the tenant this client is for. The first call checks it
            against the sidecar's (``GET /v1/health``) and raises
            ``TenantMismatchError`` if the sidecar serves another one.
        backoff_base, backoff_max: the backoff before retry ``n`` is random in
            ``[c/2, c]`` with ``c = min(backoff_max, backoff_base * 2**n)``.
        transport: an ``httpx.BaseTransport`` to use instead of the Unix socket
            one (for instrumentation and tests).

    Use it as a context manager, or call ``close()``.
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        token: str | None = None,
        *,
        tenant: str | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(
            socket, timeout, retries, token, backoff_base, backoff_max, tenant
        )
        if transport is None:
            transport = httpx.HTTPTransport(uds=self._settings.socket)
        self._http = httpx.Client(transport=transport, **make_client_kwargs(timeout, token))

    @property
    def socket(self) -> str:
        """The Unix socket this client talks to."""
        return self._settings.socket

    @property
    def tenant(self) -> str | None:
        """The tenant this client was made for, if one was given."""
        return self._settings.tenant

    def __repr__(self) -> str:
        auth = ", token=<redacted>" if self._settings.token else ""
        return f"VaultClient(socket={self.socket!r}{auth})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: Call[T]) -> T:
        settings = self._settings
        if not settings.tenant_checked and settings.tenant is not None:
            health = self._send(Requests.health())
            mismatch = tenant_mismatch(settings.tenant, health, settings.socket)
            if mismatch is not None:
                raise mismatch
            settings.tenant_checked = True
        return self._send(call)

    def _send(self, call: Call[T]) -> T:
        retry = self._settings.retry
        attempt = 0
        while True:
            attempt += 1
            outcome: Outcome[T]
            try:
                response = self._http.send(call.build(self._http))
            except httpx.HTTPError as exc:
                outcome = classify_exception(call, exc, attempt, self._settings.socket)
            else:
                outcome = classify_response(call, response, attempt)
            if outcome.error is None:
                return cast(T, outcome.value)
            if outcome.retryable and attempt <= retry.retries:
                delay = retry.delay(attempt - 1)
                log_retry(call, outcome.error.code, attempt, retry.retries, delay)
                time.sleep(delay)
                continue
            raise outcome.error

    # ---- reading ---------------------------------------------------------

    def health(self) -> Health:
        """``GET /v1/health``."""
        return self._run(Requests.health())

    def redact(self, text: str) -> Redaction:
        """``text`` with every secret value this caller may read, and its
        common encodings (base64, hex, URL, JSON-escaped), replaced by
        ``[REDACTED:<path>]``, and the findings (path, version, byte offsets,
        encoding; never a value). Values shorter than the sidecar's minimum
        (8 bytes by default) are not matched. ``text, findings = vault.redact(t)``
        works too."""
        return self._run(Requests.redact(text))

    def get(self, path: str, *, version: int | None = None) -> str:
        """The value of the secret at ``path`` (its active version, or ``version``)."""
        return self.get_secret(path, version=version).value

    def get_secret(self, path: str, *, version: int | None = None) -> Secret:
        """The secret at ``path`` with its metadata."""
        return self._run(Requests.get_secret(path, version))

    @overload
    def get_or_default(self, path: str, default: None = None) -> str | None: ...

    @overload
    def get_or_default(self, path: str, default: D) -> str | D: ...

    def get_or_default(self, path: str, default: Any = None) -> Any:
        """The value at ``path``, or ``default`` when there is no secret there
        (``not_found`` only: any other error, ``expired`` included, is raised)."""
        try:
            return self.get(path)
        except SecretNotFoundError:
            return default

    def get_json(self, path: str, *, version: int | None = None) -> Any:
        """The value at ``path`` parsed as JSON (``SecretFormatError`` if it is not)."""
        return decode_json_value(self.get_secret(path, version=version))

    def exists(self, path: str) -> bool:
        """Whether a secret exists at ``path`` (``HEAD``; nothing is decrypted)."""
        return self._run(Requests.exists(path))

    def list(
        self, prefix: str = "", *, page_size: int | None = None
    ) -> builtins.list[SecretMetadata]:
        """Every secret under ``prefix``, following ``next_cursor`` until the
        listing is exhausted: path strings (``SecretMetadata`` is a ``str``
        subclass) carrying their metadata (``.version``, ``.tier``, ...)."""
        return builtins.list(self.iter_list(prefix, page_size=page_size))

    def iter_list(
        self, prefix: str = "", *, page_size: int | None = None
    ) -> Iterator[SecretMetadata]:
        """Like ``list()``, one page at a time."""
        cursor: str | None = None
        for _ in range(_LIST_GUARD):
            page = self._run(Requests.list_page(prefix, page_size, cursor))
            yield from page.items
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    def batch(self, paths: Iterable[str]) -> BatchResult:
        """Reads several secrets in one request; each path succeeds or fails on
        its own (see ``BatchResult``). Duplicate paths are sent once."""
        return self._run(Requests.batch(unique(paths)))

    def versions(self, path: str) -> builtins.list[VersionInfo]:
        """Every stored version of the secret, oldest first."""
        return self._run(Requests.versions(path))

    # ---- writing ---------------------------------------------------------

    def put(
        self,
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
        """Writes ``value`` as the new active version and returns its number.

        ``metadata`` is a mapping of any of ``type``, ``tier``, ``description``,
        ``tags``, ``expires_at`` and ``scope`` (e.g. a config dict); the keyword
        arguments of the same names win over it. Fields left out keep their
        current values, except ``expires_at``, which belongs to each write (a
        write without it has no expiry). ``expires_at`` is a ``datetime``
        (naive = UTC), a ``timedelta`` from now, or RFC 3339 text. ``cas`` is
        the version the write expects to be current (0: must not exist);
        ``ConflictError`` if it is not.
        """
        body = put_body(
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
        return self._run(Requests.put(path, body))

    def put_json(
        self,
        path: str,
        value: Any,
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
        """``put()`` of ``value`` serialized as compact JSON."""
        return self.put(
            path,
            encode_json_value(value),
            metadata,
            tier=tier,
            type=type,
            description=description,
            tags=tags,
            expires_at=expires_at,
            scope=scope,
            cas=cas,
        )

    def update(
        self,
        path: str,
        *,
        type: str | _Unset | None = UNSET,
        tier: str | _Unset | None = UNSET,
        description: str | _Unset | None = UNSET,
        tags: Mapping[str, str] | _Unset | None = UNSET,
        expires_at: TimeArg | _Unset | None = UNSET,
        scope: str | _Unset | None = UNSET,
    ) -> SecretMetadata:
        """Changes metadata without writing a new version (``PATCH``, a
        contract extension). Arguments left out stay as they are;
        ``expires_at=None`` removes the expiry (and so renews an expired secret)."""
        body = update_body(
            type=type,
            tier=tier,
            description=description,
            tags=tags,
            expires_at=expires_at,
            scope=scope,
        )
        return self._run(Requests.update(path, body))

    def delete(self, path: str) -> None:
        """Deletes the secret, its versions and its grants."""
        self._run(Requests.delete(path))

    def rollback(self, path: str, version: int) -> int:
        """Makes ``version`` the active version again; returns it."""
        return self._run(Requests.rollback(path, version))

    def rotate(
        self,
        path: str,
        value: str,
        grace_period_seconds: int | float | timedelta | None = None,
    ) -> RotationResult:
        """Writes ``value`` as the new active version; the old one stays
        readable by number for the grace period (the sidecar's default if None)."""
        return self._run(Requests.rotate(path, value, grace_period_seconds))

    def import_env(
        self,
        dotenv: str | os.PathLike[str],
        namespace: str,
        *,
        tier: str | None = None,
        tier_prefix: Mapping[str, str] | None = None,
        dry_run: bool = False,
        overwrite: bool = False,
    ) -> ImportResult:
        """Imports a ``.env`` file (a path) or text: each variable becomes
        ``<namespace>/<NAME>``. ``tier_prefix`` maps variable-name prefixes to
        tiers (longest wins over ``tier``). All or nothing."""
        call = Requests.import_env(
            read_dotenv(dotenv),
            namespace,
            tier=tier,
            tier_prefix=tier_prefix,
            dry_run=dry_run,
            overwrite=overwrite,
        )
        return self._run(call)

    def request_token(
        self,
        scope: str,
        ttl_seconds: int | float | timedelta,
        max_uses: int | None = None,
        description: str | None = None,
    ) -> Token:
        """Asks for a scoped bearer token (``secrets:<read|write|list>:<path or
        prefix/*>``). Raises ``ApprovalPendingError`` (with ``approval_id``)
        when the request waits for a human's approval."""
        return self._run(Requests.request_token(scope, ttl_seconds, max_uses, description))


class AsyncVaultClient:
    """The asynchronous twin of ``VaultClient`` (same arguments, same methods,
    awaited). Use it as an async context manager, or call ``aclose()``."""

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        token: str | None = None,
        *,
        tenant: str | None = None,
        backoff_base: float = 0.1,
        backoff_max: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = _Settings(
            socket, timeout, retries, token, backoff_base, backoff_max, tenant
        )
        if transport is None:
            transport = httpx.AsyncHTTPTransport(uds=self._settings.socket)
        self._http = httpx.AsyncClient(transport=transport, **make_client_kwargs(timeout, token))

    @property
    def socket(self) -> str:
        """The Unix socket this client talks to."""
        return self._settings.socket

    @property
    def tenant(self) -> str | None:
        """The tenant this client was made for, if one was given."""
        return self._settings.tenant

    def __repr__(self) -> str:
        auth = ", token=<redacted>" if self._settings.token else ""
        return f"AsyncVaultClient(socket={self.socket!r}{auth})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncVaultClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self, call: Call[T]) -> T:
        settings = self._settings
        if not settings.tenant_checked and settings.tenant is not None:
            health = await self._send(Requests.health())
            mismatch = tenant_mismatch(settings.tenant, health, settings.socket)
            if mismatch is not None:
                raise mismatch
            settings.tenant_checked = True
        return await self._send(call)

    async def _send(self, call: Call[T]) -> T:
        retry = self._settings.retry
        attempt = 0
        while True:
            attempt += 1
            outcome: Outcome[T]
            try:
                response = await self._http.send(call.build(self._http))
            except httpx.HTTPError as exc:
                outcome = classify_exception(call, exc, attempt, self._settings.socket)
            else:
                outcome = classify_response(call, response, attempt)
            if outcome.error is None:
                return cast(T, outcome.value)
            if outcome.retryable and attempt <= retry.retries:
                delay = retry.delay(attempt - 1)
                log_retry(call, outcome.error.code, attempt, retry.retries, delay)
                await anyio.sleep(delay)
                continue
            raise outcome.error

    # ---- reading ---------------------------------------------------------

    async def health(self) -> Health:
        """``GET /v1/health``."""
        return await self._run(Requests.health())

    async def redact(self, text: str) -> Redaction:
        """``text`` with every secret value this caller may read, and its
        encodings, replaced (see ``VaultClient.redact``)."""
        return await self._run(Requests.redact(text))

    async def get(self, path: str, *, version: int | None = None) -> str:
        """The value of the secret at ``path`` (its active version, or ``version``)."""
        return (await self.get_secret(path, version=version)).value

    async def get_secret(self, path: str, *, version: int | None = None) -> Secret:
        """The secret at ``path`` with its metadata."""
        return await self._run(Requests.get_secret(path, version))

    @overload
    async def get_or_default(self, path: str, default: None = None) -> str | None: ...

    @overload
    async def get_or_default(self, path: str, default: D) -> str | D: ...

    async def get_or_default(self, path: str, default: Any = None) -> Any:
        """The value at ``path``, or ``default`` when there is no secret there
        (``not_found`` only: any other error, ``expired`` included, is raised)."""
        try:
            return await self.get(path)
        except SecretNotFoundError:
            return default

    async def get_json(self, path: str, *, version: int | None = None) -> Any:
        """The value at ``path`` parsed as JSON (``SecretFormatError`` if it is not)."""
        return decode_json_value(await self.get_secret(path, version=version))

    async def exists(self, path: str) -> bool:
        """Whether a secret exists at ``path`` (``HEAD``; nothing is decrypted)."""
        return await self._run(Requests.exists(path))

    async def list(
        self, prefix: str = "", *, page_size: int | None = None
    ) -> builtins.list[SecretMetadata]:
        """Every secret under ``prefix``, following ``next_cursor`` until the
        listing is exhausted: path strings (``SecretMetadata`` is a ``str``
        subclass) carrying their metadata (``.version``, ``.tier``, ...)."""
        return [m async for m in self.iter_list(prefix, page_size=page_size)]

    async def iter_list(
        self, prefix: str = "", *, page_size: int | None = None
    ) -> AsyncIterator[SecretMetadata]:
        """Like ``list()``, one page at a time."""
        cursor: str | None = None
        for _ in range(_LIST_GUARD):
            page = await self._run(Requests.list_page(prefix, page_size, cursor))
            for item in page.items:
                yield item
            if page.next_cursor is None or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    async def batch(self, paths: Iterable[str]) -> BatchResult:
        """Reads several secrets in one request; each path succeeds or fails on
        its own (see ``BatchResult``). Duplicate paths are sent once."""
        return await self._run(Requests.batch(unique(paths)))

    async def versions(self, path: str) -> builtins.list[VersionInfo]:
        """Every stored version of the secret, oldest first."""
        return await self._run(Requests.versions(path))

    # ---- writing ---------------------------------------------------------

    async def put(
        self,
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
        """Writes ``value`` as the new active version and returns its number
        (see ``VaultClient.put``)."""
        body = put_body(
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
        return await self._run(Requests.put(path, body))

    async def put_json(
        self,
        path: str,
        value: Any,
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
        """``put()`` of ``value`` serialized as compact JSON."""
        return await self.put(
            path,
            encode_json_value(value),
            metadata,
            tier=tier,
            type=type,
            description=description,
            tags=tags,
            expires_at=expires_at,
            scope=scope,
            cas=cas,
        )

    async def update(
        self,
        path: str,
        *,
        type: str | _Unset | None = UNSET,
        tier: str | _Unset | None = UNSET,
        description: str | _Unset | None = UNSET,
        tags: Mapping[str, str] | _Unset | None = UNSET,
        expires_at: TimeArg | _Unset | None = UNSET,
        scope: str | _Unset | None = UNSET,
    ) -> SecretMetadata:
        """Changes metadata without a new version (see ``VaultClient.update``)."""
        body = update_body(
            type=type,
            tier=tier,
            description=description,
            tags=tags,
            expires_at=expires_at,
            scope=scope,
        )
        return await self._run(Requests.update(path, body))

    async def delete(self, path: str) -> None:
        """Deletes the secret, its versions and its grants."""
        await self._run(Requests.delete(path))

    async def rollback(self, path: str, version: int) -> int:
        """Makes ``version`` the active version again; returns it."""
        return await self._run(Requests.rollback(path, version))

    async def rotate(
        self,
        path: str,
        value: str,
        grace_period_seconds: int | float | timedelta | None = None,
    ) -> RotationResult:
        """Writes ``value`` as the new active version; the old one stays
        readable by number for the grace period (the sidecar's default if None)."""
        return await self._run(Requests.rotate(path, value, grace_period_seconds))

    async def import_env(
        self,
        dotenv: str | os.PathLike[str],
        namespace: str,
        *,
        tier: str | None = None,
        tier_prefix: Mapping[str, str] | None = None,
        dry_run: bool = False,
        overwrite: bool = False,
    ) -> ImportResult:
        """Imports a ``.env`` file or text (see ``VaultClient.import_env``)."""
        call = Requests.import_env(
            read_dotenv(dotenv),
            namespace,
            tier=tier,
            tier_prefix=tier_prefix,
            dry_run=dry_run,
            overwrite=overwrite,
        )
        return await self._run(call)

    async def request_token(
        self,
        scope: str,
        ttl_seconds: int | float | timedelta,
        max_uses: int | None = None,
        description: str | None = None,
    ) -> Token:
        """Asks for a scoped bearer token; ``ApprovalPendingError`` when it
        waits for approval (see ``VaultClient.request_token``)."""
        return await self._run(Requests.request_token(scope, ttl_seconds, max_uses, description))
