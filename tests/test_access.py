"""AccessControl on a real SQLite store: keys and tokens are found by their
keyed hash only, expire and are revoked, and every change is audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferswarm.router.access import (
    AccessControl,
    KeySpec,
    UnknownObject,
    digest,
    load_or_create_secret,
)
from inferswarm.storage.sql import open_store


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_keys_tokens_and_bans_round_trip_and_are_audited(tmp_path: Path) -> None:
    store = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    secret = load_or_create_secret(tmp_path)
    assert load_or_create_secret(tmp_path) == secret  # created once, then read
    clock = Clock()
    access = AccessControl(store, secret, clock)

    key, record = await access.create_key(KeySpec("alice", ("m1",), rpm=3), "test")
    assert key.startswith("isk-") and record.digest == digest(secret, key)
    assert key not in repr(await store.list_api_keys())
    found = await access.find_key(key)
    assert found is not None and found.models == ("m1",) and found.rpm == 3
    assert await access.find_key(key + "x") is None
    assert await AccessControl(store, b"another secret").find_key(key) is None
    await access.revoke_key(record.id, "test")
    assert await access.find_key(key) is None
    with pytest.raises(UnknownObject):
        await access.revoke_key(record.id, "test")

    token, _ = await access.create_token("lab", ttl_s=60, actor="test")
    assert await access.check_token(token) is None
    assert "needs a join token" in str(await access.check_token(None))
    assert "not known" in str(await access.check_token("ijt-made-up"))
    clock.now += 61
    assert "expired" in str(await access.check_token(token))

    await access.ban_miner("m-7", "wrong answers", "test")
    ban = await store.miner_ban("m-7")
    assert ban is not None and ban.reason == "wrong answers"
    await access.unban_miner("m-7", "test")
    assert await store.miner_ban("m-7") is None

    actions = [e.action for e in await store.audit_log(10)]
    assert actions == [
        "miner.unban",
        "miner.ban",
        "token.create",
        "key.revoke",
        "key.create",
    ]
    await store.close()
