"""A real network fault: a miner in its own network namespace loses its link
without any socket being closed, so only missed heartbeats can reveal it.

Without root or `ip netns`, the test skips and says why.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns import Namespace, NamespaceUnavailable, namespace
from netutil import network
from test_network import by_name, chat, wait_until


@pytest.fixture
def link() -> Iterator[Namespace]:
    try:
        with namespace() as made:
            yield made
    except NamespaceUnavailable as exc:
        pytest.skip(str(exc))


def test_a_cut_link_is_detected_by_heartbeats_and_the_task_moves(
    link: Namespace, tmp_path: Path
) -> None:
    with network(tmp_path) as net:
        net.host = link.host_address
        net.start_router("--heartbeat-timeout", "2")
        remote = net.start_miner("remote", "--fake-latency", "30", prefix=link.exec_prefix)
        net.wait_miners(1)
        result: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: result.update(reply=chat(net, max_tokens=2)))
        thread.start()
        wait_until(lambda: by_name(net)["remote"]["busy"] == 1, what="the task to reach 'remote'")
        net.start_miner("local")
        net.wait_miners(2)
        link.cut()  # no FIN, no RST: the socket stays open
        started = time.monotonic()
        thread.join(30)
        assert result["reply"].choices[0].message.content == " w0 w1"
        assert time.monotonic() - started < 10
        assert set(by_name(net)) == {"local"}
        assert remote.popen.poll() is None  # the remote miner never noticed anything
