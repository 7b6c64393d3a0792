"""Locust users that stream OpenAI chat completions, for checking ``inferswarm bench``.

Locust's own timer stops when the response headers arrive if the body is
streamed, so each request's time is set to the end of its stream (end-to-end
latency); time to first token is reported as a second entry, ``ttft``. Both
then go through Locust's statistics (percentiles, requests/s) unchanged.

    LOADGEN_MODEL=fake-model locust -f bench/locustfile.py --headless \\
        -H http://127.0.0.1:8000 -u 8 -r 1000 -t 20s --csv out

Settings come from the environment: LOADGEN_MODEL, LOADGEN_MAX_TOKENS,
LOADGEN_PROMPT_WORDS, LOADGEN_API_KEY; with LOADGEN_SUMMARY=PATH, Locust's
final figures for each entry are also written there as JSON.
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, constant, events, task
from locust.env import Environment

from inferswarm.loadgen.workload import WORDS

MODEL = os.environ.get("LOADGEN_MODEL", "fake-model")
MAX_TOKENS = int(os.environ.get("LOADGEN_MAX_TOKENS", "32"))
PROMPT_WORDS = int(os.environ.get("LOADGEN_PROMPT_WORDS", "64"))
API_KEY = os.environ.get("LOADGEN_API_KEY")
SUMMARY = os.environ.get("LOADGEN_SUMMARY")


@events.quitting.add_listener
def save_summary(environment: Environment, **_: object) -> None:
    """Locust's own figures, as it computes them for its report, once every user has stopped."""
    if not SUMMARY or environment.stats is None:
        return
    summary = {
        entry.name: {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "requests_per_s": entry.total_rps,
            "mean_ms": entry.avg_response_time,
            **{
                f"p{round(100 * q)}_ms": entry.get_response_time_percentile(q)
                for q in (0.5, 0.9, 0.95, 0.99)
            },
        }
        for entry in environment.stats.entries.values()
    }
    with open(SUMMARY, "w") as file:
        json.dump(summary, file, indent=2)


class ChatStreamUser(HttpUser):
    """One user keeps one request in flight: ``-u N`` is concurrency N, as in ``--concurrency N``."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random(id(self))
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    @task
    def chat(self) -> None:
        prompt = " ".join(self.rng.choice(WORDS) for _ in range(PROMPT_WORDS))
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": True,
        }
        started = time.perf_counter()
        first_token: float | None = None
        with self.client.post(
            "/v1/chat/completions", json=body, stream=True, catch_response=True, name="chat"
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            done = False
            for line in response.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                choices = json.loads(data).get("choices") or [{}]
                if first_token is None and (choices[0].get("delta") or {}).get("content"):
                    first_token = time.perf_counter()
            ended = time.perf_counter()
            response.request_meta["response_time"] = 1000 * (ended - started)
            if not done:
                response.failure("the stream ended without [DONE]")
                return
            response.success()
        if first_token is not None:
            self.environment.events.request.fire(
                request_type="SSE",
                name="ttft",
                response_time=1000 * (first_token - started),
                response_length=0,
                exception=None,
                context={},
            )
