"""Model names on the network: a family and a quantisation variant.

``smollm2-135m-instruct:q8_0`` is the family ``smollm2-135m-instruct`` in the
variant ``q8_0``. Router and miner share this vocabulary, so both rank
variants by the same precision.
"""

from __future__ import annotations

from typing import NamedTuple

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
