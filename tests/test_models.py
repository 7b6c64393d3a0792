from __future__ import annotations

from pathlib import Path

from inferswarm.miner.models import default_model_path, model_name_for


def test_model_names_come_from_the_file_name() -> None:
    assert model_name_for(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "smollm2-135m-instruct:q4_1"
    assert model_name_for(Path("/m/gemma-3-270m-it-Q4_K_M.gguf")) == "gemma-3-270m-it:q4_k_m"
    assert model_name_for(Path("llama-7b.f16.gguf")) == "llama-7b:f16"
    assert model_name_for(Path("plain.gguf")) == "plain"


def test_the_shipped_model_is_found_without_importing_its_package() -> None:
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
