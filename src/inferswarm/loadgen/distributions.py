"""Length distributions for prompts and outputs, parsed from a small syntax.

``128`` is a fixed length, ``uniform:64,256`` draws whole numbers from 64 to
256 inclusive, ``normal:128,32`` draws from a normal distribution (rounded,
never below 1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYNTAX_HELP = (
    "a whole number (128), uniform:LOW,HIGH (uniform:64,256) or normal:MEAN,SD (normal:128,32)"
)


class DistributionSyntaxError(ValueError):
    """A length distribution that could not be parsed; the message says the accepted syntax."""


@dataclass(frozen=True)
class Fixed:
    value: int

    def sample(self, rng: random.Random) -> int:
        return self.value

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class Uniform:
    low: int
    high: int

    def sample(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def __str__(self) -> str:
        return f"uniform:{self.low},{self.high}"


@dataclass(frozen=True)
class Normal:
    mean: float
    sd: float

    def sample(self, rng: random.Random) -> int:
        return max(1, round(rng.gauss(self.mean, self.sd)))

    def __str__(self) -> str:
        return f"normal:{self.mean:g},{self.sd:g}"


LengthDistribution = Fixed | Uniform | Normal


def parse_distribution(text: str) -> LengthDistribution:
    """Parse ``128``, ``fixed:128``, ``uniform:64,256`` or ``normal:128,32``."""
    kind, _, args = text.strip().partition(":")
    if not args:
        kind, args = "fixed", kind
    numbers = [_number(part, text) for part in args.split(",")]
    kind = kind.lower()
    if kind == "fixed" and len(numbers) == 1:
        return Fixed(_length(numbers[0], text))
    if kind == "uniform" and len(numbers) == 2:
        low, high = (_length(n, text) for n in numbers)
        if low > high:
            raise DistributionSyntaxError(
                f"{text!r}: the low end {low} is above the high end {high}"
            )
        return Uniform(low, high)
    if kind == "normal" and len(numbers) == 2:
        mean, sd = numbers
        if mean < 1 or sd < 0:
            raise DistributionSyntaxError(
                f"{text!r}: the mean must be at least 1 and the sd not negative"
            )
        return Normal(mean, sd)
    raise DistributionSyntaxError(
        f"cannot read the length distribution {text!r}; use {SYNTAX_HELP}"
    )


def _number(part: str, text: str) -> float:
    try:
        return float(part)
    except ValueError:
        raise DistributionSyntaxError(
            f"{part.strip()!r} in {text!r} is not a number; use {SYNTAX_HELP}"
        ) from None


def _length(number: float, text: str) -> int:
    if number != int(number) or number < 1:
        raise DistributionSyntaxError(f"{text!r}: lengths must be whole numbers of at least 1")
    return int(number)
