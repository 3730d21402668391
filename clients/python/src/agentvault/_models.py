"""The contract's data shapes as frozen dataclasses, and RFC 3339 time handling.

Whatever holds a secret value or a token (``Secret``, ``Token``,
``BatchResult``) leaves it out of ``repr()`` and ``str()``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from ._errors import VaultError

__all__ = [
    "BatchResult",
    "Health",
    "ImportResult",
    "ImportedSecret",
    "Redaction",
    "RedactionFinding",
    "RotationResult",
    "Secret",
    "SecretMetadata",
    "Token",
    "VersionInfo",
    "format_time",
    "parse_time",
]

_RFC3339 = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<frac>\d+))?(?P<tz>[Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: str) -> datetime:
    """An aware UTC ``datetime`` from an RFC 3339 string.

    Accepts ``Z`` and numeric offsets and fractions of any length (the sidecar
    sends nanoseconds; Python keeps microseconds, so the rest is truncated).
    A time without an offset is taken as UTC.
    """
    m = _RFC3339.match(value.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {value!r}")
    frac = (m.group("frac") or "")[:6].ljust(6, "0")
    tz = m.group("tz") or "Z"
    if tz in ("Z", "z"):
        tz = "+00:00"
    elif ":" not in tz:
        tz = f"{tz[:3]}:{tz[3:]}"
    parsed = datetime.fromisoformat(f"{m.group('date')}T{m.group('time')}.{frac}{tz}")
    return parsed.astimezone(timezone.utc)


def parse_optional_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 string, got {type(value).__name__}")
    return parse_time(value)


def format_time(value: datetime | timedelta | str) -> str:
    """RFC 3339 UTC text for a time to send.

    A ``timedelta`` is taken as "that long from now"; a naive ``datetime`` is
    taken as UTC; a string is sent as it is (the sidecar validates it).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, timedelta):
        value = datetime.now(timezone.utc) + value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    text = value.astimezone(timezone.utc).isoformat()
    return text.replace("+00:00", "Z")


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tags(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True)
class SecretMetadata(str):
    """A secret without its value, as ``list`` and ``update`` return it.

    It is also the ``str`` of its path, so ``list()`` answers path strings
    (``"db/password" in vault.list("db/")``, ``print(p)``, ``open(p)``) that
    carry their metadata as attributes. It equals another ``SecretMetadata``
    only when every field does, and a plain ``str`` when that is its path.
    """

    path: str
    version: int
    type: str
    tier: str
    description: str | None
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    scope: str | None

    def __new__(cls, path: str, *args: Any, **kwargs: Any) -> SecretMetadata:
        return super().__new__(cls, path)

    # Equal objects have equal paths, so the path's hash is consistent with
    # both equalities (the dataclass's and str's).
    __hash__ = str.__hash__

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SecretMetadata:
        return cls(**_metadata_fields(data))


def _metadata_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "path": str(data["path"]),
        "version": int(data["version"]),
        "type": str(data.get("type") or "custom"),
        "tier": str(data.get("tier") or "sensitive"),
        "description": _str_or_none(data.get("description")),
        "tags": _tags(data.get("tags")),
        "created_at": parse_time(data["created_at"]),
        "updated_at": parse_time(data["updated_at"]),
        "expires_at": parse_optional_time(data.get("expires_at")),
        "scope": _str_or_none(data.get("scope")),
    }


@dataclass(frozen=True)
class Secret:
    """A secret with its value. ``repr()`` and ``str()`` never show the value;
    read it from ``.value``."""

    path: str
    value: str = field(repr=False)
    version: int
    type: str
    tier: str
    description: str | None
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    scope: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Secret:
        return cls(value=str(data["value"]), **_metadata_fields(data))

    @property
    def metadata(self) -> SecretMetadata:
        """The same secret without its value."""
        return SecretMetadata(
            path=self.path,
            version=self.version,
            type=self.type,
            tier=self.tier,
            description=self.description,
            tags=dict(self.tags),
            created_at=self.created_at,
            updated_at=self.updated_at,
            expires_at=self.expires_at,
            scope=self.scope,
        )

    def __str__(self) -> str:
        return f"Secret(path={self.path!r}, version={self.version}, value=<redacted>)"


