"""Log redaction: keys, join tokens and bearer credentials never reach a log line."""

from __future__ import annotations

import logging

from inferswarm.cli.common import RedactSecrets


def test_log_lines_lose_keys_tokens_and_bearer_credentials() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s then %s and %s", None, None)
    record.args = ("isk-abcdefghijkl", "ijt-ZYXWVUTS_123", "Authorization: Bearer s3cr3t")
    RedactSecrets().filter(record)
    line = record.getMessage()
    assert "abcdefghijkl" not in line and "ZYXWVUTS" not in line and "s3cr3t" not in line
    assert line == "isk-[redacted] then ijt-[redacted] and Authorization: Bearer [redacted]"
