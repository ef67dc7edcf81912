"""What one request may carry: nesting depth, list lengths, slug length, `dimensions`.

Every bound is a `[limits]` knob with a production default, and every refusal is a 400
(`limit_exceeded`) whose message and `details.limit` name the knob, so a client knows
what to change and an operator what to raise. The body's size is the edge's bound
(`max_body_bytes`, 413, see `ingress.edge`); the bytes a provider's queue may hold are
admission's (`max_queue_bytes`, 429).

Depth is measured on the raw bytes before any decoder runs: msgspec decodes (and skips
unknown fields) recursively, and a few kilobytes of `[[[[...` exhaust the interpreter's
recursion limit, which used to end the request in a 500.
"""

from __future__ import annotations

import re
from collections.abc import Sized
from itertools import accumulate

import trio

from schemas.config import Limits
from schemas.errors import GatewayError

# JSON strings (escapes included) may hold brackets that are not structure: drop them first.
# Possessive quantifiers, and a string that runs to the end of the body when it is not
# closed, keep the scan linear on hostile input (no retry from every later quote).
_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# What each remaining byte does to the depth: opening +1, closing -1.
_THREAD_ABOVE = 1 << 20  # bodies larger than this are scanned off the event loop
_SLICE = 1 << 16  # brackets per step of the scan
_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))


def json_depth(body: bytes, stop_above: int | None = None) -> int:
    """The deepest nesting of arrays and objects in a JSON document (0 for a scalar).

    Exact for valid JSON; for invalid JSON an estimate (the decoder refuses it anyway).
    With `stop_above`, the scan ends as soon as the depth exceeds it.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    deepest = level = 0
    for start in range(0, len(brackets), _SLICE):
        levels = list(accumulate(map(_STEP.__getitem__, brackets[start:start + _SLICE]),
                                 initial=level))
        deepest, level = max(deepest, max(levels)), levels[-1]
        if stop_above is not None and deepest > stop_above:
            break
    return deepest


class Bounds:
    """The configured bounds, checked where the request is decoded."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    async def check_body(self, body: bytes) -> None:
        """`body`'s check; a large body is scanned in a thread so other requests keep moving."""
        if len(body) > _THREAD_ABOVE:
            await trio.to_thread.run_sync(self.body, body)
        else:
            self.body(body)

    def body(self, body: bytes) -> None:
        """Refuse a body nested deeper than `max_json_depth` (before it is decoded)."""
        limit = self.limits.max_json_depth
        # A document cannot be deeper than it has bytes over two: skip the scan for small ones.
        if len(body) > 2 * limit and json_depth(body, stop_above=limit) > limit:
            raise _exceeded("max_json_depth", limit, None,
                            f"the body nests arrays and objects deeper than {limit} levels")

    def model(self, slug: str, param: str = "model") -> None:
        """Refuse a slug longer than `max_model_chars` (it is echoed in errors and logs)."""
        limit = self.limits.max_model_chars
        if len(slug) > limit:
            raise _exceeded("max_model_chars", limit, param,
                            f"`{param}` is {len(slug)} characters long; at most {limit} are accepted")

    def count(self, param: str, items: Sized | None, knob: str) -> None:
        """Refuse a list `param` with more entries than the `knob` limit allows."""
        limit: int = getattr(self.limits, knob)
        if items is not None and not isinstance(items, str) and len(items) > limit:
            raise _exceeded(knob, limit, param,
                            f"`{param}` has {len(items)} entries; at most {limit} are accepted")

    def dimensions(self, dimensions: int | None) -> None:
        """Refuse an embeddings `dimensions` above `max_dimensions`."""
        limit = self.limits.max_dimensions
        if dimensions is not None and dimensions > limit:
            raise _exceeded("max_dimensions", limit, "dimensions",
                            f"`dimensions` is {dimensions}; at most {limit} are accepted")


def _exceeded(knob: str, limit: int, param: str | None, what: str) -> GatewayError:
    return GatewayError(400, "limit_exceeded", f"{what} (limits.{knob} = {limit})", param=param,
                        details={"limit": knob, "max": limit})
