"""What miners sign, byte for byte, and how anyone checks it.

A miner holds an ed25519 key; its id is derived from the public key, so an id
cannot be claimed without the key. It signs two things:

- the router's registration challenge (``challenge_payload``): proves it holds
  the key of the id it registers under;
- every result (``result_payload``): the task id, the hash of the model file
  that ran it and the SHA-256 of the output text. A result copied from another
  miner, or from another task, does not verify under this miner's key.

Both sides build the payloads with these functions, so they cannot drift.
Keys and signatures travel as lowercase hex.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from inferswarm.protocol.ids import MinerId

PUBLIC_KEY_HEX_LENGTH = 64
SIGNATURE_HEX_LENGTH = 128
_ID_HEX_DIGITS = 20


def miner_id_for(public_key_hex: str) -> MinerId:
    """``m-`` and the first 80 bits of SHA-256 of the raw public key."""
    digest = hashlib.sha256(bytes.fromhex(public_key_hex)).hexdigest()
    return MinerId(f"m-{digest[:_ID_HEX_DIGITS]}")


def challenge_payload(nonce: str, miner_id: MinerId) -> bytes:
    return f"inferswarm-register-v1\0{nonce}\0{miner_id}".encode()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def result_payload(task_id: str, model_hash: str, output_sha256: str) -> bytes:
    return f"inferswarm-result-v1\0{task_id}\0{model_hash}\0{output_sha256}".encode()


def verify_signature(public_key_hex: str, payload: bytes, signature_hex: str) -> bool:
    """True only for a well-formed key and a signature it made over ``payload``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature_hex), payload)
    except (ValueError, InvalidSignature):
        return False
    return True
