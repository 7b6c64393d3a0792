"""The real thing: llama.cpp miners on the shipped SmolLM2-135M Q4_1 model,
behind a real router, driven by the official openai client."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from inferswarm.miner.models import default_model_path
from netutil import Network, Proc, network
from test_cli import api_key_from, start_up, stop_up

pytestmark = pytest.mark.llama
MODEL = "smollm2-135m-instruct:q4_1"


@pytest.fixture(scope="module")
def llama_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    workdir = tmp_path_factory.mktemp("llama")
    with network(workdir) as net:
        net.start_router()
        for name in ("llama-1", "llama-2"):
            start_llama(net, name, workdir / "cache")
        net.wait_miners(2, timeout=120)
        yield net


@pytest.fixture
def api(llama_net: Network) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=llama_net.base_url + "/v1", api_key="none", max_retries=0, timeout=120
    ) as client:
        yield client


def tokens_of(text: str) -> int:
    from llama_cpp import Llama

    vocab = Llama(model_path=str(default_model_path()), vocab_only=True, verbose=False)
    return len(vocab.tokenize(text.encode(), add_bos=True, special=False))


def start_llama(net: Network, name: str, cache: Path) -> Proc:
    """A one-thread llama.cpp miner with a 1,024-token context and a shared benchmark cache."""
    return net.start_miner(
        name, "--threads", "1", "--ctx", "1024", "--cache-dir", str(cache), engine="llamacpp"
    )


QUESTION = [{"role": "user", "content": "What color is the sky on a clear day?"}]


def test_models_list_names_the_shipped_model(api: openai.OpenAI) -> None:
    # The family, which any variant answers, and the variant itself.
    assert [m.id for m in api.models.list().data] == ["smollm2-135m-instruct", MODEL]


def test_chat_answers_for_real(api: openai.OpenAI) -> None:
    reply = api.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=30, temperature=0
    )
    text = reply.choices[0].message.content or ""
    assert "blue" in text
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens <= 30
    assert reply.usage.prompt_tokens > 10  # the chat template wraps the question
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 30


def test_streaming_matches_non_streaming_on_every_miner(
    api: openai.OpenAI, llama_net: Network
) -> None:
    """Greedy decoding is deterministic, so both miners and both modes agree."""
    rotate = {"inferswarm": {"policy": "round_robin"}}  # visit both miners (no auth: admin)
    texts = set()
    for _ in range(2):
        reply = api.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=20, temperature=0, extra_body=rotate
        )
        texts.add(reply.choices[0].message.content)
        stream = api.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=20,
            temperature=0,
            stream=True,
            extra_body=rotate,
        )
        texts.add("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    assert len(texts) == 1
    done = [m["completed"] for m in llama_net.miners()]
    assert all(isinstance(n, int) and n > 0 for n in done), done


def test_completion_usage_and_length_are_honest(api: openai.OpenAI) -> None:
    prompt = "Once upon a time, in a small village,"
    reply = api.completions.create(model=MODEL, prompt=prompt, max_tokens=7, temperature=0)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens == tokens_of(prompt)
    assert reply.choices[0].text.strip()


def test_stop_sequences_end_generation_without_the_stop(api: openai.OpenAI) -> None:
    reply = api.completions.create(
        model=MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0, stop=[","]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert "," not in reply.choices[0].text
    assert reply.choices[0].text.strip() == "6"


def test_a_prompt_longer_than_the_context_is_a_clear_400(api: openai.OpenAI) -> None:
    # Far too long: the router's lower-bound estimate already knows.
    with pytest.raises(openai.BadRequestError) as early:
        api.completions.create(model=MODEL, prompt="hello " * 1200, max_tokens=10)
    assert early.value.code == "context_length_exceeded"
    assert "1024 tokens" in early.value.message
    # Too long only by the real tokenizer's count: the miner says so, exactly.
    with pytest.raises(openai.BadRequestError) as exact:
        api.completions.create(model=MODEL, prompt="cat " * 1100, max_tokens=10)
    assert exact.value.code == "context_length_exceeded"
    assert "context window is 1024 tokens, but the prompt has 1101 tokens" in exact.value.message


def test_make_up_default_network_serves_a_real_chat(tmp_path: Path) -> None:
    proc, lines, port = start_up(tmp_path, "--miners", "2")
    try:
        key = api_key_from(lines)
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0
        ) as client:
            reply = client.chat.completions.create(
                model=MODEL, messages=QUESTION, max_tokens=30, temperature=0
            )
            assert "blue" in (reply.choices[0].message.content or "")
            answers = run_real_batch(client)
        assert answers["sky"] == reply.choices[0].message.content, "a batch line answers as alone"
        assert all(answers.values())
    finally:
        stop_up(proc, port)


def run_real_batch(client: openai.OpenAI) -> dict[str, str]:
    """A three-line batch through the Batch API; each custom_id's answer."""
    questions = {
        "sky": QUESTION[0]["content"],
        "grass": "What color is grass?",
        "sum": "What is two plus two?",
    }
    lines = [
        json.dumps(
            {
                "custom_id": custom_id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": MODEL,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": 30,
                    "temperature": 0,
                },
            }
        )
        for custom_id, question in questions.items()
    ]
    upload = client.files.create(file=("q.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 180
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id and not batch.error_file_id
    output = [
        json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()
    ]
    return {
        line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"]
        for line in output
    }


def test_map_reduce_cli_digests_a_long_text_on_real_miners(
    llama_net: Network, tmp_path: Path
) -> None:
    from pydoc_data.topics import topics

    names = ("assert", "break", "continue", "del", "pass", "return", "global", "nonlocal", "for")
    text = "\n\n".join(topics[name] for name in names)
    document_tokens = tokens_of(text)
    assert document_tokens > 1200, "more than fits the miners' 1,024-token contexts with answers"
    source = tmp_path / "doc.txt"
    source.write_text(text)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferswarm",
            "map-reduce",
            str(source),
            "--router",
            llama_net.base_url,
            "--map-max-tokens",
            "32",
            "--reduce-max-tokens",
            "48",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["text"].strip()
    usage = result["usage"]
    assert usage["tasks"] >= 3, "several map tasks and a reduce"
    # Every token of the document went through some map task (overlap adds more).
    assert usage["prompt_tokens"] > document_tokens
    assert "map" in run.stderr  # the progress bar went to stderr


def test_heartbeats_keep_flowing_during_generation(api: openai.OpenAI, llama_net: Network) -> None:
    """Decoding runs off the event loop, so a busy miner is never mistaken for a dead one."""
    stream = api.completions.create(
        model=MODEL,
        prompt="The history of the Roman Empire begins",
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    silences = []
    for index, _ in enumerate(stream):
        if index % 10 == 0:
            busy = [m for m in llama_net.miners() if m["busy"]]
            silences += [float(m["last_heartbeat_s"]) for m in busy]  # type: ignore[arg-type]
    assert silences, "the generation finished before any sample was taken"
    assert max(silences) < 1.5


def test_miners_benchmark_once_and_report_measured_capability(llama_net: Network) -> None:
    for miner in llama_net.miners():
        capability = miner["capability"]
        assert isinstance(capability, dict) and capability["source"] == "benchmark"
        assert capability["generation_tokens_per_s"] > 1
        # (prompt vs generation speed is not compared: both miners benchmark at
        # once on this 2-core machine, so each measures the other's load too)
        assert capability["prompt_tokens_per_s"] > 1
        assert miner["tier"] in (1, 2, 3)
    cache = llama_net.workdir / "cache"
    restarted = start_llama(llama_net, "llama-3", cache)
    llama_net.wait_miners(3, timeout=120)
    assert "using cached benchmark" in restarted.output()
    restarted.stop()
    llama_net.wait_miners(2, timeout=30)


def test_a_real_stream_continues_on_another_miner_when_its_miner_is_killed(tmp_path: Path) -> None:
    prompt = "The history of the Roman Empire begins"
    with network(tmp_path) as net:
        net.start_router()
        start_llama(net, "first", tmp_path)
        net.wait_miners(1, timeout=120)
        with openai.OpenAI(
            base_url=net.base_url + "/v1", api_key="none", max_retries=0, timeout=120
        ) as client:
            whole = client.completions.create(
                model=MODEL, prompt=prompt, max_tokens=40, temperature=0
            )
            start_llama(net, "second", tmp_path)
            net.wait_miners(2, timeout=120)
            # Occupy nothing else: capacity_aware may pick either; kill whichever streams.
            parts: list[str] = []
            for chunk in client.completions.create(
                model=MODEL,
                prompt=prompt,
                max_tokens=40,
                temperature=0,
                stream=True,
                extra_body={"inferswarm": {"policy": "round_robin"}},
            ):
                if chunk.choices and chunk.choices[0].text:
                    parts.append(chunk.choices[0].text)
                    if len(parts) == 8:
                        streaming = [m["name"] for m in net.miners() if m["busy"]]
                        for proc in net.procs:
                            if proc.name in streaming:
                                proc.stop(signal.SIGKILL)
        migrated = "".join(parts)
        assert len(net.miners()) == 1
    # Greedy decoding continued from the text so far gives the same answer as
    # the uninterrupted run: no text repeated, none missing.
    assert migrated == whole.choices[0].text


def test_concurrent_streams_on_batching_miners_match_solo_answers(
    api: openai.OpenAI, llama_net: Network
) -> None:
    """Continuous batching: many streams at once, each the answer it gets alone."""
    assert all(m["slots"] == 8 for m in llama_net.miners())  # chosen from memory
    prompts = [f"Fact number {n} about the ocean:" for n in range(6)]

    def solo(prompt: str) -> str:
        reply = api.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
        return reply.choices[0].text

    def streamed(prompt: str) -> str:
        stream = api.completions.create(
            model=MODEL, prompt=prompt, max_tokens=16, temperature=0, stream=True
        )
        return "".join(c.choices[0].text for c in stream if c.choices)

    expected = [solo(p) for p in prompts]
    with ThreadPoolExecutor(len(prompts)) as pool:
        assert list(pool.map(streamed, prompts)) == expected


def test_miners_report_their_real_cache_and_cache_aware_routing_follows_it(
    llama_net: Network,
) -> None:
    system = "You are a careful assistant for questions about rivers and lakes. " * 12
    url = llama_net.base_url + "/v1/chat/completions"

    def ask(question: str) -> str:
        body = {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ],
            "max_tokens": 2,
            "temperature": 0,
            "inferswarm": {"policy": "cache_aware"},
        }
        response = httpx.post(url, json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.headers["x-inferswarm-miner-id"]

    first = ask("Which river is longest?")

    def reported() -> int:
        miners = {m["id"]: m for m in llama_net.miners()}
        return int(miners[first]["cached_prefix_blocks"] or 0)

    deadline = time.monotonic() + 10
    while reported() < 2:  # the system prompt alone is over 2 blocks of 256 characters
        assert time.monotonic() < deadline, "the miner never reported the prompt it holds"
        time.sleep(0.2)
    assert ask("Which lake is deepest?") == first
