"""What the sync and async clients share: the socket, requests as plain data,
response parsing, retry policy and logging. Only sending and sleeping differ
between the two clients.
"""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, Generic, TypeVar
from urllib.parse import quote

import httpx

from ._errors import (
    REQUEST_ID_HEADER,
    ApprovalPendingError,
    SecretFormatError,
    TenantMismatchError,
    VaultError,
    VaultUnavailableError,
    error_from_body,
    error_from_response,
)
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
    format_time,
)

__version__ = "0.1.0"

logger = logging.getLogger("agentvault")

DEFAULT_SOCKET: Final = "/run/agentvault/agentvault.sock"
SOCKET_ENV: Final = "AGENTVAULT_SOCKET"
BASE_URL: Final = "http://agentvault"
USER_AGENT: Final = f"agentvault-python/{__version__}"

#: The metadata fields a write may set besides the value (``put(metadata=...)``);
#: any other key of ``metadata`` is user metadata, kept as a tag.
METADATA_FIELDS: Final = frozenset({"type", "tier", "description", "tags", "expires_at", "scope"})

T = TypeVar("T")


class _Unset:
    """Marks an argument that was not given (so ``None`` can mean "clear")."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Final = _Unset()

TimeArg = datetime | timedelta | str


def resolve_socket(socket: str | os.PathLike[str] | None) -> str:
    """The socket path: the argument, else ``$AGENTVAULT_SOCKET``, else the default."""
    if socket is not None:
        return os.fspath(socket)
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def quote_path(path: str) -> str:
    """A secret path as a URL path, byte for byte.

    Characters outside the contract's set are percent-encoded, and so are the
    dots of ``.`` and ``..`` segments: HTTP clients resolve dot segments, which
    would silently turn ``a/../b`` into ``b``. The sidecar rejects such paths
    with ``invalid_request``, which is the answer the caller should get.
    """
    segments = []
    for segment in path.split("/"):
        if segment in (".", ".."):
            segments.append(segment.replace(".", "%2E"))
        else:
            segments.append(quote(segment, safe=""))
    return "/".join(segments)


def seconds(value: int | float | timedelta) -> int:
    if isinstance(value, timedelta):
        return int(value.total_seconds())
    return int(value)


def identifier_for(path: str) -> str:
    """The keyword argument name ``@secrets_batch`` gives a path:
    ``openai/api-key`` becomes ``openai_api_key``."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in path)


IDEMPOTENCY_KEY_HEADER: Final = "idempotency-key"


