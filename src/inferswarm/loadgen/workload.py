"""What to send and when: prompts, output lengths and arrival times, all from a seed.

The same seed gives the same requests in the same order whatever the mode or
the server, so two runs (or two tools) can be compared on identical work.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from inferswarm.loadgen.distributions import LengthDistribution

WORDS = (
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "government",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "community",
    "name",
    "president",
    "team",
    "minute",
    "idea",
    "kid",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "others",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "guy",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
)
"""Common English words, each one token for most tokenizers once a space precedes it."""


@dataclass(frozen=True)
class PlannedRequest:
    index: int
    prompt: str
    prompt_words: int
    max_tokens: int


def plan_requests(
    seed: int, prompt_lengths: LengthDistribution, output_lengths: LengthDistribution
) -> Iterator[PlannedRequest]:
    """An endless, reproducible sequence of requests: prompt of N words, max_tokens M."""
    rng = random.Random(seed)
    for index in itertools.count():
        words = prompt_lengths.sample(rng)
        max_tokens = output_lengths.sample(rng)
        prompt = " ".join(rng.choice(WORDS) for _ in range(words))
        yield PlannedRequest(index, prompt, words, max_tokens)


def poisson_arrivals(rate: float, seed: int) -> Iterator[float]:
    """Send times in seconds from the start for a Poisson process of ``rate`` requests/s.

    The first request goes at 0; the gaps after it are exponential with mean 1/rate.
    """
    if rate <= 0:
        raise ValueError(f"the request rate must be positive, not {rate}")
    rng = random.Random(f"arrivals-{seed}")
    at = 0.0
    while True:
        yield at
        at += rng.expovariate(rate)


def within(
    arrivals: Iterator[float], duration_s: float | None, count: int | None
) -> Iterator[float]:
    """The arrivals that fall before ``duration_s`` and within the first ``count``."""
    limited = itertools.islice(arrivals, count) if count is not None else arrivals
    if duration_s is None:
        return limited
    return itertools.takewhile(lambda at: at < duration_s, limited)
