"""Per-request records and the summary of a run: percentiles, throughput, errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class RequestRecord:
    """One request as the client saw it; times are seconds from the start of the run."""

    index: int
    prompt_words: int
    max_tokens: int
    start_s: float
    end_s: float = 0.0
    ttft_s: float | None = None
    chunk_gaps_s: list[float] = field(default_factory=list)
    """Time between successive chunks that carried text: the inter-token latency samples."""
    output_tokens: int = 0
    prompt_tokens: int | None = None
    tokens_counted_from: str = "chunks"
    """``usage`` when the server reported the counts, else ``chunks`` (one token per chunk)."""
    error_kind: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_kind is None

    @property
    def e2e_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first, the decode speed this request saw."""
        if self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class Distribution:
    """Mean and percentiles of one latency, in seconds."""

    count: int
    mean: float | None
    percentiles: dict[int, float | None]

    @classmethod
    def of(cls, samples: Sequence[float]) -> Distribution:
        if not samples:
            return cls(0, None, dict.fromkeys(PERCENTILES))
        values = np.asarray(samples, dtype=float)
        cuts = np.percentile(values, PERCENTILES)
        return cls(
            len(values),
            float(values.mean()),
            {p: float(v) for p, v in zip(PERCENTILES, cuts, strict=True)},
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {"count": self.count, "mean": self.mean} | {
            f"p{p}": v for p, v in self.percentiles.items()
        }


@dataclass(frozen=True)
class Summary:
    requests: int
    succeeded: int
    failed: int
    elapsed_s: float
    request_throughput: float
    output_token_throughput: float
    output_tokens: int
    prompt_tokens: int | None
    ttft: Distribution
    itl: Distribution
    tpot: Distribution
    e2e: Distribution
    errors: dict[str, int]
    first_errors: dict[str, str]
    client_cpu_s: float
    client_cpu_per_request_ms: float | None
    client_cpu_share: float
    """Client CPU time over wall time: near 1.0 means the generator used a whole core."""

    def as_dict(self) -> dict[str, object]:
        plain: dict[str, object] = {}
        for name, value in self.__dict__.items():
            plain[name] = value.as_dict() if isinstance(value, Distribution) else value
        return plain


def summarise(records: Sequence[RequestRecord], client_cpu_s: float) -> Summary:
    """Summarise a run; throughput is over the span from the first send to the last answer."""
    good = [r for r in records if r.ok]
    elapsed = (max(r.end_s for r in records) - min(r.start_s for r in records)) if records else 0.0
    output_tokens = sum(r.output_tokens for r in good)
    prompt_counts = [r.prompt_tokens for r in good if r.prompt_tokens is not None]
    errors = Counter(r.error_kind for r in records if r.error_kind is not None)
    first_errors: dict[str, str] = {}
    for r in records:
        if r.error_kind is not None and r.error_kind not in first_errors:
            first_errors[r.error_kind] = r.error_message or ""
    return Summary(
        requests=len(records),
        succeeded=len(good),
        failed=len(records) - len(good),
        elapsed_s=elapsed,
        request_throughput=len(good) / elapsed if elapsed > 0 else 0.0,
        output_token_throughput=output_tokens / elapsed if elapsed > 0 else 0.0,
        output_tokens=output_tokens,
        prompt_tokens=sum(prompt_counts) if len(prompt_counts) == len(good) and good else None,
        ttft=Distribution.of([r.ttft_s for r in good if r.ttft_s is not None]),
        itl=Distribution.of([gap for r in good for gap in r.chunk_gaps_s]),
        tpot=Distribution.of([t for r in good if (t := r.tpot_s) is not None]),
        e2e=Distribution.of([r.e2e_s for r in good]),
        errors=dict(sorted(errors.items())),
        first_errors=first_errors,
        client_cpu_s=client_cpu_s,
        client_cpu_per_request_ms=1000 * client_cpu_s / len(records) if records else None,
        client_cpu_share=client_cpu_s / elapsed if elapsed > 0 else 0.0,
    )
