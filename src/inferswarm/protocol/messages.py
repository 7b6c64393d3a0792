"""Every message that crosses the router <-> miner WebSocket.

Messages are frozen pydantic models tagged by ``type``; one JSON text frame
carries one message. ``parse_message`` turns a frame into the right model.

Flow::

    miner                          router
      | -- Register --------------->  |   (carries the miner's ed25519 public key)
      | <--------------- Challenge -- |   (or Refused, then close)
      | -- ChallengeAnswer -------->  |   (signature over nonce and miner id)
      | <-------------- Registered -- |   (or Refused, then close)
      | -- Heartbeat (every ~1 s) ->  |
      | <-------------- TaskAssign -- |
      | -- TaskChunk ... ---------->  |   (one per generated piece of text)
      | -- TaskDone | TaskFailed -->  |   (TaskDone signed: task, model hash, output hash)
      | <-------------- TaskCancel -- |   (client went away)
      | <-------------------- Park -- |   (standby autoscaling: parked or active)
      | <--------------- LoadModel -- |   (placement: load a variant it can serve)
      | <------------- UnloadModel -- |   (stop offering it, free it when idle)
      | -- ModelsChanged ---------->  |   (what it serves now, loads, could load)
      | <------------ VerifyAssign -- |   (teacher-forced check of another's result)
      | -- VerifyResult ----------->  |   (per-token ranks and log-probabilities)
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from inferswarm.protocol.ids import MinerId, ModelName, TaskId

PROTOCOL_VERSION = 2
"""Bumped on any incompatible change; a router refuses miners of another version.
Version 2: miners register with a signed challenge and sign every result."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GpuInfo(_Message):
    name: str
    memory_bytes: int = Field(ge=0)


class HardwareProfile(_Message):
    """What the miner runs on, as probed at start."""

    cpu_model: str
    cpu_cores: int = Field(ge=1)
    ram_bytes: int = Field(ge=0)
    available_ram_bytes: int = Field(default=0, ge=0)
    gpus: tuple[GpuInfo, ...] = ()
    platform: str = ""

    def summary(self) -> str:
        gib = self.ram_bytes / 2**30
        cpu = self.cpu_model
        for noise in ("(R)", "(TM)", " CPU", " Processor"):
            cpu = cpu.replace(noise, "")
        text = f"{self.cpu_cores}c {' '.join(cpu.split())} · {gib:.0f} GiB"
        if self.gpus:
            text += " · " + ", ".join(gpu.name for gpu in self.gpus)
        return text


class Capability(_Message):
    """What a miner measured itself doing with one model, at start-up.

    ``generation_tokens_per_s`` is one sequence alone; ``batched_*`` is the
    aggregate over ``batched_sequences`` concurrent sequences (its slot count).
    """

    prompt_tokens_per_s: float = Field(gt=0)
    generation_tokens_per_s: float = Field(gt=0)
    batched_sequences: int = Field(default=1, ge=1)
    batched_generation_tokens_per_s: float = Field(gt=0)
    source: Literal["benchmark", "configured"] = "benchmark"


class ModelOffer(_Message):
    """One model a miner serves.

    ``name`` is ``family:variant`` (``smollm2-135m-instruct:q8_0``); a request
    for the family may be served by any variant. ``file_hash`` is the sha256
    (hex) of the GGUF file, so results can be tied to the exact weights.
    ``memory_bytes`` is the estimated memory to serve it (weights, KV cache
    for ``context_length``, overhead). The fields after ``capability`` are
    optional so older miners still register.
    """

    name: ModelName
    context_length: int = Field(ge=1)
    file_hash: str = ""
    quantization: str = ""
    has_chat_template: bool = True
    capability: Capability | None = None
    family: str = ""
    architecture: str = ""
    parameters: int = Field(default=0, ge=0)
    file_bytes: int = Field(default=0, ge=0)
    memory_bytes: int = Field(default=0, ge=0)


class Register(_Message):
    type: Literal["register"] = "register"
    protocol_version: int
    miner_id: MinerId
    name: str
    engine: str
    hardware: HardwareProfile
    models: tuple[ModelOffer, ...] = Field(min_length=1)
    slots: int = Field(ge=1)
    claimed_tokens_per_s: float | None = Field(default=None, ge=0)
    software_version: str = ""
    public_key: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    """The miner's ed25519 public key (hex); ``miner_id`` must derive from it."""
    loadable: tuple[ModelOffer, ...] = ()
    """Variants the miner has on disk and could load on request (``LoadModel``),
    besides the ``models`` it serves now."""
    operator: str = Field(default="", max_length=128)
    """Who runs this miner, as it declares (empty: undeclared). Redundant runs
    prefer miners of distinct operators; undeclared miners count as distinct."""


