"""A real network fault: a miner in its own network namespace loses its link
without any socket being closed, so only missed heartbeats can reveal it.

Only addresses of the namespace this test creates are used. Without root or
`ip netns`, the test skips and says why.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netutil import Network, network
from test_network import by_name, chat, wait_until


@dataclass(frozen=True)
class Namespace:
    name: str
    host_link: str
    host_address: str
    exec_prefix: tuple[str, ...]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    tag = secrets.token_hex(3)
    name, host_link, ns_link = f"isw-{tag}", f"iswh{tag}", f"iswn{tag}"
    subnet = 100 + int(tag[:2], 16) % 100
    host_address, ns_address = f"10.250.{subnet}.1", f"10.250.{subnet}.2"
    try:
        ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
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


def test_a_cut_link_is_detected_by_heartbeats_and_the_task_moves(
    namespace: Namespace, tmp_path: Path
) -> None:
    with network(tmp_path) as net:
        net.host = namespace.host_address
        net.start_router("--heartbeat-timeout", "2")
        remote = net.start_miner("remote", "--fake-latency", "30", prefix=namespace.exec_prefix)
        net.wait_miners(1)
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(reply=chat(net, max_tokens=2)))
        thread.start()
        wait_until(lambda: by_name(net)["remote"]["busy"] == 1, what="the task to reach 'remote'")
        net.start_miner("local")
        net.wait_miners(2)
        ip("link", "set", namespace.host_link, "down")  # no FIN, no RST: the socket stays open
        started = time.monotonic()
        thread.join(30)
        assert result["reply"].choices[0].message.content == " w0 w1"
        assert time.monotonic() - started < 10
        assert set(by_name(net)) == {"local"}
        assert remote.popen.poll() is None  # the remote miner never noticed anything
        assert isinstance(net, Network)
