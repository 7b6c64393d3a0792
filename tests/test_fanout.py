"""Fan-out inside one request: several prompts and ``n > 1`` run as separate
tasks on several miners and come back in OpenAI's order, streamed or not."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import httpx
import openai
import pytest

from inferswarm.router.segment.fanout import plan_choices
from netutil import Network

MODEL = "fake-model"
TAG = re.compile(r"^ \[(?P<miner>[^:]+):(?P<word>[^:]*):(?P<seed>[^\]]+)\]")


def test_choices_are_prompt_major_with_distinct_seeds() -> None:
    choices = plan_choices(prompts=2, n=3, seed=10)
    assert [(c.index, c.prompt_index, c.seed) for c in choices] == [
        (0, 0, 10),
        (1, 0, 11),
        (2, 0, 12),
        (3, 1, 10),
        (4, 1, 11),
        (5, 1, 12),
    ]
    assert {c.seed for c in plan_choices(prompts=1, n=2, seed=None)} == {None}


@pytest.fixture
def three_miners(net: Network) -> Network:
    net.start_router()
    for name in ("m1", "m2", "m3"):
        # One slot each at 40 tokens/s: six 8-token tasks only finish together
        # if they spread over the miners.
        net.start_miner(name, "--fake-echo", "--slots", "1", "--fake-speed", "40")
    net.wait_miners(3)
    return net


def api(net: Network) -> openai.OpenAI:
    return openai.OpenAI(base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=60)


def tag(text: str) -> dict[str, str]:
    match = TAG.match(text)
    assert match, f"no echo tag in {text!r}"
    return match.groupdict()


def test_prompts_and_n_fan_out_across_miners_in_order(three_miners: Network) -> None:
    prompts = ["first alpha", "second beta", "third gamma"]
    with api(three_miners) as client:
        reply = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=8, seed=7)
    assert [c.index for c in reply.choices] == list(range(6))
    tags = [tag(c.text) for c in reply.choices]
    assert [t["word"] for t in tags] == ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]
    assert [t["seed"] for t in tags] == ["7", "8"] * 3
    assert len({t["miner"] for t in tags}) == 3, "six tasks should use all three miners"
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6 * 8
    assert reply.usage.prompt_tokens == 2 * 3  # each prompt counted once, not once per choice


def test_echo_prepends_each_choices_own_prompt(three_miners: Network) -> None:
    with api(three_miners) as client:
        reply = client.completions.create(
            model=MODEL, prompt=["one", "two"], max_tokens=2, echo=True
        )
    assert [c.text.split(" [")[0] for c in reply.choices] == ["one", "two"]


def test_streamed_fan_out_reassembles_by_index(three_miners: Network) -> None:
    texts: dict[int, str] = defaultdict(str)
    finishes: dict[int, str | None] = {}
    usage: Any = None
    with api(three_miners) as client:
        stream = client.completions.create(
            model=MODEL,
            prompt=["left", "right"],
            n=2,
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                texts[choice.index] += choice.text
                if choice.finish_reason:
                    finishes[choice.index] = choice.finish_reason
    assert sorted(texts) == [0, 1, 2, 3]
    assert [tag(texts[i])["word"] for i in range(4)] == ["left", "left", "right", "right"]
    assert all(texts[i].endswith(" w1 w2 w3 w4") for i in range(4))
    assert finishes == {i: "length" for i in range(4)}
    assert usage.completion_tokens == 20


def test_chat_n_gives_n_choices_streamed_and_not(three_miners: Network) -> None:
    messages: Any = [{"role": "user", "content": "say something"}]
    with api(three_miners) as client:
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, n=3, max_tokens=4, seed=1
        )
        assert [c.index for c in reply.choices] == [0, 1, 2]
        assert [tag(c.message.content or "")["seed"] for c in reply.choices] == ["1", "2", "3"]
        stream = client.chat.completions.create(
            model=MODEL, messages=messages, n=3, max_tokens=4, stream=True
        )
        texts: dict[int, str] = defaultdict(str)
        for chunk in stream:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    assert sorted(texts) == [0, 1, 2]
    assert all(tag(t)["word"] == "something" for t in texts.values())


def test_fan_out_limits_are_clear_400s(three_miners: Network) -> None:
    url = three_miners.base_url + "/v1/completions"
    too_many = httpx.post(url, json={"model": MODEL, "prompt": ["x"] * 20, "n": 10}, timeout=10)
    assert too_many.status_code == 400
    assert "Batch API" in too_many.json()["error"]["message"]
    empty = httpx.post(url, json={"model": MODEL, "prompt": []}, timeout=10)
    assert empty.status_code == 400
    assert "empty" in empty.json()["error"]["message"]
