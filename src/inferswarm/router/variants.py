"""Which served models may answer a request for a model name: pure functions.

A request names a family (``smollm2-135m-instruct``: any variant will do), a
variant (``smollm2-135m-instruct:q8_0``: that one only) or a model that has
no variants (``fake-model``). ``min_precision`` keeps only variants at least
as precise as the named quantisation type, for accuracy-sensitive work.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from inferswarm.protocol import ModelName, known_variants, precision_bits, split_model_name


class UnknownPrecision(ValueError):
    """``min_precision`` names no quantisation type this router knows."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The served names that may answer a request, most precise first; when
    there are none, ``why_none`` says why."""

    variants: tuple[ModelName, ...]
    why_none: str = ""
    too_imprecise: tuple[ModelName, ...] = ()
    """Variants of the request that ``min_precision`` turned away."""


def resolve_variants(
    requested: str, served: Collection[ModelName], min_precision: str | None = None
) -> Resolution:
    """The names in ``served`` that may answer a request for ``requested``.

    Raises ``UnknownPrecision`` when ``min_precision`` is not a known type.
    """
    floor = _floor(min_precision)
    if requested in served:
        matching: list[ModelName] = [ModelName(requested)]
    else:
        family, variant = split_model_name(requested)
        matching = [] if variant else [n for n in served if split_model_name(n).family == family]
    if not matching:
        return Resolution((), f"no connected miner serves model {requested!r}")
    ranked = sorted(matching, key=lambda n: (-_bits(n), n))
    if floor is None:
        return Resolution(tuple(ranked))
    kept = tuple(n for n in ranked if _bits(n) >= floor)
    if kept:
        return Resolution(kept)
    return Resolution(
        (),
        f"no live variant of {requested!r} is at least as precise as {min_precision}",
        tuple(ranked),
    )


def _floor(min_precision: str | None) -> float | None:
    if min_precision is None:
        return None
    bits = precision_bits(min_precision)
    if bits is None:
        raise UnknownPrecision(
            f"unknown min_precision {min_precision!r}; use one of: {', '.join(known_variants())}"
        )
    return bits


def _bits(name: ModelName) -> float:
    """Precision of a served name; a name without a known variant ranks lowest."""
    return precision_bits(split_model_name(name).variant) or 0.0


def variant_on(
    variants: Sequence[ModelName], context_lengths: Mapping[ModelName, int], needed_tokens: int
) -> ModelName | None:
    """The most precise of ``variants`` that a miner serves with a context
    window of at least ``needed_tokens``; None if it serves none."""
    for name in variants:
        window = context_lengths.get(name)
        if window is not None and needed_tokens <= window:
            return name
    return None
