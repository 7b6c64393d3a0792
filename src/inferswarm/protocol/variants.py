"""Model names on the network: a family and a quantisation variant.

``smollm2-135m-instruct:q8_0`` is the family ``smollm2-135m-instruct`` in the
variant ``q8_0``. Router and miner share this vocabulary, so both rank
variants by the same precision.

Which served names may answer a request is a pure function here too
(``resolve_variants``): a request names a family (any variant will do), a
variant (that one only) or a model that has no variants (``fake-model``);
``min_precision`` keeps only variants at least as precise as the named type.
The scheduler and the router's request checks both use it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from inferswarm.protocol.ids import ModelName

BITS_PER_WEIGHT: dict[str, float] = {
    "f32": 32.0,
    "f16": 16.0,
    "bf16": 16.0,
    "q8_0": 8.5,
    "q6_k": 6.56,
    "q5_1": 6.0,
    "q5_k_m": 5.69,
    "q5_0": 5.5,
    "q5_k_s": 5.54,
    "q4_1": 5.0,
    "q4_k_m": 4.85,
    "q4_0": 4.5,
    "q4_k_s": 4.58,
    "iq4_nl": 4.5,
    "iq4_xs": 4.25,
    "q3_k_l": 4.27,
    "q3_k_m": 3.91,
    "q3_k_s": 3.5,
    "iq3_m": 3.66,
    "iq3_xxs": 3.06,
    "q2_k": 3.35,
    "iq2_xs": 2.31,
}
"""Effective bits per weight of llama.cpp's quantisation types (llama.cpp's
quantize table), the precision by which variants are ranked."""


class ModelRef(NamedTuple):
    family: str
    variant: str
    """Empty when the name names the family only."""


def split_model_name(name: str) -> ModelRef:
    """``family:variant`` -> its parts; a name without ``:`` is a family."""
    family, _, variant = name.partition(":")
    return ModelRef(family, variant.lower())


def precision_bits(variant: str) -> float | None:
    """Bits per weight of a variant, or None for a name this table does not know."""
    return BITS_PER_WEIGHT.get(variant.lower())


def known_variants() -> tuple[str, ...]:
    """Quantisation types from the most to the least precise."""
    return tuple(sorted(BITS_PER_WEIGHT, key=lambda v: -BITS_PER_WEIGHT[v]))


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
    ranked = sorted(matching, key=lambda n: (-_rank(n), n))
    if floor is None:
        return Resolution(tuple(ranked))
    kept = tuple(n for n in ranked if _rank(n) >= floor)
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


def _rank(name: ModelName) -> float:
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