@dataclass
class Call(Generic[T]):
    """One logical API call: the request to send and how to read the answer."""

    method: str
    url: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    params: dict[str, str] = field(default_factory=dict)
    #: Statuses that are a success for this call; anything else is an error.
    ok: tuple[int, ...] = (200,)
    #: Safe to send again after the connection broke mid-request (no write).
    idempotent: bool = False
    #: A 202 answer means "waits for approval" (token requests).
    may_be_pending: bool = False
    #: The x-request-id sent with every attempt of this call.
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: The secret path the call names, copied onto its errors (``.path``).
    path: str | None = None
    #: The policy action on ``path`` (``read``, ``write``, ``list``): a denial
    #: names the token scope that would cover it (``.required_scope``).
    action: str | None = None
    #: A bearer token for this call only, instead of the client's.
    token: str | None = None
    #: The Idempotency-Key every attempt of a write sends: one per logical
    #: call, so a retry after a 503 or a broken connection is done at most once.
    idempotency_key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def build(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        body: bytes | None = None
        headers = {REQUEST_ID_HEADER: self.request_id}
        if self.method not in ("GET", "HEAD"):
            headers[IDEMPOTENCY_KEY_HEADER] = self.idempotency_key
        if self.token is not None:
            headers["authorization"] = f"Bearer {self.token}"
        if self.json is not None:
            body = json.dumps(self.json, separators=(",", ":")).encode()
            headers["content-type"] = "application/json"
        return client.build_request(
            self.method,
            self.url,
            params=self.params or None,
            content=body,
            headers=headers,
        )


# Connection failures: the request never reached the sidecar, so any method may
# be tried again.
_NOT_SENT: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)
# The connection broke after (part of) the request went out: only reads may be
# tried again, since a write may have happened.
_MAYBE_SENT: tuple[type[Exception], ...] = (
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on connection failures and 503 only, with jittered exponential
    backoff: attempt ``n`` (from 0) waits a uniformly random time between half
    and all of ``min(backoff_max, backoff_base * 2**n)``."""

    retries: int = 3
    backoff_base: float = 0.1
    backoff_max: float = 2.0

    def delay(self, attempt: int) -> float:
        cap = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        return cap / 2 + random.uniform(0, cap / 2)


class Outcome(Generic[T]):
    """What one attempt produced: a result, a final error, or a retryable one."""

    __slots__ = ("error", "retryable", "value")

    def __init__(
        self, value: T | None = None, error: VaultError | None = None, retryable: bool = False
    ) -> None:
        self.value = value
        self.error = error
        self.retryable = retryable


def unreachable_hint(socket: str | None) -> str:
    """Why a socket could not be reached and how to get a sidecar onto it."""
    if socket is None:
        return "could not reach the agentvault sidecar"
    if not os.path.exists(socket):
        why = "no such socket"
    elif not stat.S_ISSOCK(os.stat(socket).st_mode):
        why = "the path is not a socket"
    else:
        why = "nothing listens on it (a stale socket of a stopped sidecar?)"
    return (
        f"could not reach the agentvault sidecar at {socket} ({why}); "
        f"start one with `agentvault dev --socket {socket}`, or point "
        f"${SOCKET_ENV} (or socket=...) at a running sidecar"
    )


def transport_failure(
    call: Call[Any], exc: httpx.HTTPError, attempts: int, socket: str | None = None
) -> VaultError:
    """A ``VaultUnavailableError`` for a failure to talk to the sidecar at all;
    the message names the socket that was tried and how to start a sidecar.

    The httpx exception is not chained: it references the request, whose body
    may hold a secret value.
    """
    not_sent = isinstance(exc, _NOT_SENT)
    if not_sent:
        message = f"{unreachable_hint(socket)} [{type(exc).__name__}: {exc}]"
    else:
        message = f"the connection to the agentvault sidecar broke ({type(exc).__name__}: {exc})"
    error = VaultUnavailableError(
        message,
        code="connection_failed" if not_sent else "transport_error",
        request_id=call.request_id,
        details={"attempts": attempts},
    )
    error.status = None  # no HTTP answer at all
    error.path = call.path
    return error


def classify_exception(
    call: Call[Any], exc: httpx.HTTPError, attempts: int, socket: str | None = None
) -> Outcome[Any]:
    retryable = isinstance(exc, _NOT_SENT) or (call.idempotent and isinstance(exc, _MAYBE_SENT))
    return Outcome(error=transport_failure(call, exc, attempts, socket), retryable=retryable)


def locate(call: Call[Any], error: VaultError) -> VaultError:
    """Names the call's path (and, for a denial, the scope that would cover
    it) on an error."""
    if error.path is None:
        error.path = call.path
    if call.path is not None and call.action is not None:
        target = call.path
        if call.action == "list":
            target = f"{target}*" if target.endswith("/") else f"{target}/*"
        error.details.setdefault("required_scope", f"secrets:{call.action}:{target}")
    return error


def classify_response(call: Call[T], response: httpx.Response, attempts: int) -> Outcome[T]:
    logger.debug(
        "agentvault %s %s -> %d (request_id=%s, attempt %d)",
        call.method,
        call.url,
        response.status_code,
        response.headers.get(REQUEST_ID_HEADER, call.request_id),
        attempts,
    )
    if response.status_code in call.ok:
        try:
            return Outcome(value=call.parse(response))
        except VaultError as e:
            return Outcome(error=locate(call, e))
        except (ValueError, KeyError, TypeError) as e:
            # Never quote the body: it may hold a value.
            return Outcome(
                error=VaultError(
                    f"unexpected response body for {call.method} {call.url} ({type(e).__name__})",
                    code="invalid_response",
                    status=response.status_code,
                    request_id=response.headers.get(REQUEST_ID_HEADER),
                )
            )
    if call.may_be_pending and response.status_code == 202:
        return Outcome(error=approval_pending(response))
    error = locate(call, error_from_response(response))
    if isinstance(error, VaultUnavailableError):
        error.details["attempts"] = attempts
        return Outcome(error=error, retryable=True)
    return Outcome(error=error)


def tenant_mismatch(expected: str, health: Health, socket: str) -> TenantMismatchError | None:
    """The error for a sidecar that serves another tenant than the client was
    made for, or None when it serves ``expected``."""
    if health.tenant == expected:
        return None
    served = health.tenant or "an unknown tenant"
    return TenantMismatchError(
        f"this client is for tenant `{expected}`, but the sidecar at {socket} serves "
        f"`{served}` (identity {health.identity}); use the socket of `{expected}`'s sidecar",
        details={"expected": expected, "served": health.tenant, "identity": health.identity},
    )


def approval_pending(response: httpx.Response) -> ApprovalPendingError:
    """The exception for a 202 answer to a token request."""
    try:
        body = json.loads(response.content) if response.content else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    approval_id = body.get("approval_id")
    details: dict[str, Any] = {
        "approval_id": approval_id if isinstance(approval_id, str) else "",
        "status": body.get("status", "pending"),
        "token": None,
    }
    if isinstance(body.get("token"), str):
        # The sidecar also sends the token that becomes usable once approved.
        try:
            details["token"] = Token.from_json(body)
        except (KeyError, TypeError, ValueError):
            pass
    return ApprovalPendingError(
        f"token request waits for approval {details['approval_id']}",
        request_id=response.headers.get(REQUEST_ID_HEADER),
        details=details,
    )


def log_retry(call: Call[Any], code: str, attempt: int, retries: int, delay: float) -> None:
    logger.info(
        "agentvault %s %s failed (%s); retry %d/%d in %.2fs (request_id=%s)",
        call.method,
        call.url,
        code,
        attempt,
        retries,
        delay,
        call.request_id,
    )


def make_client_kwargs(timeout: float | httpx.Timeout, token: str | None) -> dict[str, Any]:
    headers = {"user-agent": USER_AGENT, "accept": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return {"base_url": BASE_URL, "timeout": timeout, "headers": headers}


# ---- response readers -------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    return json.loads(response.content)


def _json_object(response: httpx.Response) -> dict[str, Any]:
    data = _json(response)
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object")
    return data


def _version(response: httpx.Response) -> int:
    return int(_json_object(response)["version"])


def _secret(response: httpx.Response) -> Secret:
    return Secret.from_json(_json_object(response))


def _metadata(response: httpx.Response) -> SecretMetadata:
    return SecretMetadata.from_json(_json_object(response))


def _none(response: httpx.Response) -> None:
    return None


def _exists(response: httpx.Response) -> bool:
    return response.status_code == 200


def _versions(response: httpx.Response) -> list[VersionInfo]:
    data = _json(response)
    if not isinstance(data, list):
        raise TypeError("expected a JSON array")
    return [VersionInfo.from_json(v) for v in data]


def _rotation(response: httpx.Response) -> RotationResult:
    return RotationResult.from_json(_json_object(response))


def _token(response: httpx.Response) -> Token:
    return Token.from_json(_json_object(response))


def _redaction(response: httpx.Response) -> Redaction:
    return Redaction.from_json(_json_object(response))


def _health(response: httpx.Response) -> Health:
    return Health.from_json(_json_object(response))


@dataclass(frozen=True)
class Page:
    items: list[SecretMetadata]
    next_cursor: str | None


def _page(response: httpx.Response) -> Page:
    data = _json_object(response)
    cursor = data.get("next_cursor")
    return Page(
        items=[SecretMetadata.from_json(m) for m in data.get("items") or []],
        next_cursor=cursor if isinstance(cursor, str) and cursor else None,
    )


def _batch(response: httpx.Response) -> BatchResult:
    data = _json_object(response)
    request_id = response.headers.get(REQUEST_ID_HEADER)
    secrets = {str(k): str(v) for k, v in (data.get("secrets") or {}).items()}
    errors: dict[str, VaultError] = {}
    for path, body in (data.get("errors") or {}).items():
        errors[str(path)] = error_from_body(
            body if isinstance(body, dict) else {}, request_id=request_id
        )
    return BatchResult(secrets=secrets, errors=errors, request_id=request_id)


# ---- request builders -------------------------------------------------------


def secret_url(path: str) -> str:
    return f"/v1/secrets/{quote_path(path)}"


def put_body(
    value: str,
    metadata: Mapping[str, Any] | None,
    *,
    tier: str | None,
    type: str | None,
    description: str | None,
    tags: Mapping[str, str] | None,
    expires_at: TimeArg | None,
    scope: str | None,
    cas: int | None,
) -> dict[str, Any]:
    if not isinstance(value, str):
        raise TypeError(f"a secret value must be a str, not {type_name(value)}")
    fields: dict[str, Any] = {}
    user_tags: dict[str, str] = {}
    if metadata:
        for key, meta_value in metadata.items():
            if not isinstance(key, str):
                raise TypeError(f"a metadata key must be a str, not {type_name(key)}")
            if key in METADATA_FIELDS:
                if meta_value is not None:
                    fields[key] = meta_value
            else:
                user_tags[key] = tag_value(key, meta_value)
    if user_tags:
        # User metadata is kept as tags; a `tags` mapping (in metadata or as
        # the keyword) wins over a key of the same name.
        given = tags if tags is not None else fields.get("tags")
        tags = {**user_tags, **dict(given or {})}
    explicit = {
        "tier": tier,
        "type": type,
        "description": description,
        "tags": tags,
        "expires_at": expires_at,
        "scope": scope,
    }
    fields.update({k: v for k, v in explicit.items() if v is not None})
    body: dict[str, Any] = {"value": value}
    for key, field_value in fields.items():
        if key == "expires_at":
            body[key] = format_time(field_value)
        elif key == "tags":
            body[key] = {str(k): str(v) for k, v in dict(field_value).items()}
        else:
            body[key] = field_value
    if cas is not None:
        body["cas"] = int(cas)
    return body


def type_name(value: object) -> str:
    return type(value).__name__


def tag_value(key: str, value: object) -> str:
    """User metadata as tag text: strings as they are, numbers and booleans
    written out; anything else is refused (it would not come back as itself)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    raise TypeError(
        f"metadata `{key}` must be a str, int, float or bool (it is kept as a tag), "
        f"not {type_name(value)}"
    )


