"""Memory-aware placement on recorded hardware snapshots (tests/fixtures/miners)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferswarm.miner.catalog import CatalogEntry
from inferswarm.miner.placement import (
    PlacementLimits,
    SpeedReference,
    parse_size,
    plan_placement,
    speed_reference,
)
from inferswarm.protocol import Capability, HardwareProfile, ModelName, Register

FIXTURES = Path(__file__).parent / "fixtures" / "miners"
GB = 10**9


def hardware(name: str) -> HardwareProfile:
    return Register.model_validate_json((FIXTURES / f"{name}.json").read_text()).hardware


def entry(
    family: str, variant: str, file_bytes: float, *, layers: int, kv_heads: int
) -> CatalogEntry:
    return CatalogEntry(
        path=Path(f"/models/{family}.{variant}.gguf"),
        name=ModelName(f"{family}:{variant}"),
        family=family,
        variant=variant,
        architecture="llama",
        parameters=0,
        trained_context=8192,
        layers=layers,
        kv_values_per_token=layers * kv_heads * 256,
        vocab_size=128256,
        file_bytes=int(file_bytes),
        file_sha256="",
        has_chat_template=True,
    )


# File sizes of Llama-3 8B and 70B GGUF variants as llama.cpp writes them.
LLAMA_8B = [
    entry("llama-3-8b", v, size, layers=32, kv_heads=8)
    for v, size in (
        ("q8_0", 8.54 * GB),
        ("q4_k_m", 4.92 * GB),
        ("q3_k_m", 4.02 * GB),
        ("q2_k", 3.18 * GB),
    )
]
LLAMA_70B = [
    entry("llama-3-70b", v, size, layers=80, kv_heads=8)
    for v, size in (("q8_0", 75.0 * GB), ("q4_k_m", 42.5 * GB), ("q2_k", 26.4 * GB))
]
CATALOG = LLAMA_8B + LLAMA_70B


def placed(name: str, limits: PlacementLimits | None = None) -> dict[str, int]:
    """Variant name -> GPU layers, for what the placement loads."""
    plan = plan_placement(hardware(name), CATALOG, limits or PlacementLimits())
    return {m.entry.name: m.gpu_layers for m in plan.models}


def test_an_arm_board_gets_the_3_bit_8b_and_no_70b() -> None:
    # 6 GiB available, 20 % kept: q4_k_m (5.2 GB with its KV cache) does not fit.
    assert placed("arm_board") == {"llama-3-8b:q3_k_m": 0}


def test_a_laptop_gets_the_8_bit_8b_on_its_cpu() -> None:
    assert placed("laptop_cpu") == {"llama-3-8b:q8_0": 0}


def test_a_consumer_gpu_offloads_what_fits_and_splits_the_70b() -> None:
    plan = placed("consumer_gpu")
    assert plan["llama-3-8b:q8_0"] == 32  # wholly in its 12 GiB
    # 70B q4_k_m: the VRAM left holds 2 of 80 layers, the rest fits its 64 GiB of RAM.
    assert plan["llama-3-70b:q4_k_m"] == 2


def test_a_datacenter_gpu_prefers_variants_wholly_in_vram() -> None:
    # 70B q8_0 would fit RAM split with the GPU; q4_k_m fits the 80 GB card whole.
    assert placed("datacenter_gpu") == {"llama-3-8b:q8_0": 32, "llama-3-70b:q4_k_m": 80}


def test_a_memory_limit_caps_what_is_loaded() -> None:
    limited = PlacementLimits(memory_limit_bytes=parse_size("5GB"))
    plan = plan_placement(hardware("laptop_cpu"), CATALOG, limited)
    assert [m.entry.name for m in plan.models] == ["llama-3-8b:q2_k"]
    assert plan.ram_budget_bytes == 4 * GB
    assert dict(plan.skipped)["llama-3-70b:q2_k"].startswith("needs")


def test_a_minimum_speed_trades_precision_for_speed() -> None:
    # The arm board measured 18 tokens/s on a 5.0 GB file; scaled by size,
    # q3_k_m would make ~22 tokens/s and q2_k ~28.
    reference = SpeedReference(file_bytes=5 * GB, generation_tokens_per_s=18.0)
    fast = PlacementLimits(min_tokens_per_s=25.0)
    plan = plan_placement(hardware("arm_board"), LLAMA_8B, fast, reference)
    assert [m.entry.name for m in plan.models] == ["llama-3-8b:q2_k"]
    too_fast = PlacementLimits(min_tokens_per_s=1000.0)
    plan = plan_placement(hardware("arm_board"), LLAMA_8B, too_fast, reference)
    assert [m.entry.name for m in plan.models] == ["llama-3-8b:q2_k"]  # the fastest that fits


def test_nothing_fits_a_tiny_limit() -> None:
    plan = plan_placement(
        hardware("laptop_cpu"), CATALOG, PlacementLimits(memory_limit_bytes=parse_size("1GB"))
    )
    assert plan.models == ()
    assert len(plan.skipped) == len(CATALOG)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("300MB", 300 * 10**6),
        ("2GiB", 2 * 2**30),
        ("8G", 8 * GB),
        ("512 mib", 512 * 2**20),
        ("1024", 1024),
    ],
)
def test_sizes_read_as_operators_write_them(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_an_unreadable_size_says_how_to_write_one() -> None:
    with pytest.raises(ValueError, match="300MB"):
        parse_size("lots")


SHIPPED_Q4_1_BYTES = 98_362_432
"""The SmolLM2-135M Q4_1 file whose speed each fixture recorded."""
SMOLLM = [
    entry("smollm2-135m-instruct", v, size, layers=30, kv_heads=3)
    for v, size in (
        ("q8_0", 144.8e6),
        ("q4_1", SHIPPED_Q4_1_BYTES),
        ("q4_k_m", 105.5e6),
        ("q3_k_m", 93.5e6),
        ("q2_k", 88.2e6),
    )
]


def with_min_speed(name: str, min_speed: float) -> str:
    """The SmolLM2 variant a fixture loads under ``min_speed``, its speed
    estimated from the speed the fixture recorded for the shipped file."""
    recorded = Register.model_validate_json((FIXTURES / f"{name}.json").read_text())
    reference = speed_reference(SHIPPED_Q4_1_BYTES, recorded.models[0].capability)
    limits = PlacementLimits(min_tokens_per_s=min_speed)
    plan = plan_placement(recorded.hardware, SMOLLM, limits, reference)
    return plan.models[0].entry.variant


@pytest.mark.parametrize(
    ("fixture", "min_speed", "variant"),
    [
        ("laptop_cpu", 0, "q8_0"),  # no minimum: the most precise
        ("laptop_cpu", 70, "q8_0"),  # 110 tokens/s measured on q4_1 -> ~75 on q8_0
        ("laptop_cpu", 100, "q4_1"),  # q8_0 too slow; q4_1 measured 110
        ("laptop_cpu", 112, "q3_k_m"),  # q4_k_m ~103 falls short, q3_k_m ~116
        ("arm_board", 15, "q4_1"),  # 18 on q4_1; q8_0 would make ~12
        ("arm_board", 18.5, "q3_k_m"),  # ~18.9
        ("arm_board", 19, "q2_k"),  # ~20
        ("arm_board", 100, "q2_k"),  # none is that fast: the fastest that fits
        ("consumer_gpu", 1000, "q8_0"),  # wholly on the GPU: the CPU estimate does not apply
    ],
)
def test_min_speed_keeps_the_most_precise_variant_fast_enough(
    fixture: str, min_speed: float, variant: str
) -> None:
    assert with_min_speed(fixture, min_speed) == variant


def test_a_variant_left_out_for_speed_says_so() -> None:
    recorded = Register.model_validate_json((FIXTURES / "arm_board.json").read_text())
    reference = speed_reference(SHIPPED_Q4_1_BYTES, recorded.models[0].capability)
    plan = plan_placement(
        recorded.hardware, SMOLLM, PlacementLimits(min_tokens_per_s=15), reference
    )
    why = dict(plan.skipped)
    assert why["smollm2-135m-instruct:q8_0"] == "below the minimum speed (~12.2 tokens/s estimated)"
    assert why["smollm2-135m-instruct:q2_k"] == "a more precise variant fits"


def test_no_measurement_gives_no_reference() -> None:
    assert speed_reference(SHIPPED_Q4_1_BYTES, None) is None
    assert speed_reference(0, hardware_capability("laptop_cpu")) is None


def hardware_capability(name: str) -> Capability | None:
    return (
        Register.model_validate_json((FIXTURES / f"{name}.json").read_text()).models[0].capability
    )
