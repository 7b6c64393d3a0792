"""Helpers for tests that drive the miner side of the protocol by hand: an
identity for the register frame, the challenge answer, signed results."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from inferswarm.miner.identity import MinerIdentity
from inferswarm.protocol import TaskDone
from inferswarm.protocol.signing import text_sha256


def with_identity(register: dict[str, Any]) -> tuple[dict[str, Any], MinerIdentity]:
    """The register frame under a fresh key (the id derives from it)."""
    identity = MinerIdentity.generate()
    frame = {**register, "miner_id": identity.miner_id, "public_key": identity.public_key}
    return frame, identity


def answer_challenge(
    identity: MinerIdentity, receive: Callable[[], str], send: Callable[[str], None]
) -> str:
    """Answer the router's challenge; returns the frame that follows (registered or refused)."""
    reply = json.loads(receive())
    if reply["type"] != "challenge":
        return json.dumps(reply)
    signature = identity.answer_challenge(reply["nonce"])
    send(json.dumps({"type": "challenge_answer", "signature": signature}))
    return receive()


def signed(identity: MinerIdentity, done: TaskDone, text: str, model_hash: str = "") -> TaskDone:
    digest = text_sha256(text)
    return done.model_copy(
        update={
            "model_hash": model_hash,
            "output_sha256": digest,
            "signature": identity.sign_result(done.task_id, model_hash, digest),
        }
    )
