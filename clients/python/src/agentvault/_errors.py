"""Exceptions mirroring the contract's error table, and the one mapping from a
sidecar response to an exception.

No exception ever carries a secret value: messages come from the sidecar (which
never echoes values) or are written here, and the request that failed is not
attached.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx

if TYPE_CHECKING:
    from ._models import Token

__all__ = [
    "ApprovalPendingError",
    "AuthError",
    "ConflictError",
    "InvalidRequestError",
    "PayloadTooLargeError",
    "PolicyDeniedError",
    "RateLimitedError",
    "SecretExpiredError",
    "SecretFormatError",
    "SecretNotFoundError",
    "TenantMismatchError",
    "VaultError",
    "VaultUnavailableError",
]

REQUEST_ID_HEADER = "x-request-id"


class VaultError(Exception):
    """Base of every error the SDK raises.

    Attributes:
        code: the contract's error code (``not_found``, ``conflict``, ...), or
            ``connection_failed`` / ``invalid_response`` for failures that never
            got a contract answer.
        status: the HTTP status, or ``None`` when no response arrived.
        message: the human-readable message (never holds a secret value).
        request_id: the ``x-request-id`` of the request, when known.
        details: any further fields of the error body (e.g. ``reasons``).
        path: the secret path the failed call named, when it named one.
    """

    default_code: str = "error"
    default_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.status = status if status is not None else self.default_status
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})
        self.path: str | None = None

    def __str__(self) -> str:
        where = f" (status {self.status})" if self.status is not None else ""
        rid = f" [request_id={self.request_id}]" if self.request_id else ""
        return f"{self.code}: {self.message}{where}{rid}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r}, request_id={self.request_id!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructor arguments: rebuild from the instance dict so
        # the errors survive pickling (multiprocessing, concurrent.futures).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[VaultError], message: str, state: dict[str, Any]) -> VaultError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class InvalidRequestError(VaultError):
    """400 ``invalid_request``: bad JSON, bad path or bad field."""

    default_code = "invalid_request"
    default_status = 400


class AuthError(VaultError):
    """401 ``unauthenticated``: the bearer token is unknown, expired or used up."""

    default_code = "unauthenticated"
    default_status = 401


class PolicyDeniedError(VaultError):
    """403 ``policy_denied``: the policy said no; ``reasons`` lists why."""

    default_code = "policy_denied"
    default_status = 403

    @property
    def reasons(self) -> list[str]:
        reasons = self.details.get("reasons")
        if isinstance(reasons, list):
            return [str(r) for r in reasons]
        return []

    @property
    def required_scope(self) -> str | None:
        """The token scope that would cover the denied call
        (``secrets:<read|write|list>:<path>``), when the call named a path.
        Worked out by the client from the call; the policy may still want more
        (a role, an approval): read ``reasons``."""
        value = self.details.get("required_scope")
        return value if isinstance(value, str) else None


class SecretNotFoundError(VaultError):
    """404 ``not_found``: no such secret, version, grant or approval."""

    default_code = "not_found"
    default_status = 404


class ConflictError(VaultError):
    """409 ``conflict``: ``cas`` did not match the current version."""

    default_code = "conflict"
    default_status = 409


class SecretExpiredError(VaultError):
    """410 ``expired``: the secret's ``expires_at`` has passed."""

    default_code = "expired"
    default_status = 410


class PayloadTooLargeError(VaultError):
    """413 ``too_large``: the body or the value is over the sidecar's limit."""

    default_code = "too_large"
    default_status = 413


class RateLimitedError(VaultError):
    """429 ``rate_limited``: the caller is over its rate.

    ``retry_after`` is the number of seconds the ``Retry-After`` header asks to
    wait (``None`` when the header was absent or unreadable).
    """

    default_code = "rate_limited"
    default_status = 429

    @property
    def retry_after(self) -> float | None:
        value = self.details.get("retry_after")
        return float(value) if isinstance(value, (int, float)) else None


