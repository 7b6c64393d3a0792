"""A miner connection for in-process router tests: it records what the router sent."""

from __future__ import annotations

from inferswarm.protocol import LoadModel, Park, RouterMessage, UnloadModel, parse_router_message


class RecordedMiner:
    """Stands in for a miner's WebSocket: ``send`` keeps each frame."""

    def __init__(self) -> None:
        self.frames: list[str] = []

    async def send(self, frame: str) -> None:
        self.frames.append(frame)

    async def close(self, reason: str) -> None:
        return None

    def messages(self) -> list[RouterMessage]:
        return [parse_router_message(f) for f in self.frames]

    def parks(self) -> list[bool]:
        return [m.parked for m in self.messages() if isinstance(m, Park)]

    def loads(self) -> list[str]:
        return [m.name for m in self.messages() if isinstance(m, LoadModel)]

    def unloads(self) -> list[str]:
        return [m.name for m in self.messages() if isinstance(m, UnloadModel)]

    def asked(self) -> list[LoadModel | UnloadModel]:
        return [m for m in self.messages() if isinstance(m, LoadModel | UnloadModel)]
