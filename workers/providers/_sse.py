"""Reading Server-Sent Events from an upstream response.

This is the parsing side only (the WHATWG event-stream format: `data:` lines joined
by newlines, an event ends at a blank line, `:` starts a comment). Writing SSE to
clients belongs to the ingress.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Event:
    event: str = "message"
    data: bytes = b""


@dataclass(slots=True)
class _Builder:
    event: str = ""
    data: list[bytes] = field(default_factory=list)


async def iter_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[Event]:
    """Yield each complete event from a byte stream; a trailing partial event is dropped."""
    buffer = b""
    current = _Builder()
    async for chunk in chunks:
        buffer += chunk
        while True:
            cut = _line_end(buffer)
            if cut is None:
                break
            line, buffer = buffer[: cut[0]], buffer[cut[1]:]
            if not line:
                if current.data:
                    yield Event(current.event or "message", b"\n".join(current.data))
                current = _Builder()
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                current.data.append(value)
            elif name == b"event":
                current.event = value.decode("utf-8", "replace")


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Index of the first line end in `buffer` and of the byte after it (CRLF, LF or CR)."""
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, lf + 1
    if cr + 1 < len(buffer):
        return cr, cr + 2 if buffer[cr + 1 : cr + 2] == b"\n" else cr + 1
    return None  # a CR at the very end may be the first half of CRLF
