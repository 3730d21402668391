"""``@secret`` and ``@secrets_batch``: secrets as function results and as
injected keyword arguments, for plain and ``async`` functions alike."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from ._client import AsyncVaultClient, VaultClient
from ._core import decode_json_value, identifier_for
from ._default import default_client
from ._errors import SecretNotFoundError
from ._models import BatchResult

__all__ = ["secret", "secrets_batch"]

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.asynccontextmanager
async def _async_client(client: AsyncVaultClient | None) -> AsyncIterator[AsyncVaultClient]:
    # An AsyncClient's pool belongs to one event loop, so without a given
    # client each call makes (and closes) its own: cheap on a Unix socket.
    if client is not None:
        yield client
    else:
        async with AsyncVaultClient() as fresh:
            yield fresh


class SecretDecorator(Protocol):
    """Keeps the decorated function's signature and declared return type."""

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...


def secret(
    path: str,
    required: bool = True,
    default: Any = None,
    as_json: bool = False,
    *,
    client: VaultClient | AsyncVaultClient | None = None,
) -> SecretDecorator:
    """Makes the decorated function return the secret at ``path``.

    The function's body is never run: it only names the secret. Each call reads
    the secret anew (rotations show up at once), from ``client`` or else the
    default client (for an ``async def`` function: an ``AsyncVaultClient``, a
    fresh one per call unless given). With ``as_json`` the value is parsed as
    JSON. When no secret is at ``path`` the call raises ``SecretNotFoundError``
    if ``required`` and no ``default`` was given, and returns ``default``
    otherwise (so ``@secret(p, default="x")`` needs no ``required=False``).
    Other errors (expired, denied, unavailable) are always raised.

        @secret("openai/api-key")
        def openai_key() -> str: ...

        openai_key()  # -> "sk-..."

    The declared return type is kept for type checkers; under ``mypy
    --strict`` write the body as ``raise NotImplementedError`` (mypy reports
    a bare ``...`` body as ``empty-body``).
    """
    lenient = not required or default is not None

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            if client is not None and not isinstance(client, AsyncVaultClient):
                raise TypeError("an async function needs an AsyncVaultClient")

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with _async_client(client) as c:
                    try:
                        found = await c.get_secret(path)
                    except SecretNotFoundError:
                        if lenient:
                            return default
                        raise
                return decode_json_value(found) if as_json else found.value

            return async_wrapper

        if client is not None and not isinstance(client, VaultClient):
            raise TypeError("a plain function needs a VaultClient")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            c = client if client is not None else default_client()
            try:
                found = c.get_secret(path)
            except SecretNotFoundError:
                if lenient:
                    return default
                raise
            return decode_json_value(found) if as_json else found.value

        return wrapper

    return decorate


class BatchDecorator(Protocol):
    @overload
    def __call__(
        self, fn: Callable[..., Coroutine[Any, Any, R]]
    ) -> Callable[..., Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[..., R]) -> Callable[..., R]: ...


def secrets_batch(
    *paths: str | Sequence[str],
    required: bool = True,
    client: VaultClient | AsyncVaultClient | None = None,
) -> BatchDecorator:
    """Injects secrets as keyword arguments, read in ONE batch request per call.

    Paths are given as arguments or as one list (or both):
    ``@secrets_batch("a", "b")`` and ``@secrets_batch(["a", "b"])`` are the
    same. Each path becomes the keyword named after it with every character
    other than letters, digits and ``_`` turned into ``_``: ``OPENAI_API_KEY``
    stays ``OPENAI_API_KEY``, ``openai/api-key`` is ``openai_api_key``. The
    function takes them as named parameters or collects them in ``**secrets``.
    A keyword the caller passes explicitly wins (and that path is not read).
    When a path fails, the call raises that path's error
    (``SecretNotFoundError``, ...); with ``required=False`` a missing secret is
    injected as ``None`` instead.

        @secrets_batch(["OPENAI_API_KEY", "ANTHROPIC_API_KEY"])
        def main(OPENAI_API_KEY: str, ANTHROPIC_API_KEY: str) -> None: ...

        @secrets_batch("openai/api-key", "db/password")
        def connect(**secrets: str) -> None: ...   # secrets["openai_api_key"]

        main()
    """
    flat: list[str] = []
    for item in paths:
        if isinstance(item, str):
            flat.append(item)
        elif isinstance(item, Sequence):
            for p in item:
                if not isinstance(p, str):
                    raise TypeError(f"a secret path must be a str, not {type(p).__name__}")
                flat.append(p)
        else:
            raise TypeError(
                f"secrets_batch takes paths or a list of paths, not {type(item).__name__}"
            )
    if not flat:
        raise ValueError("secrets_batch needs at least one path")
    names: dict[str, str] = {}
    for p in flat:
        name = identifier_for(p)
        if name in names and names[name] != p:
            raise ValueError(f"paths {names[name]!r} and {p!r} both map to the argument {name!r}")
        names[name] = p

    def inject(result: BatchResult, wanted: dict[str, str], kwargs: dict[str, Any]) -> None:
        for name, p in wanted.items():
            if p in result.secrets:
                kwargs[name] = result.secrets[p]
                continue
            error = result.errors.get(p)
            if error is None:
                error = SecretNotFoundError(f"the batch answer left out `{p}`")
            if not required and isinstance(error, SecretNotFoundError):
                kwargs[name] = None
                continue
            raise error

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):
            if client is not None and not isinstance(client, AsyncVaultClient):
                raise TypeError("an async function needs an AsyncVaultClient")

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                wanted = {n: p for n, p in names.items() if n not in kwargs}
                if wanted:
                    async with _async_client(client) as c:
                        result = await c.batch(wanted.values())
                    inject(result, wanted, kwargs)
                return await fn(*args, **kwargs)

            return async_wrapper

        if client is not None and not isinstance(client, VaultClient):
            raise TypeError("a plain function needs a VaultClient")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wanted = {n: p for n, p in names.items() if n not in kwargs}
            if wanted:
                c = client if client is not None else default_client()
                inject(c.batch(wanted.values()), wanted, kwargs)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
