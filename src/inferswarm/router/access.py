"""Who may use the network and who may join it: API keys, join tokens and
miner bans, kept in the store, changed only through ``AccessControl`` so that
every change is audited.

Keys and tokens are random (192 bits) and stored as an HMAC-SHA256 under a
router secret kept in the data dir (mode 0600), so a copy of the database
alone neither reveals nor verifies any of them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from inferswarm.storage import (
    ApiKeyRecord,
    AuditEntry,
    JoinTokenRecord,
    MinerBanRecord,
    Store,
)

API_KEY_PREFIX = "isk-"
JOIN_TOKEN_PREFIX = "ijt-"
SECRET_FILE = "secret.key"
SHOWN_PREFIX = 10
"""Characters of a key kept in clear, so operators can tell keys apart."""

MAX_LIMIT = 10**15
"""Larger limits are no limit at all, and would overflow the store's integers."""
MAX_TTL_S = 100 * 365 * 86400

WallClock = Callable[[], float]


def load_or_create_secret(data_dir: Path) -> bytes:
    """The router's HMAC secret; created (mode 0600) on first use."""
    path = data_dir / SECRET_FILE
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as sink:
        sink.write(secret.hex())
    return secret


def digest(secret: bytes, credential: str) -> str:
    return hmac.new(secret, credential.encode(), hashlib.sha256).hexdigest()


def tenant_of(key: str) -> str:
    """A short, non-reversible id for a bootstrap key (given on the command line)."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class KeySpec:
    """What ``keys create`` asks for."""

    name: str
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    quota_tokens: int | None = None
    is_admin: bool = False


class UnknownObject(LookupError):
    """No key, token or ban with that id."""


class AccessControl:
    """Issue, revoke and check credentials; every change is written to the audit log."""

    def __init__(self, store: Store, secret: bytes, clock: WallClock = time.time) -> None:
        self.store = store
        self._secret = secret
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock())

    # api keys

    async def create_key(self, spec: KeySpec, actor: str) -> tuple[str, ApiKeyRecord]:
        """A new key and its record; the key itself is not kept anywhere."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(24)
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            name=spec.name,
            digest=digest(self._secret, key),
            prefix=key[:SHOWN_PREFIX],
            created_at=self._now(),
            models=spec.models,
            rpm=spec.rpm,
            tpm=spec.tpm,
            quota_tokens=spec.quota_tokens,
            is_admin=spec.is_admin,
        )
        await self.store.add_api_key(record)
        await self._audit(actor, "key.create", record.id, describe_key(record))
        return key, record

    async def revoke_key(self, key_id: str, actor: str) -> None:
        if not await self.store.revoke_api_key(key_id, self._now()):
            raise UnknownObject(f"no active API key with id {key_id!r}; see `inferswarm keys list`")
        await self._audit(actor, "key.revoke", key_id)

    async def find_key(self, key: str) -> ApiKeyRecord | None:
        """The active record of ``key``, or None (unknown or revoked)."""
        record = await self.store.api_key_by_digest(digest(self._secret, key))
        return record if record is not None and record.revoked_at is None else None

    # join tokens

    async def create_token(
        self, name: str, ttl_s: float | None, actor: str
    ) -> tuple[str, JoinTokenRecord]:
        token = JOIN_TOKEN_PREFIX + secrets.token_urlsafe(24)
        now = self._now()
        record = JoinTokenRecord(
            id="jt_" + secrets.token_hex(8),
            name=name,
            digest=digest(self._secret, token),
            prefix=token[:SHOWN_PREFIX],
            created_at=now,
            expires_at=None if ttl_s is None else now + int(ttl_s),
        )
        await self.store.add_join_token(record)
        await self._audit(actor, "token.create", record.id, describe_token(record))
        return token, record

    async def revoke_token(self, token_id: str, actor: str) -> None:
        if not await self.store.revoke_join_token(token_id, self._now()):
            raise UnknownObject(
                f"no active join token with id {token_id!r}; see `inferswarm tokens list`"
            )
        await self._audit(actor, "token.revoke", token_id)

    async def check_token(self, token: str | None) -> str | None:
        """Why a miner with ``token`` may not join, or None when it may."""
        if not token:
            return (
                "this router needs a join token; ask its operator for one "
                "(`inferswarm tokens create`) and start the miner with --join-token "
                "or INFERSWARM_JOIN_TOKEN"
            )
        record = await self.store.join_token_by_digest(digest(self._secret, token))
        if record is None:
            return "the join token is not known to this router; ask its operator for a valid one"
        if not record.valid_at(self._now()):
            return "the join token was revoked or has expired; ask the operator for a new one"
        return None

    # miner bans

    async def ban_miner(self, miner_id: str, reason: str, actor: str) -> MinerBanRecord:
        ban = MinerBanRecord(miner_id, reason, self._now(), actor)
        await self.store.ban_miner(ban)
        await self._audit(actor, "miner.ban", miner_id, {"reason": reason})
        return ban

    async def unban_miner(self, miner_id: str, actor: str) -> None:
        if not await self.store.unban_miner(miner_id):
            raise UnknownObject(f"miner {miner_id!r} is not banned")
        await self._audit(actor, "miner.unban", miner_id)

    async def record(self, actor: str, action: str, target: str, **details: Any) -> None:
        """Audit an admin operation made elsewhere (a policy change, a scaling limit)."""
        await self._audit(actor, action, target, details)

    async def _audit(
        self, actor: str, action: str, target: str, details: dict[str, Any] | None = None
    ) -> None:
        await self.store.audit(AuditEntry(self._now(), actor, action, target, details or {}))


def _public(record: Any) -> dict[str, Any]:
    """A record's fields as the admin API shows them: never a secret's ``digest``
    (``models`` as a list, for JSON)."""
    shown = {f.name: getattr(record, f.name) for f in fields(record) if f.name != "digest"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in shown.items()}


def describe_key(record: ApiKeyRecord) -> dict[str, Any]:
    """A key as the admin API and ``keys list`` show it."""
    shown = _public(record)
    shown["admin"] = shown.pop("is_admin")
    return shown


def describe_token(record: JoinTokenRecord) -> dict[str, Any]:
    return _public(record)


def describe_ban(ban: MinerBanRecord) -> dict[str, Any]:
    return _public(ban)


def describe_audit(entry: AuditEntry) -> dict[str, Any]:
    return _public(entry)