class Challenge(_Message):
    """Sign ``nonce`` with the key you registered (``signing.challenge_payload``)."""

    type: Literal["challenge"] = "challenge"
    nonce: str = Field(min_length=16, max_length=128)


class ChallengeAnswer(_Message):
    type: Literal["challenge_answer"] = "challenge_answer"
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")


class Registered(_Message):
    type: Literal["registered"] = "registered"
    miner_id: MinerId
    heartbeat_interval_s: float


class Refused(_Message):
    """The router will not take this miner; ``reason`` says why and what to do."""

    type: Literal["refused"] = "refused"
    reason: str


class Draining(_Message):
    """The miner is shutting down: send it nothing new; it finishes what it has."""

    type: Literal["draining"] = "draining"


class Park(_Message):
    """Standby autoscaling: a parked miner is sent no tasks and heartbeats
    every ``heartbeat_interval_s``; ``parked=False`` makes it active again.

    Added after version 1 without a version bump: a miner that does not know
    it ignores the frame (the router parks it all the same, it just keeps
    heartbeating at the normal rate)."""

    type: Literal["park"] = "park"
    parked: bool
    heartbeat_interval_s: float = Field(gt=0)


class LoadModel(_Message):
    """Placement: load ``name`` (one of the miner's ``loadable`` variants) off the
    request path, then announce it with ``ModelsChanged``; until then the router
    sends no task for it. A miner that cannot (memory, unknown name) answers
    ``ModelsChanged`` with ``error`` set."""

    type: Literal["load_model"] = "load_model"
    name: ModelName


class UnloadModel(_Message):
    """Stop offering ``name`` at once; free its memory once its running tasks end."""

    type: Literal["unload_model"] = "unload_model"
    name: ModelName


class ModelsChanged(_Message):
    """The miner's model set changed: ``models`` is every variant it serves now
    (ready for tasks), ``loading`` those on their way, ``loadable`` what it could
    load. ``error`` says why the last ``LoadModel`` or ``UnloadModel`` failed."""

    type: Literal["models"] = "models"
    models: tuple[ModelOffer, ...]
    loading: tuple[ModelName, ...] = ()
    loadable: tuple[ModelOffer, ...] = ()
    error: str = ""
    slots: int | None = Field(default=None, ge=1)
    """Tasks the miner runs at once with these models; None: unchanged."""


class GpuUsage(_Message):
    """One GPU's load, as NVML reports it."""

    index: int = Field(ge=0)
    utilization_percent: float = Field(ge=0)
    memory_used_bytes: int = Field(ge=0)
    memory_total_bytes: int = Field(ge=0)


class Heartbeat(_Message):
    """The miner's load and its machine's utilisation, about once a second.

    Fields added after version 1 shipped have defaults, so heartbeats of older
    miners still parse; ``gpus`` is left out (None) on machines without one.
    """

    type: Literal["heartbeat"] = "heartbeat"
    busy_slots: int = Field(ge=0)
    queued_tasks: int = Field(ge=0)
    cpu_percent: float = 0.0
    ram_percent: float = 0.0
    ram_used_bytes: int | None = Field(default=None, ge=0)
    gpus: tuple[GpuUsage, ...] | None = None
    tokens_per_s: float | None = Field(default=None, ge=0)
    """Tokens the miner generated per second over its last few seconds."""
    prefix_blocks: tuple[int, ...] | None = Field(default=None, max_length=1024)
    """Prefix blocks (``protocol.prefix``) whose KV the engine holds right now;
    None when the engine does not track its cache."""


class ChatMessage(_Message):
    role: str
    content: str


