"""Structured log lines: one JSON object per line on stderr.

Callers pass only ids, names, numbers and statuses; never a key, a credential or
message content (invariant 6).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

_log = logging.getLogger("switchboard")
_encode = msgspec.json.Encoder().encode


def setup(level: int = logging.INFO) -> None:
    """Send switchboard log lines to stderr, once per process."""
    if not _log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _log.addHandler(handler)
        _log.setLevel(level)
        _log.propagate = False


def log_event(event: str, **fields: Any) -> None:
    """Log one event with its fields as a JSON line."""
    if _log.isEnabledFor(logging.INFO):
        line = {"ts": round(time.time(), 3), "event": event, **fields}
        _log.info(_encode(line).decode())
