"""Miner identity and signed results: keys on disk, ids from keys, and the
router's check of every result (a replayed or forged result is rejected)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest

from inferswarm.miner.identity import KEY_FILE, MinerIdentity, load_or_create_identity
from inferswarm.protocol import (
    PROTOCOL_VERSION,
    HardwareProfile,
    ModelName,
    ModelOffer,
    Register,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskFailed,
    TaskId,
)
from inferswarm.protocol.signing import (
    challenge_payload,
    miner_id_for,
    result_payload,
    text_sha256,
    verify_signature,
)
from inferswarm.router.registry import MinerRegistry

MODEL = ModelName("m")
HASH = "ab" * 32


def test_the_key_is_created_private_and_kept(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    again = load_or_create_identity(tmp_path)
    assert again.public_key == first.public_key
    assert first.miner_id == miner_id_for(first.public_key)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_signatures_bind_key_nonce_and_id() -> None:
    alice, bob = MinerIdentity.generate(), MinerIdentity.generate()
    signature = alice.answer_challenge("n" * 32)
    assert verify_signature(
        alice.public_key, challenge_payload("n" * 32, alice.miner_id), signature
    )
    assert not verify_signature(
        bob.public_key, challenge_payload("n" * 32, alice.miner_id), signature
    )
    assert not verify_signature(
        alice.public_key, challenge_payload("x" * 32, alice.miner_id), signature
    )
    assert not verify_signature("zz", b"", "00")  # malformed input is a failed check, not a crash


def _register(identity: MinerIdentity) -> Register:
    return Register(
        protocol_version=PROTOCOL_VERSION,
        miner_id=identity.miner_id,
        public_key=identity.public_key,
        name="x",
        engine="fake",
        hardware=HardwareProfile(cpu_model="c", cpu_cores=1, ram_bytes=1),
        models=(ModelOffer(name=MODEL, context_length=100, file_hash=HASH),),
        slots=1,
    )


async def _run_one(registry: MinerRegistry, identity: MinerIdentity, done: TaskDone, text: str):
    async def send(_: str) -> None:
        return None

    async def close(_: str) -> None:
        return None

    conn = await registry.add(_register(identity), send, close)
    task = TaskAssign(task_id=done.task_id, model=MODEL, prompt="p", sampling=SamplingParams())
    events = await registry.start_task(conn.miner_id, task, expected_tokens=1)
    registry.on_message(conn, TaskChunk(task_id=done.task_id, text=text))
    registry.on_message(conn, done)
    await asyncio.sleep(0)
    return [events.get_nowait(), events.get_nowait()][1]


def _signed(identity: MinerIdentity, task_id: str, text: str) -> TaskDone:
    digest = text_sha256(text)
    return TaskDone(
        task_id=TaskId(task_id),
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        model_hash=HASH,
        output_sha256=digest,
        signature=identity.sign_result(task_id, HASH, digest),
    )


async def test_an_honest_signed_result_is_accepted() -> None:
    registry = MinerRegistry(lambda: 0.0, 5.0)
    alice = MinerIdentity.generate()
    event = await _run_one(registry, alice, _signed(alice, "t1", " hi"), " hi")
    assert isinstance(event, TaskDone)
    assert registry.book.standing(alice.miner_id).fails == 0


async def test_a_replayed_result_of_another_miner_is_rejected() -> None:
    """Bob sends a result Alice signed (even one over Bob's own task id) as his."""
    registry = MinerRegistry(lambda: 0.0, 5.0)
    alice, bob = MinerIdentity.generate(), MinerIdentity.generate()
    stolen = _signed(alice, "t-bob", " the answer")
    event = await _run_one(registry, bob, stolen, " the answer")
    assert isinstance(event, TaskFailed)
    assert "signature does not verify" in event.message
    assert registry.book.standing(bob.miner_id).fails == 1


async def test_a_result_whose_text_was_changed_is_rejected() -> None:
    registry = MinerRegistry(lambda: 0.0, 5.0)
    alice = MinerIdentity.generate()
    event = await _run_one(registry, alice, _signed(alice, "t2", " right"), " wrong")
    assert isinstance(event, TaskFailed)
    assert "output hash" in event.message


async def test_a_result_replayed_for_another_task_is_rejected() -> None:
    registry = MinerRegistry(lambda: 0.0, 5.0)
    alice = MinerIdentity.generate()
    old = _signed(alice, "t-old", " x")
    event = await _run_one(
        registry, alice, old.model_copy(update={"task_id": TaskId("t-new")}), " x"
    )
    assert isinstance(event, TaskFailed)
    assert registry.book.standing(alice.miner_id).fails == 1


def test_result_payload_is_unambiguous() -> None:
    assert result_payload("a", "b", "c") != result_payload("a\0b", "", "c")
