"""Verification on real llama.cpp miners (the shipped SmolLM2-135M Q4_1): with
redundancy 3 and one miner corrupting its answers, the client gets the answer
the honest miners agree on, token for token, and never the corrupt one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from netutil import Network
from test_llama import MODEL, start_llama

pytestmark = pytest.mark.llama

QUESTIONS = ("What color is the sky on a clear day?", "Name a fruit that is yellow.")


def test_redundancy_3_outvotes_a_corrupt_llama_miner(net: Network, tmp_path: Path) -> None:
    net.start_router()
    cache = tmp_path / "cache"
    start_llama(net, "honest-1", cache)
    start_llama(net, "honest-2", cache)
    net.start_miner(
        "cheat",
        "--threads", "1", "--ctx", "1024", "--cache-dir", str(cache),
        "--fault", "corrupt",
        engine="llamacpp",
    )  # fmt: skip
    net.wait_miners(3, timeout=180)
    ids = {str(m["name"]): str(m["id"]) for m in net.miners()}
    with openai.OpenAI(
        base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=180
    ) as api:
        for question in QUESTIONS[:1]:
            raw = api.chat.completions.with_raw_response.create(
                model=MODEL,
                messages=[{"role": "user", "content": question}],
                max_tokens=16,
                extra_body={"inferswarm": {"redundancy": 3, "consensus": "exact"}},
            )
            report = raw.http_response.json()["inferswarm"]["verification"][0]
            assert report["disagreed"] == [ids["cheat"]]
            assert sorted(report["agreed"]) == sorted([ids["honest-1"], ids["honest-2"]])
            answer = raw.parse().choices[0].message.content
            assert answer
            # One lost vote may be a false verdict: the cheat is only a suspect,
            # trusted less. The answer just verified is now a canary; the idle
            # suspect gets it, fails it again and again, and is quarantined.
            assert states(net)["cheat"]["reputation"] < states(net)["honest-1"]["reputation"]
            deadline = time.monotonic() + 120
            while states(net)["cheat"]["state"] != "quarantined":
                assert time.monotonic() < deadline, states(net)
                time.sleep(0.5)
            # The same request, greedy, on an honest miner alone gives the same text.
            alone = api.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": question}],
                max_tokens=16,
                temperature=0,
                seed=0,
            )
            assert alone.choices[0].message.content == answer
    miners = states(net)
    assert miners["honest-1"]["state"] == miners["honest-2"]["state"] == "live"
    assert miners["cheat"]["verification"]["failed"] >= 2  # the vote and its canaries


def states(net: Network) -> dict[str, Any]:
    return {str(m["name"]): m for m in net.miners()}
