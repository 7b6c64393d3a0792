"""Turning a stream of token bytes into client text: UTF-8 reassembly and stop
sequences. Pure, so it is tested without a model."""

from __future__ import annotations

import codecs


class StopSequenceFilter:
    """Feeds generated text through, holding back anything that might be the
    start of a stop sequence, and reports when a stop sequence completes.

    The stop sequence itself is never emitted, as OpenAI's API does.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stopped = False

    def feed_bytes(self, piece: bytes) -> str:
        return self.feed(self._decoder.decode(piece))

    def feed(self, text: str) -> str:
        """Add text; return what is now safe to emit."""
        if self.stopped:
            return ""
        self._pending += text
        for stop in self._stops:
            at = self._pending.find(stop)
            if at >= 0:
                self.stopped = True
                emitted, self._pending = self._pending[:at], ""
                return emitted
        keep = self._longest_stop_prefix_suffix()
        cut = len(self._pending) - keep
        emitted, self._pending = self._pending[:cut], self._pending[cut:]
        return emitted

    def flush(self) -> str:
        """Emit what was held back once generation ended without a stop."""
        if self.stopped:
            return ""
        rest = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        return rest

    def _longest_stop_prefix_suffix(self) -> int:
        best = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(stop[:length]):
                    best = length
                    break
        return best