@dataclass(frozen=True)
class VersionInfo:
    """One stored version of a secret (``versions()``)."""

    version: int
    created_at: datetime
    active: bool
    #: When a rotation's grace period for this version ends (contract extension).
    expires_at: datetime | None = None

    @property
    def is_active(self) -> bool:
        """``active`` under the name agentsecretstore uses."""
        return self.active

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> VersionInfo:
        return cls(
            version=int(data["version"]),
            created_at=parse_time(data["created_at"]),
            active=bool(data.get("active", False)),
            expires_at=parse_optional_time(data.get("expires_at")),
        )


@dataclass(frozen=True)
class RotationResult:
    """What ``rotate()`` did: the new active version, and until when the old
    one stays readable by number."""

    new_version: int
    old_version: int
    old_expires_at: datetime

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RotationResult:
        return cls(
            new_version=int(data["new_version"]),
            old_version=int(data["old_version"]),
            old_expires_at=parse_time(data["old_expires_at"]),
        )


@dataclass(frozen=True)
class RedactionFinding:
    """One value replaced by ``redact()``: which secret version, where, and
    in which encoding (``raw``, ``base64``, ``hex``, ``url``, ``json``, ...).

    ``start`` and ``end`` are offsets in bytes into the UTF-8 encoding of
    the original text (``text.encode()[start:end]``), as the sidecar counts
    them; ``char_span(text)`` converts them to ``str`` indices.
    """

    path: str
    version: int
    start: int
    end: int
    form: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RedactionFinding:
        return cls(
            path=str(data["path"]),
            version=int(data["version"]),
            start=int(data["start"]),
            end=int(data["end"]),
            form=str(data["form"]),
        )

    def char_span(self, text: str) -> tuple[int, int]:
        """``(start, end)`` as indices into ``text`` (the original, unredacted str)."""
        raw = text.encode()
        return len(raw[: self.start].decode()), len(raw[: self.end].decode())


@dataclass(frozen=True)
class Redaction:
    """What ``redact()`` answered: the text with every secret value the
    caller may read (and its encodings) replaced by ``[REDACTED:<path>]``,
    and what was replaced. Unpacks as ``text, findings = vault.redact(t)``.
    Neither field holds a value: the text is the redacted one."""

    text: str
    findings: tuple[RedactionFinding, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Redaction:
        return cls(
            text=str(data["text"]),
            findings=tuple(RedactionFinding.from_json(f) for f in data.get("findings") or []),
        )

    def __iter__(self) -> Iterator[Any]:
        return iter((self.text, self.findings))

    @property
    def redacted(self) -> bool:
        """Whether anything was replaced."""
        return bool(self.findings)


@dataclass(frozen=True)
class ImportedSecret:
    """One variable of an ``.env`` import: where it went and what happened
    (``created``, ``updated`` or ``skipped``)."""

    path: str
    tier: str
    action: str


@dataclass(frozen=True)
class ImportResult:
    """The report of ``import_env()``."""

    created: int
    updated: int
    skipped: int
    secrets: list[ImportedSecret]
    dry_run: bool = False
    #: Variables assigned more than once, with their line numbers (the last won).
    duplicates: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, dry_run: bool) -> ImportResult:
        duplicates = data.get("duplicates")
        return cls(
            created=int(data.get("created", 0)),
            updated=int(data.get("updated", 0)),
            skipped=int(data.get("skipped", 0)),
            secrets=[
                ImportedSecret(
                    path=str(s["path"]), tier=str(s.get("tier", "")), action=str(s["action"])
                )
                for s in data.get("secrets") or []
            ],
            dry_run=bool(data.get("dry_run", dry_run)),
            duplicates=(
                {str(k): [int(n) for n in v] for k, v in duplicates.items()}
                if isinstance(duplicates, dict)
                else {}
            ),
        )


