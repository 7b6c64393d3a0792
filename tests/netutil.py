"""Starting real router and miner processes on loopback for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Network:
    """A router and its miners as real processes; everything stops on exit."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    api_key: str | None = None
    procs: list[Proc] = field(default_factory=list)
    router: Proc | None = None
    auth: bool | None = None
    """Client API keys required; default: only when ``api_key`` is set (else --no-auth)."""
    open_join: bool = True
    """Miners join without a join token (--open-join) unless a test wants tokens."""
    tls_ca: Path | None = None
    """With TLS: the CA that signed the router's certificate (https:// URLs)."""

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls_ca else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else True

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def spawn(self, name: str, *args: str, prefix: tuple[str, ...] = ()) -> Proc:
        log = self.workdir / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("INFERSWARM_API_KEYS", None)
        with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                [*prefix, sys.executable, "-m", "inferswarm", *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_router(self, *extra: str) -> Proc:
        args = [
            "router",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.workdir / "router"),
        ]
        if self.api_key:
            args += ["--api-key", self.api_key]
        if not (self.api_key is not None if self.auth is None else self.auth):
            args.append("--no-auth")
        if self.open_join:
            args.append("--open-join")
        self.router = self.spawn("router", *args, *extra)
        self.wait_http("/healthz")
        return self.router

    def start_miner(
        self, name: str, *extra: str, engine: str = "fake", prefix: tuple[str, ...] = ()
    ) -> Proc:
        args = ("miner", "--router", self.base_url, "--engine", engine, "--name", name, *extra)
        return self.spawn(name, *args, prefix=prefix)

    def wait_http(self, path: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._fail_if_router_died()
            try:
                response = httpx.get(self.base_url + path, timeout=1, verify=self.verify())
                if response.status_code < 500:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"{path} did not answer within {timeout} s")

    def miners(self) -> list[dict[str, object]]:
        response = httpx.get(
            self.base_url + "/v1/miners", headers=self.headers(), timeout=5, verify=self.verify()
        )
        response.raise_for_status()
        data: list[dict[str, object]] = response.json()["data"]
        return data

    def wait_miners(self, count: int, timeout: float = 60) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._fail_if_router_died()
            miners = self.miners()
            if len(miners) == count:
                return miners
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.name}\n{p.output()[-2000:]}" for p in self.procs)
        raise TimeoutError(f"expected {count} miners, have {len(self.miners())}\n{logs}")

    def _fail_if_router_died(self) -> None:
        if self.router is not None and self.router.popen.poll() is not None:
            raise RuntimeError(f"the router exited:\n{self.router.output()[-3000:]}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


@contextmanager
def network(workdir: Path, api_key: str | None = None) -> Iterator[Network]:
    net = Network(workdir=workdir, api_key=api_key)
    try:
        yield net
    finally:
        net.close()
