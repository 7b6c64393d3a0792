from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferswarm.protocol import (
    PROTOCOL_VERSION,
    ChatMessage,
    GpuUsage,
    HardwareProfile,
    Heartbeat,
    MinerId,
    ModelName,
    ModelOffer,
    Park,
    Register,
    SamplingParams,
    TaskAssign,
    TaskChunk,
    TaskDone,
    TaskId,
    TokenScore,
    VerifyAssign,
    VerifyResult,
    encode,
    parse_miner_message,
    parse_router_message,
)


def registration() -> Register:
    return Register(
        protocol_version=PROTOCOL_VERSION,
        miner_id=MinerId("m-1"),
        name="pi",
        engine="llamacpp",
        hardware=HardwareProfile(cpu_model="Cortex-A76", cpu_cores=4, ram_bytes=8 * 2**30),
        models=(ModelOffer(name=ModelName("smollm2-135m-instruct:q4_1"), context_length=2048),),
        slots=2,
    )


def test_miner_messages_round_trip() -> None:
    for message in (
        registration(),
        Heartbeat(busy_slots=1, queued_tasks=0, cpu_percent=50.0),
        TaskChunk(task_id=TaskId("t"), text="héllo", tokens=2),
        TaskDone(task_id=TaskId("t"), finish_reason="length", prompt_tokens=3, completion_tokens=4),
        TaskDone(
            task_id=TaskId("t"),
            finish_reason="stop",
            prompt_tokens=3,
            completion_tokens=2,
            token_logprobs=(-0.25, -1.5),
        ),
        VerifyResult(
            verify_id=TaskId("v"),
            tokens=(TokenScore(rank=2, logprob=-1.5, top_logprob=-0.5),),
            eos_rank=7,
            eos_logprob=-3.0,
        ),
        VerifyResult(verify_id=TaskId("v"), error="the pinned model file is not loaded"),
    ):
        assert parse_miner_message(encode(message)) == message


def test_router_messages_round_trip() -> None:
    task = TaskAssign(
        task_id=TaskId("t"),
        model=ModelName("m"),
        messages=(ChatMessage(role="user", content="hi"),),
        sampling=SamplingParams(max_tokens=5, temperature=0, stop=("\n",), seed=7),
    )
    assert parse_router_message(encode(task)) == task
    park = Park(parked=True, heartbeat_interval_s=5.0)
    assert parse_router_message(encode(park)) == park
    check = VerifyAssign(
        verify_id=TaskId("v"), model=ModelName("m"), model_hash="ab" * 32, prompt="hi", output="yo"
    )
    assert parse_router_message(encode(check)) == check
    # Added without a version bump: a task that asks nothing new encodes as before.
    assert "logprobs" not in encode(task)


def test_messages_are_frozen() -> None:
    beat = Heartbeat(busy_slots=0, queued_tasks=0)
    with pytest.raises(ValidationError):
        beat.busy_slots = 3  # type: ignore[misc]


def test_unknown_type_and_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_miner_message('{"type": "teleport"}')
    with pytest.raises(ValidationError):
        parse_miner_message('{"type": "heartbeat", "busy_slots": 0, "queued_tasks": 0, "x": 1}')


def test_a_router_frame_is_not_a_miner_message() -> None:
    task = TaskAssign(
        task_id=TaskId("t"), model=ModelName("m"), prompt="p", sampling=SamplingParams()
    )
    with pytest.raises(ValidationError):
        parse_miner_message(encode(task))


def test_register_needs_a_model_and_a_slot() -> None:
    data = registration().model_dump()
    with pytest.raises(ValidationError):
        Register.model_validate({**data, "models": ()})
    with pytest.raises(ValidationError):
        Register.model_validate({**data, "slots": 0})


def test_hardware_summary_is_short_and_readable() -> None:
    hw = HardwareProfile(cpu_model="Intel(R) Xeon(R) Processor", cpu_cores=2, ram_bytes=24 * 2**30)
    assert hw.summary() == "2c Intel Xeon · 24 GiB"


def test_heartbeats_of_older_miners_still_parse_and_new_fields_stay_out_when_empty() -> None:
    old = parse_miner_message('{"type": "heartbeat", "busy_slots": 1, "queued_tasks": 0}')
    assert isinstance(old, Heartbeat) and old.gpus is None and old.tokens_per_s is None
    beat = Heartbeat(busy_slots=0, queued_tasks=0, cpu_percent=12.5, ram_percent=40.0)
    assert "gpus" not in encode(beat)  # a router of the previous version forbids unknown fields
    card = GpuUsage(
        index=0, utilization_percent=87.0, memory_used_bytes=2**30, memory_total_bytes=2**34
    )
    with_gpu = Heartbeat(busy_slots=1, queued_tasks=0, gpus=(card,), tokens_per_s=41.5)
    assert parse_miner_message(encode(with_gpu)) == with_gpu
