"""A miner's speed as the router believes it: the miner's own benchmark,
corrected by what the router observes on real tasks.

Claims are untrusted. The first observation replaces a claim outright (a
miner that claims 1,000 tokens/s and delivers 10 is scheduled as 10 from its
first task on); later observations move the estimate by an EWMA.
"""

from __future__ import annotations

from dataclasses import dataclass

from inferswarm.protocol import Capability
from inferswarm.router.schedule import Speed

SMOOTHING = 0.3
"""Weight of the newest observation."""
UNKNOWN_PROMPT_SPEED_FACTOR = 20.0
"""Prompt processing is assumed this many times faster than generation when
a miner did not measure it (typical of llama.cpp on CPUs and GPUs alike)."""
MIN_PROMPT_TOKENS_TO_LEARN = 32
"""TTFT of shorter prompts is mostly overhead, not prompt processing."""


def claimed_speed(
    capability: Capability | None, claimed_tokens_per_s: float | None
) -> Speed | None:
    if capability is not None:
        return Speed(
            prompt=capability.prompt_tokens_per_s,
            generation=capability.generation_tokens_per_s,
            batched_sequences=capability.batched_sequences,
            batched_generation=capability.batched_generation_tokens_per_s,
        )
    if claimed_tokens_per_s:
        return Speed(
            prompt=claimed_tokens_per_s * UNKNOWN_PROMPT_SPEED_FACTOR,
            generation=claimed_tokens_per_s,
        )
    return None


def _blend(old: float | None, new: float) -> float:
    return new if old is None else old + SMOOTHING * (new - old)


@dataclass
class SpeedTracker:
    claimed: Speed | None
    slots: int
    generation_factor: float | None = None
    prompt_factor: float | None = None
    observed_generation: float | None = None
    """EWMA of per-sequence generation tokens/s seen on real tasks."""
    observed_ttft_s: float | None = None
    observations: int = 0

    def observe(
        self,
        *,
        tokens: int,
        generation_s: float,
        concurrency: int,
        prompt_tokens: int,
        ttft_s: float,
    ) -> None:
        """Learn from one finished task: ``tokens`` generated over
        ``generation_s`` after the first, with ``concurrency`` tasks running."""
        self.observed_ttft_s = _blend(self.observed_ttft_s, ttft_s)
        if tokens >= 2 and generation_s > 0:
            speed = (tokens - 1) / generation_s
            self.observations += 1
            self.observed_generation = _blend(self.observed_generation, speed)
            if self.claimed is not None:
                ratio = speed / self.claimed.per_sequence(concurrency)
                self.generation_factor = _blend(self.generation_factor, ratio)
        if self.claimed is not None and prompt_tokens >= MIN_PROMPT_TOKENS_TO_LEARN and ttft_s > 0:
            # Cached prefixes make a prompt look fast; only slowness is believed.
            ratio = min(1.0, prompt_tokens / ttft_s / self.claimed.prompt)
            self.prompt_factor = _blend(self.prompt_factor, ratio)

    def effective(self) -> Speed | None:
        if self.claimed is None:
            if self.observed_generation is None:
                return None
            return Speed(
                prompt=self.observed_generation * UNKNOWN_PROMPT_SPEED_FACTOR,
                generation=self.observed_generation,
            )
        g = self.generation_factor if self.generation_factor is not None else 1.0
        p = self.prompt_factor if self.prompt_factor is not None else 1.0
        batched = self.claimed.batched_generation
        return Speed(
            prompt=self.claimed.prompt * p,
            generation=self.claimed.generation * g,
            batched_sequences=self.claimed.batched_sequences,
            batched_generation=None if batched is None else batched * g,
        )

    def aggregate_tokens_per_s(self) -> float | None:
        """Generation tokens/s with every slot busy: what tiers are made of."""
        speed = self.effective()
        return None if speed is None else speed.aggregate(self.slots)
