"""The model catalog: what each GGUF file is, read from its own metadata.

``read_entry`` reads a file's GGUF header with the ``gguf`` package
(architecture, parameter count, context length, quantisation type, chat
template) and its sha256. Reading a header with a large vocabulary takes
seconds, so entries are cached on disk keyed by path, size and mtime.
``memory_bytes`` estimates what serving a variant takes: the weights, an
f16 KV cache for the configured context per slot, and llama.cpp's compute
and output buffers (measured on this project's models; see README).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from inferswarm.miner.models import file_sha256, model_name_for
from inferswarm.protocol import ModelName, split_model_name

log = logging.getLogger(__name__)

OVERHEAD_BYTES = 16 * 2**20
"""Fixed llama.cpp buffers beside the weights and KV cache."""
OVERHEAD_PER_VOCAB_ENTRY = 256
"""Output logits and compute buffers grow with the vocabulary: SmolLM2
(49k entries) measured 22 MiB above weights + KV at 2048 tokens, Gemma 3
(262k) 59 MiB; 256 bytes per entry covers both."""
KV_BYTES_PER_VALUE = 2
"""llama.cpp's default KV cache type is f16."""


@dataclass(frozen=True)
class CatalogEntry:
    """One GGUF file as the catalog knows it."""

    path: Path
    name: ModelName
    family: str
    variant: str
    architecture: str
    parameters: int
    trained_context: int
    layers: int
    kv_values_per_token: int
    vocab_size: int
    file_bytes: int
    file_sha256: str
    has_chat_template: bool

    def memory_bytes(self, context_length: int, slots: int = 1) -> int:
        """Estimated resident memory to serve this file with ``slots`` contexts."""
        kv = self.kv_values_per_token * KV_BYTES_PER_VALUE * context_length * slots
        overhead = OVERHEAD_BYTES + OVERHEAD_PER_VOCAB_ENTRY * self.vocab_size
        return self.file_bytes + kv + overhead


class CatalogError(Exception):
    """A file is not a GGUF model the catalog can read; the message says which and why."""


class Catalog:
    """Catalog entries cached in a JSON file (reading GGUF headers is slow)."""

    def __init__(self, cache_path: Path) -> None:
        self.cache_path = cache_path

    def entry(self, path: Path) -> CatalogEntry:
        path = path.resolve()
        stat = path.stat()
        key = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        cached = self._load().get(key)
        if isinstance(cached, dict):
            return CatalogEntry(**{**cached, "path": Path(cached["path"])})
        entry = read_entry(path)
        self._store(key, entry)
        return entry

    def entries(self, paths: Iterable[Path]) -> list[CatalogEntry]:
        return [self.entry(path) for path in paths]

    def _load(self) -> dict[str, object]:
        try:
            data = json.loads(self.cache_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _store(self, key: str, entry: CatalogEntry) -> None:
        data = self._load()
        data[key] = asdict(entry) | {"path": str(entry.path)}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.cache_path)


def read_entry(path: Path) -> CatalogEntry:
    """Read a GGUF file's metadata and hash (seconds for a large vocabulary)."""
    from gguf import GGUFReader, LlamaFileType  # imported here: it pulls in numpy

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise CatalogError(f"{path} is not a readable GGUF file: {exc}") from exc
    fields = reader.fields

    def value(key: str, default: object = None) -> object:
        return fields[key].contents() if key in fields else default

    arch = str(value("general.architecture", "unknown"))
    embedding = int(str(value(f"{arch}.embedding_length", 0)))
    heads = int(str(value(f"{arch}.attention.head_count", 1)))
    kv_heads = int(str(value(f"{arch}.attention.head_count_kv", heads)))
    head_dim = embedding // max(1, heads)
    key_length = int(str(value(f"{arch}.attention.key_length", head_dim)))
    value_length = int(str(value(f"{arch}.attention.value_length", head_dim)))
    layers = int(str(value(f"{arch}.block_count", 0)))
    tokens = fields.get("tokenizer.ggml.tokens")
    file_type = int(str(value("general.file_type", 0)))
    variant = LlamaFileType(file_type).name.removeprefix("MOSTLY_").lower()
    variant = {"all_f32": "f32"}.get(variant, variant)
    family = _family(path, value("general.name"))
    return CatalogEntry(
        path=path,
        name=ModelName(f"{family}:{variant}"),
        family=family,
        variant=variant,
        architecture=arch,
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        trained_context=int(str(value(f"{arch}.context_length", 0))),
        layers=layers,
        kv_values_per_token=layers * kv_heads * (key_length + value_length),
        vocab_size=len(tokens.data) if tokens is not None else 0,
        file_bytes=path.stat().st_size,
        file_sha256=file_sha256(path),
        has_chat_template="tokenizer.chat_template" in fields,
    )


def _family(path: Path, general_name: object) -> str:
    """The family from the file name (``SmolLM2-135M-Instruct.Q8_0.gguf``), else
    from the model's own name in its metadata."""
    family, variant = split_model_name(model_name_for(path))
    if variant or not general_name:
        return family
    return "-".join(str(general_name).lower().split())


def find_gguf_files(directories: Iterable[Path]) -> list[Path]:
    """Every ``*.gguf`` directly in these directories, sorted."""
    found: set[Path] = set()
    for directory in directories:
        if directory.is_dir():
            found.update(p.resolve() for p in directory.glob("*.gguf") if p.is_file())
    return sorted(found)
