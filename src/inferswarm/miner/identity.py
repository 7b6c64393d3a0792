"""The miner's id: kept in its data dir so a restarted miner is the same miner."""

from __future__ import annotations

import secrets
from pathlib import Path

from inferswarm.protocol import MinerId


def new_miner_id() -> MinerId:
    return MinerId(f"m-{secrets.token_hex(6)}")


def load_or_create_miner_id(data_dir: Path | None) -> MinerId:
    """A persistent id when there is a data dir, a fresh one per run otherwise
    (so two miners started without data dirs never collide)."""
    if data_dir is None:
        return new_miner_id()
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "miner_id"
    if path.is_file():
        stored = path.read_text().strip()
        if stored:
            return MinerId(stored)
    miner_id = new_miner_id()
    path.write_text(miner_id + "\n")
    return miner_id
