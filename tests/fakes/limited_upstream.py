"""A fake OpenAI upstream that enforces its own requests-per-window limit, as OpenAI does.

It counts the requests it accepted in a true rolling window (`window_s`, its own
monotonic clock, no buckets): one more than `rpm` in any window is answered 429 with
OpenAI's error body and `Retry-After` / `retry-after-ms` headers (the time until the
oldest counted request leaves the window), and counted in `throttled`. `accepted` holds
the arrival time of every request it served; `max_in_window()` is the most it ever saw in
one window. Set `headers` to answer every 429 with those headers instead.
"""

from __future__ import annotations

import bisect
import math
import time
from typing import Any

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import Received, send_json

RATE_LIMITED = {"error": {"message": "Rate limit reached for requests", "type": "requests",
                          "param": None, "code": "rate_limit_exceeded"}}


class LimitedOpenAI(FakeOpenAI):
    def __init__(self, rpm: int, window_s: float = 60.0) -> None:
        super().__init__()
        self.rpm = rpm
        self.window_s = window_s
        self.accepted: list[float] = []
        self.throttled = 0
        self.headers: list[tuple[bytes, bytes]] | None = None

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        now = time.monotonic()
        recent = self.accepted[bisect.bisect_right(self.accepted, now - self.window_s):]
        if len(recent) >= self.rpm:
            self.throttled += 1
            wait = recent[0] + self.window_s - now
            headers = self.headers if self.headers is not None else [
                (b"retry-after", str(math.ceil(wait)).encode()),
                (b"retry-after-ms", str(math.ceil(wait * 1000)).encode())]
            await send_json(send, 429, RATE_LIMITED, headers)
            return
        self.accepted.append(now)
        await super().answer(received, receive, send)

    def max_in_window(self) -> int:
        """The most requests served in any rolling `window_s` (half-open: (t - w, t])."""
        most = 0
        for i, at in enumerate(self.accepted):
            most = max(most, i + 1 - bisect.bisect_right(self.accepted, at - self.window_s))
        return most