class VaultUnavailableError(VaultError):
    """503 ``unavailable`` (storage unreachable, nothing was written), or the
    sidecar could not be reached at all (``status`` is then ``None``).

    ``attempts`` is how many times the request was tried.
    """

    default_code = "unavailable"
    default_status = 503

    @property
    def attempts(self) -> int:
        value = self.details.get("attempts")
        return value if isinstance(value, int) else 1


class TenantMismatchError(VaultError):
    """The client was made for one tenant (``VaultClient(tenant=...)``) but
    the sidecar on its socket serves another; nothing was sent but
    ``GET /v1/health``."""

    default_code = "tenant_mismatch"
    default_status = None

    @property
    def expected(self) -> str:
        return str(self.details.get("expected", ""))

    @property
    def served(self) -> str:
        return str(self.details.get("served", ""))


class ApprovalPendingError(VaultError):
    """202 on a token request: it waits for a human's approval.

    ``approval_id`` names the pending approval.
    """

    default_code = "approval_pending"
    default_status = 202

    @property
    def approval_id(self) -> str:
        return str(self.details.get("approval_id", ""))

    @property
    def approval_status(self) -> str:
        return str(self.details.get("status", "pending"))

    @property
    def token(self) -> Token | None:
        """The token that becomes usable once the request is approved, when
        the sidecar sent one (its ``repr`` hides the secret part)."""
        return cast("Token | None", self.details.get("token"))


class SecretFormatError(VaultError, ValueError):
    """A secret's value is not in the format asked for (e.g. not JSON).

    Raised by the client itself; the message says where parsing failed but
    never quotes the value.
    """

    default_code = "invalid_format"
    default_status = None


_BY_CODE: dict[str, type[VaultError]] = {
    "invalid_request": InvalidRequestError,
    "unauthenticated": AuthError,
    "policy_denied": PolicyDeniedError,
    "not_found": SecretNotFoundError,
    "conflict": ConflictError,
    "expired": SecretExpiredError,
    "too_large": PayloadTooLargeError,
    "rate_limited": RateLimitedError,
    "unavailable": VaultUnavailableError,
}

_BY_STATUS: dict[int, type[VaultError]] = {
    cls.default_status: cls for cls in _BY_CODE.values() if cls.default_status is not None
}

_STATUS_OF_CODE: dict[str, int] = {
    code: cls.default_status for code, cls in _BY_CODE.items() if cls.default_status
}


def error_class(code: str | None, status: int | None) -> type[VaultError]:
    """The exception class for a contract code, falling back to the status."""
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    if status is not None and status in _BY_STATUS:
        return _BY_STATUS[status]
    return VaultError


def error_from_body(
    body: Mapping[str, Any],
    *,
    status: int | None = None,
    request_id: str | None = None,
) -> VaultError:
    """An exception from a contract error object ``{"code", "message", ...}``
    (used for whole responses and for the per-path errors of a batch)."""
    code = body.get("code")
    code = code if isinstance(code, str) else None
    message = body.get("message")
    message = message if isinstance(message, str) else "no message"
    if status is None and code is not None:
        status = _STATUS_OF_CODE.get(code)
    cls = error_class(code, status)
    details = {k: v for k, v in body.items() if k not in ("code", "message")}
    return cls(
        message,
        code=code or cls.default_code,
        status=status,
        request_id=request_id,
        details=details,
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds)


def error_from_response(response: httpx.Response) -> VaultError:
    """The exception for a response that is not the success the call expected.

    The body is read as a contract error; anything else (no body, as for HEAD,
    or a body that is not a contract error) falls back to the status, and its
    text is never copied into the message.
    """
    status = response.status_code
    request_id = response.headers.get(REQUEST_ID_HEADER)
    body: Any = None
    if response.content:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
    error_obj = body.get("error") if isinstance(body, dict) else None
    if isinstance(error_obj, dict):
        err = error_from_body(error_obj, status=status, request_id=request_id)
    else:
        cls = error_class(None, status)
        reason = response.reason_phrase or "unexpected response"
        err = cls(
            f"{reason} (the sidecar sent no contract error body)",
            code=cls.default_code if cls is not VaultError else f"http_{status}",
            status=status,
            request_id=request_id,
        )
    if isinstance(err, RateLimitedError):
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None:
            err.details["retry_after"] = retry_after
    return err