def update_body(
    *,
    type: str | _Unset | None,
    tier: str | _Unset | None,
    description: str | _Unset | None,
    tags: Mapping[str, str] | _Unset | None,
    expires_at: TimeArg | _Unset | None,
    scope: str | _Unset | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for key, value in (
        ("type", type),
        ("tier", tier),
        ("description", description),
        ("scope", scope),
    ):
        if value is not UNSET and value is not None:
            body[key] = value
    if tags is not UNSET and tags is not None:
        assert not isinstance(tags, _Unset)
        body["tags"] = {str(k): str(v) for k, v in dict(tags).items()}
    if expires_at is not UNSET:
        assert not isinstance(expires_at, _Unset)
        # None clears the expiry (the sidecar tells null from absent).
        body["expires_at"] = None if expires_at is None else format_time(expires_at)
    return body


def read_dotenv(source: str | os.PathLike[str]) -> str:
    """The text of an ``.env`` import: a path-like is read as a file; a ``str``
    is a file name when it names an existing file or holds neither ``=`` nor a
    newline, otherwise it is the ``.env`` text itself."""
    if isinstance(source, os.PathLike):
        return Path(source).read_text(encoding="utf-8")
    if "\n" not in source and (os.path.isfile(source) or "=" not in source):
        return Path(source).read_text(encoding="utf-8")
    return source


def unique(paths: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for p in paths:
        if not isinstance(p, str):
            raise TypeError(f"a secret path must be a str, not {type_name(p)}")
        seen.setdefault(p, None)
    return list(seen)


class Requests:
    """Builds the ``Call`` of every endpoint; the clients only run them."""

    @staticmethod
    def health() -> Call[Health]:
        return Call("GET", "/v1/health", _health, idempotent=True)

    @staticmethod
    def get_secret(path: str, version: int | None = None) -> Call[Secret]:
        params = {"version": str(int(version))} if version is not None else {}
        return Call(
            "GET",
            secret_url(path),
            _secret,
            params=params,
            idempotent=True,
            path=path,
            action="read",
        )

    @staticmethod
    def exists(path: str) -> Call[bool]:
        return Call(
            "HEAD",
            secret_url(path),
            _exists,
            ok=(200, 404),
            idempotent=True,
            path=path,
            action="read",
        )

    @staticmethod
    def put(path: str, body: dict[str, Any]) -> Call[int]:
        # The sidecar deduplicates every write by Idempotency-Key (PUT, PATCH,
        # DELETE, rollback, rotate, import), so a write whose connection broke
        # mid-request is safe to send again too.
        return Call(
            "PUT",
            secret_url(path),
            _version,
            json=body,
            path=path,
            action="write",
            idempotent=True,
        )

    @staticmethod
    def update(path: str, body: dict[str, Any]) -> Call[SecretMetadata]:
        return Call(
            "PATCH",
            secret_url(path),
            _metadata,
            json=body,
            path=path,
            action="write",
            idempotent=True,
        )

    @staticmethod
    def delete(path: str) -> Call[None]:
        return Call(
            "DELETE",
            secret_url(path),
            _none,
            ok=(200, 204),
            path=path,
            action="write",
            idempotent=True,
        )

    @staticmethod
    def list_page(prefix: str, limit: int | None, cursor: str | None) -> Call[Page]:
        params = {"prefix": prefix}
        if limit is not None:
            params["limit"] = str(int(limit))
        if cursor is not None:
            params["cursor"] = cursor
        return Call(
            "GET",
            "/v1/secrets",
            _page,
            params=params,
            idempotent=True,
            path=prefix or None,
            action="list",
        )

    @staticmethod
    def batch(paths: list[str]) -> Call[BatchResult]:
        # A read: safe to send again.
        return Call(
            "POST",
            "/v1/batch",
            _batch,
            json={"paths": paths},
            idempotent=True,
        )

    @staticmethod
    def versions(path: str) -> Call[list[VersionInfo]]:
        return Call(
            "GET",
            f"/v1/versions/{quote_path(path)}",
            _versions,
            idempotent=True,
            path=path,
            action="read",
        )

    @staticmethod
    def rollback(path: str, version: int) -> Call[int]:
        return Call(
            "POST",
            f"/v1/rollback/{quote_path(path)}",
            _version,
            json={"version": int(version)},
            path=path,
            action="write",
            idempotent=True,
        )

    @staticmethod
    def rotate(
        path: str, value: str, grace: int | float | timedelta | None
    ) -> Call[RotationResult]:
        if not isinstance(value, str):
            raise TypeError(f"a secret value must be a str, not {type_name(value)}")
        body: dict[str, Any] = {"value": value}
        if grace is not None:
            body["grace_period_seconds"] = seconds(grace)
        return Call(
            "POST",
            f"/v1/rotate/{quote_path(path)}",
            _rotation,
            json=body,
            path=path,
            action="write",
            idempotent=True,
        )

    @staticmethod
    def import_env(
        dotenv: str,
        namespace: str,
        *,
        tier: str | None,
        tier_prefix: Mapping[str, str] | None,
        dry_run: bool,
        overwrite: bool,
    ) -> Call[ImportResult]:
        body: dict[str, Any] = {"dotenv": dotenv, "namespace": namespace}
        if tier is not None:
            body["tier"] = tier
        if tier_prefix:
            body["tier_prefix"] = dict(tier_prefix)
        if dry_run:
            body["dry_run"] = True
        if overwrite:
            body["overwrite"] = True

        def parse(response: httpx.Response) -> ImportResult:
            return ImportResult.from_json(_json_object(response), dry_run=dry_run)

        return Call("POST", "/v1/import", parse, json=body, idempotent=True)

    @staticmethod
    def request_token(
        scope: str,
        ttl_seconds: int | float | timedelta,
        max_uses: int | None,
        description: str | None,
    ) -> Call[Token]:
        body: dict[str, Any] = {"scope": scope, "ttl_seconds": seconds(ttl_seconds)}
        if max_uses is not None:
            body["max_uses"] = int(max_uses)
        if description is not None:
            body["description"] = description
        return Call("POST", "/v1/tokens", _token, json=body, ok=(200, 201), may_be_pending=True)

    @staticmethod
    def redact(text: str) -> Call[Redaction]:
        """``POST /v1/redact``. Safe to resend: it changes nothing (a resent
        request may audit its findings twice)."""
        if not isinstance(text, str):
            raise TypeError(f"redact() takes a str, not {type_name(text)}")
        return Call("POST", "/v1/redact", _redaction, json={"text": text}, idempotent=True)


def decode_json_value(secret: Secret) -> Any:
    """A secret's value parsed as JSON, without ever quoting the value."""
    try:
        return json.loads(secret.value)
    except json.JSONDecodeError as e:
        raise SecretFormatError(
            f"secret `{secret.path}` (version {secret.version}) is not JSON: "
            f"{e.msg} at line {e.lineno} column {e.colno}"
        ) from None


def encode_json_value(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
