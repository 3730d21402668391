"""``RedactingFilter``: a ``logging.Filter`` that sends every log record's
text through the sidecar's leak guard (``POST /v1/redact``) before any
handler writes it.

    import logging, agentvault

    handler = logging.StreamHandler()
    handler.addFilter(agentvault.RedactingFilter())
    logging.basicConfig(handlers=[handler], level=logging.INFO)

Attach it to handlers (it then covers records from every logger that reaches
them) or to a logger (records created there only).
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Literal

from ._client import VaultClient
from ._errors import VaultError

__all__ = ["RedactingFilter"]

OnError = Literal["withhold", "drop", "pass"]

_WITHHELD = "[agentvault: log message withheld: redaction failed ({code})]"


class RedactingFilter(logging.Filter):
    """Scrubs log records through the sidecar.

    The record's message is formatted (``msg % args``) and redacted, then
    stored back as ``msg`` with no ``args``, so neither a value in the
    format string nor one in an argument survives; a traceback
    (``exc_info``, rendered once into ``exc_text``) and ``stack_info`` are
    redacted too. Records pass on; the filter never drops one unless told to.

    Args:
        client: the ``VaultClient`` to redact through; by default one on
            ``$AGENTVAULT_SOCKET``, made on first use and owned by the filter.
        name: as for ``logging.Filter``: only records of this logger (and
            its children) are looked at; others pass unchanged.
        on_error: when the sidecar cannot redact (unreachable, over a limit):
            ``"withhold"`` (default) replaces the message with a notice
            naming the error code, ``"drop"`` drops the record, ``"pass"``
            lets it through unredacted.

    One request per record, over the Unix socket (well under a millisecond
    for a log line); records the SDK itself logs while redacting pass
    unchanged (they never hold a value).
    """

    def __init__(
        self,
        client: VaultClient | None = None,
        *,
        name: str = "",
        on_error: OnError = "withhold",
    ) -> None:
        super().__init__(name)
        if on_error not in ("withhold", "drop", "pass"):
            raise ValueError("on_error must be 'withhold', 'drop' or 'pass'")
        self._client = client
        self._owns_client = client is None
        self._on_error = on_error
        self._lock = threading.Lock()
        self._busy = threading.local()

    def _vault(self) -> VaultClient:
        with self._lock:
            if self._client is None:
                self._client = VaultClient()
            return self._client

    def close(self) -> None:
        """Closes the client the filter made itself (not one it was given)."""
        with self._lock:
            if self._owns_client and self._client is not None:
                self._client.close()
                self._client = None

    def filter(self, record: logging.LogRecord) -> bool:
        if not super().filter(record):
            return True
        if getattr(self._busy, "active", False):
            # The SDK's own retry log while a record is being redacted.
            return True
        self._busy.active = True
        try:
            return self._scrub(record)
        finally:
            self._busy.active = False

    def _scrub(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        try:
            vault = self._vault()
            record.msg = vault.redact(record.getMessage()).text
            record.args = None
            if record.exc_text:
                record.exc_text = vault.redact(record.exc_text).text
            if record.stack_info:
                record.stack_info = vault.redact(record.stack_info).text
        except (VaultError, TypeError) as e:
            return self._failed(record, getattr(e, "code", type(e).__name__))
        return True

    def _failed(self, record: logging.LogRecord, code: str) -> bool:
        if self._on_error == "pass":
            return True
        if self._on_error == "drop":
            return False
        record.msg = _WITHHELD.format(code=code)
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True
