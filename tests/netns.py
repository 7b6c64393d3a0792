"""Network namespaces with a veth link to the host, for real network faults.

Only the addresses of namespaces made here are ever used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class NamespaceUnavailable(Exception):
    """Network namespaces cannot be made here (not root, no iproute2, a sandbox)."""


@dataclass(frozen=True)
class Namespace:
    name: str
    host_link: str
    host_address: str
    exec_prefix: tuple[str, ...]

    def cut(self) -> None:
        """Take the link down: packets stop, no socket is closed."""
        ip("link", "set", self.host_link, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_link, "up")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise NamespaceUnavailable("needs root and iproute2 to create a network namespace")
    tag = secrets.token_hex(3)
    name, host_link, ns_link = f"isw-{tag}", f"iswh{tag}", f"iswn{tag}"
    subnet = 100 + int(tag[:2], 16) % 100
    host_address, ns_address = f"10.250.{subnet}.1", f"10.250.{subnet}.2"
    try:
        ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        raise NamespaceUnavailable(f"cannot create a network namespace here: {exc}") from exc
    try:
        ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link)
        ip("link", "set", ns_link, "netns", name)
        ip("addr", "add", f"{host_address}/30", "dev", host_link)
        ip("link", "set", host_link, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{ns_address}/30", "dev", ns_link)
        ip("netns", "exec", name, "ip", "link", "set", ns_link, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield Namespace(name, host_link, host_address, ("ip", "netns", "exec", name))
    finally:
        subprocess.run(["ip", "link", "del", host_link], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