class SamplingParams(_Message):
    """``max_tokens=None`` means: generate until a stop or the context is full."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


class Resume(_Message):
    """Continue a generation another miner started (request migration): ``text``
    is what was already produced, ``tokens`` how many tokens that was. The
    miner generates what follows, as if never interrupted."""

    text: str
    tokens: int = Field(ge=0)


class TaskAssign(_Message):
    """Run one generation. Exactly one of ``prompt`` or ``messages`` is set.
    With ``resume``, ``sampling.max_tokens`` counts only the tokens still to come."""

    type: Literal["task"] = "task"
    task_id: TaskId
    model: ModelName
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    sampling: SamplingParams
    resume: Resume | None = None
    model_hash: str = ""
    """When set, only a miner whose model file has this SHA-256 may run the task,
    so results compared for verification all come from the same file."""
    logprobs: bool | None = None
    """True: send the log-probability of every generated token with ``TaskDone``.
    None (not False) when not asked, so the frame stays what older miners parse."""


class TaskCancel(_Message):
    type: Literal["cancel"] = "cancel"
    task_id: TaskId


class TaskChunk(_Message):
    """Text generated since the previous chunk of the same task."""

    type: Literal["chunk"] = "chunk"
    task_id: TaskId
    text: str
    tokens: int = Field(default=1, ge=0)


FinishReason = Literal["stop", "length"]


class TaskDone(_Message):
    type: Literal["done"] = "done"
    task_id: TaskId
    finish_reason: FinishReason
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    model_hash: str = ""
    """SHA-256 of the model file that produced the output."""
    output_sha256: str = ""
    """SHA-256 of the UTF-8 text of every chunk of this task, concatenated."""
    signature: str = ""
    """ed25519 over ``signing.result_payload(task_id, model_hash, output_sha256)``."""
    token_logprobs: tuple[float, ...] | None = None
    """When the task asked (``TaskAssign.logprobs``): each generated token's
    log-probability under the model (before temperature), in order. A claim the
    teacher-forced check recomputes; not covered by the signature."""


FailureCode = Literal[
    "context_length_exceeded", "invalid_request", "model_not_loaded", "engine_error", "cancelled"
]


class TaskFailed(_Message):
    """The task did not finish. ``retryable`` tells the router whether another
    miner could succeed (an engine crash) or not (a prompt that is too long)."""

    type: Literal["failed"] = "failed"
    task_id: TaskId
    code: FailureCode
    message: str
    retryable: bool


class VerifyAssign(_Message):
    """Teacher-forced check: score ``output`` as the continuation of the prompt
    (``prompt`` or ``messages``, exactly one, rendered as for a task) with one
    prefill, and answer ``VerifyResult``. Runs at low priority, beside tasks.

    Added after version 2 without a version bump: a miner that does not know
    it ignores the frame and the router's check times out (it then asks
    another miner or gives up; nobody is blamed)."""

    type: Literal["verify"] = "verify"
    verify_id: TaskId
    model: ModelName
    model_hash: str = ""
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    output: str


class TokenScore(_Message):
    """One output token as the model saw it under teacher forcing."""

    rank: int = Field(ge=0)
    """How many vocabulary entries the model found likelier (0: its top choice)."""
    logprob: float
    top_logprob: float
    """Log-probability of the model's top choice at this position."""


class VerifyResult(_Message):
    """Per-token scores of a ``VerifyAssign``'s output, in order, then the
    end-of-sequence token's rank and log-probability after the last one.
    ``error`` says why the miner could not score (then the rest is empty)."""

    type: Literal["verified"] = "verified"
    verify_id: TaskId
    tokens: tuple[TokenScore, ...] = ()
    eos_rank: int = Field(default=0, ge=0)
    eos_logprob: float = 0.0
    error: str = ""


MinerMessage = Annotated[
    Register
    | ChallengeAnswer
    | Heartbeat
    | Draining
    | TaskChunk
    | TaskDone
    | TaskFailed
    | ModelsChanged
    | VerifyResult,
    Field(discriminator="type"),
]
RouterMessage = Annotated[
    Registered
    | Refused
    | Challenge
    | TaskAssign
    | TaskCancel
    | Park
    | LoadModel
    | UnloadModel
    | VerifyAssign,
    Field(discriminator="type"),
]

_MINER_MESSAGES: TypeAdapter[MinerMessage] = TypeAdapter(MinerMessage)
_ROUTER_MESSAGES: TypeAdapter[RouterMessage] = TypeAdapter(RouterMessage)


def parse_miner_message(frame: str | bytes) -> MinerMessage:
    """Parse a frame sent by a miner; raises ``pydantic.ValidationError`` if malformed."""
    return _MINER_MESSAGES.validate_json(frame)


def parse_router_message(frame: str | bytes) -> RouterMessage:
    """Parse a frame sent by a router; raises ``pydantic.ValidationError`` if malformed."""
    return _ROUTER_MESSAGES.validate_json(frame)


def encode(message: _Message) -> str:
    return message.model_dump_json(exclude_none=True)
