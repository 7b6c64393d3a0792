"""The miner's identity: an ed25519 key pair kept in its data dir (mode 0600),
so a restarted miner is the same miner. Its id derives from the public key."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from inferswarm.protocol import MinerId
from inferswarm.protocol.signing import (
    challenge_payload,
    miner_id_for,
    result_payload,
)

log = logging.getLogger(__name__)

KEY_FILE = "miner_key.pem"


class MinerIdentity:
    """Signs what the router asks the miner to prove."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = raw.hex()
        self.miner_id: MinerId = miner_id_for(self.public_key)

    @classmethod
    def generate(cls) -> MinerIdentity:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, payload: bytes) -> str:
        return self._key.sign(payload).hex()

    def answer_challenge(self, nonce: str) -> str:
        return self.sign(challenge_payload(nonce, self.miner_id))

    def sign_result(self, task_id: str, model_hash: str, output_sha256: str) -> str:
        return self.sign(result_payload(task_id, model_hash, output_sha256))


def load_or_create_identity(data_dir: Path | None) -> MinerIdentity:
    """The key in ``data_dir`` (created on first start, mode 0600), or a fresh
    key per run without a data dir (two such miners never collide)."""
    if data_dir is None:
        return MinerIdentity.generate()
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / KEY_FILE
    if path.is_file():
        _refuse_if_readable_by_others(path)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an ed25519 key; move it away to make a new one")
        return MinerIdentity(key)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    identity = MinerIdentity(key)
    log.info("created miner key %s (miner id %s)", path, identity.miner_id)
    return identity


def _refuse_if_readable_by_others(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ValueError(
            f"{path} is readable by other users (mode {mode:o}); run 'chmod 600 {path}'"
        )
