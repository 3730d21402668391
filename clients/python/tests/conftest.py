"""Test harness: real `agentvault dev` sidecars on temporary sockets.

The binary is `$AGENTVAULT_BIN`, else `target/debug/agentvault` of the
repository that holds this file (built with `cargo build` if missing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from agentvault import AsyncVaultClient, VaultClient

HERE = Path(__file__).resolve()


def repo_root() -> Path:
    for parent in HERE.parents:
        cargo = parent / "Cargo.toml"
        if cargo.is_file() and 'name = "agentvault"' in cargo.read_text():
            return parent
    raise RuntimeError(f"no agentvault Cargo.toml above {HERE}")


def agentvault_bin() -> Path:
    env = os.environ.get("AGENTVAULT_BIN")
    if env:
        path = Path(env)
        if not path.is_file():
            raise RuntimeError(f"AGENTVAULT_BIN={env} is not a file")
        return path
    root = repo_root()
    binary = root / "target" / "debug" / "agentvault"
    if not binary.is_file():
        subprocess.run(["cargo", "build"], cwd=root, check=True)
    return binary


class Sidecar:
    """One `agentvault dev` process on its own socket and data dir."""

    def __init__(self, *extra: str) -> None:
        # Short paths: a Unix socket path must fit in 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="avpy-"))
        self.socket = str(self.dir / "av.sock")
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "sidecar.log"
        self.extra = extra
        self.start()

    def start(self) -> None:
        """Starts the process and waits until it answers on the socket."""
        self._log = open(self.log_path, "ab")
        args = [
            str(agentvault_bin()),
            "dev",
            "--socket",
            self.socket,
            "--data-dir",
            str(self.data_dir),
            "--metrics-addr",
            "off",
            *self.extra,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTVAULT_")}
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.socket):
                try:
                    with httpx.Client(
                        transport=httpx.HTTPTransport(uds=self.socket), timeout=2.0
                    ) as c:
                        # Any HTTP answer (even a 503 from an unreachable store) means it serves.
                        c.get("http://agentvault/v1/health")
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sidecar did not come up in {timeout}s:\n{self.log()}")

    def stop_process(self) -> None:
        """Stops the process (SIGTERM, then SIGKILL), keeping socket path and data."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def stop(self) -> None:
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def sidecar() -> Iterator[Sidecar]:
    s = Sidecar()
    yield s
    s.stop()


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def storage_down_sidecar() -> Iterator[Sidecar]:
    """A real sidecar whose Redis is a port nobody listens on: every storage
    operation answers 503 `unavailable`."""
    s = Sidecar("--redis-url", f"redis://127.0.0.1:{free_tcp_port()}/")
    yield s
    s.stop()


@pytest.fixture
def ns() -> str:
    """A fresh path prefix, so tests sharing the sidecar never collide."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def client(sidecar: Sidecar) -> Iterator[VaultClient]:
    with VaultClient(socket=sidecar.socket) as c:
        yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def aclient(sidecar: Sidecar) -> AsyncIterator[AsyncVaultClient]:
    async with AsyncVaultClient(socket=sidecar.socket) as c:
        yield c


@pytest.fixture
def dead_socket() -> Iterator[str]:
    """A socket file that is bound but not listening: connections are refused."""
    d = tempfile.mkdtemp(prefix="avpy-dead-")
    path = os.path.join(d, "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    try:
        yield path
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- probing the live sidecar for endpoints still being built ----------------


def route_missing(response: httpx.Response) -> bool:
    """True when the sidecar says it has no such route (404 `not_found`, "no route")."""
    if response.status_code != 404:
        return False
    with contextlib.suppress(ValueError):
        error = response.json().get("error", {})
        return error.get("code") == "not_found" and "no route" in error.get("message", "")
    return False


@pytest.fixture(scope="session")
def tokens_served(sidecar: Sidecar) -> bool:
    with httpx.Client(transport=httpx.HTTPTransport(uds=sidecar.socket)) as c:
        response = c.post("http://agentvault/v1/tokens", json={})
    return not route_missing(response)


@pytest.fixture
def needs_tokens(tokens_served: bool) -> None:
    """Fails the token tests plainly (rather than with odd errors) if the
    sidecar ever stops serving `POST /v1/tokens`."""
    assert tokens_served, "the sidecar does not serve POST /v1/tokens (404 no route)"


class CountingTransport(httpx.HTTPTransport):
    """The real Unix-socket transport, counting attempts and keeping the
    headers of the last request."""

    def __init__(self, uds: str) -> None:
        super().__init__(uds=uds)
        self.attempts = 0
        self.last_headers: httpx.Headers | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        self.last_headers = request.headers
        return super().handle_request(request)


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self, uds: str) -> None:
        super().__init__(uds=uds)
        self.attempts = 0
        self.last_headers: httpx.Headers | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        self.last_headers = request.headers
        return await super().handle_async_request(request)