@dataclass(frozen=True)
class Token:
    """A scoped bearer token. ``repr()`` and ``str()`` hide the token itself;
    pass ``.token`` as ``VaultClient(token=...)``."""

    token: str = field(repr=False)
    scope: str
    expires_at: datetime
    max_uses: int | None
    uses_remaining: int | None
    approval_status: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Token:
        def _int(v: Any) -> int | None:
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        return cls(
            token=str(data["token"]),
            scope=str(data["scope"]),
            expires_at=parse_time(data["expires_at"]),
            max_uses=_int(data.get("max_uses")),
            uses_remaining=_int(data.get("uses_remaining")),
            approval_status=_str_or_none(data.get("approval_status")),
        )

    def __str__(self) -> str:
        expires = self.expires_at.isoformat()
        return f"Token(scope={self.scope!r}, expires_at={expires}, token=<redacted>)"


@dataclass(frozen=True)
class Health(Mapping[str, str]):
    """``GET /v1/health``: typed attributes, and a read-only mapping of the
    same fields (``health["status"]``, ``dict(health)``)."""

    status: str
    version: str
    identity: str
    storage: str
    #: The tenant the sidecar serves (older sidecars: read from ``identity``).
    tenant: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        identity = str(data.get("identity", ""))
        tenant = data.get("tenant")
        return cls(
            status=str(data.get("status", "")),
            version=str(data.get("version", "")),
            identity=identity,
            storage=str(data.get("storage", "")),
            tenant=tenant if isinstance(tenant, str) else _tenant_of(identity),
        )

    def __getitem__(self, key: str) -> str:
        if key in _HEALTH_KEYS:
            value: str = getattr(self, key)
            return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(_HEALTH_KEYS)

    def __len__(self) -> int:
        return len(_HEALTH_KEYS)


_HEALTH_KEYS = ("status", "version", "identity", "storage", "tenant")


def _tenant_of(spiffe_id: str) -> str:
    """The tenant of an ID of the default pattern ``spiffe://td/agent/{tenant}/{agent}``."""
    parts = spiffe_id.removeprefix("spiffe://").split("/")
    return parts[2] if len(parts) >= 4 and parts[1] == "agent" else ""


@dataclass(frozen=True)
class BatchResult(Mapping[str, str]):
    """The answer of ``batch()``: each path succeeded or failed on its own.

    It is a read-only mapping of the paths that were read to their values
    (``result["db/password"]``, ``"db/password" in result``, ``dict(result)``);
    ``errors`` maps each failed path to the exception it would have raised on
    its own. Indexing a failed path raises that exception; ``raise_for_errors()``
    raises the first one. ``repr()`` shows paths only, never values.
    """

    secrets: dict[str, str] = field(repr=False)
    errors: dict[str, VaultError]
    request_id: str | None = None

    def __getitem__(self, path: str) -> str:
        try:
            return self.secrets[path]
        except KeyError:
            if path in self.errors:
                raise self.errors[path] from None
            raise

    def __iter__(self) -> Iterator[str]:
        return iter(self.secrets)

    def __len__(self) -> int:
        return len(self.secrets)

    @overload
    def get(self, path: str, /) -> str | None: ...

    @overload
    def get(self, path: str, /, default: str) -> str: ...

    @overload
    def get(self, path: str, /, default: Any) -> Any: ...

    def get(self, path: str, /, default: Any = None) -> Any:
        """The value at ``path``, or ``default`` if it was not read."""
        return self.secrets.get(path, default)

    @property
    def ok(self) -> bool:
        """True when every path was read."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raises the error of the first failed path, if any."""
        for error in self.errors.values():
            raise error

    def __repr__(self) -> str:
        return (
            f"BatchResult(secrets=<{len(self.secrets)} redacted: {sorted(self.secrets)!r}>, "
            f"errors={ {p: e.code for p, e in self.errors.items()}!r})"
        )

    __str__ = __repr__
