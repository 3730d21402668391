"""Python SDK of agentvault: identity-scoped secrets served by the pod's
sidecar over a Unix socket.

    import agentvault

    key = agentvault.get("prod/openai/api-key")

    with agentvault.VaultClient() as vault:
        vault.put("prod/db/password", "hunter2", tier="critical")

The socket is ``$AGENTVAULT_SOCKET``, else ``/run/agentvault/agentvault.sock``.
Values never appear in ``repr()``, ``str()``, exceptions or logs.
"""

from ._client import AsyncVaultClient, VaultClient
from ._core import DEFAULT_SOCKET, SOCKET_ENV, UNSET, __version__
from ._decorators import secret, secrets_batch
from ._default import default_client, delete, get, put, redact, set_default_client
from ._errors import (
    ApprovalPendingError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    PayloadTooLargeError,
    PolicyDeniedError,
    RateLimitedError,
    SecretExpiredError,
    SecretFormatError,
    SecretNotFoundError,
    TenantMismatchError,
    VaultError,
    VaultUnavailableError,
)
from ._models import (
    BatchResult,
    Health,
    ImportedSecret,
    ImportResult,
    Redaction,
    RedactionFinding,
    RotationResult,
    Secret,
    SecretMetadata,
    Token,
    VersionInfo,
)

from ._logging import RedactingFilter
from .compat import AgentVault, ScopedToken, SecretTier, SecretType, SyncAgentVault
__all__ = [
    "AgentVault",
    "ScopedToken",
    "SecretTier",
    "SecretType",
    "SyncAgentVault",
    "DEFAULT_SOCKET",
    "SOCKET_ENV",
    "UNSET",
    "ApprovalPendingError",
    "AsyncVaultClient",
    "AuthError",
    "BatchResult",
    "ConflictError",
    "Health",
    "ImportResult",
    "ImportedSecret",
    "InvalidRequestError",
    "PayloadTooLargeError",
    "PolicyDeniedError",
    "RateLimitedError",
    "RedactingFilter",
    "Redaction",
    "RedactionFinding",
    "RotationResult",
    "Secret",
    "SecretExpiredError",
    "SecretFormatError",
    "SecretMetadata",
    "SecretNotFoundError",
    "TenantMismatchError",
    "Token",
    "VaultClient",
    "VaultError",
    "VaultUnavailableError",
    "VersionInfo",
    "__version__",
    "default_client",
    "delete",
    "get",
    "put",
    "redact",
    "secret",
    "secrets_batch",
    "set_default_client",
]
