"""What the ingress and the workers both expose to Prometheus: buckets and queue gauges.

The queue gauges are read from Redis at scrape time by each side (one read-only script,
`QUEUE_SCRIPT`, bounded by `redis_timeout_s`); this module only names and records them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from schemas import names

# Seconds: from a fast embedding to a long completion.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

# KEYS: the providers' streams. ARGV[1]: the group. Per stream {entries, pending}.
QUEUE_SCRIPT = """
local out = {}
for i = 1, #KEYS do
  local entries = redis.call('XLEN', KEYS[i])
  local pending = 0
  if entries > 0 then
    local ok, pend = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1])
    if ok then pending = pend[1] end
  end
  table.insert(out, {entries, pending})
end
return out
"""


class QueueGauges:
    """`switchboard_queue_depth` (jobs waiting for a worker), `switchboard_queue_pending`
    (jobs a worker holds) per provider, and `switchboard_queue_read_ok`."""

    def __init__(self, registry: CollectorRegistry, providers: Sequence[str]) -> None:
        self.providers = list(providers)
        self.depth = Gauge("switchboard_queue_depth", "Jobs waiting in a provider's stream "
                           "(not yet delivered to a worker).", ["provider"], registry=registry)
        self.pending = Gauge("switchboard_queue_pending", "Jobs delivered to a worker and not "
                             "finished yet.", ["provider"], registry=registry)
        self.ok = Gauge("switchboard_queue_read_ok", "1 if the last scrape read the queues "
                        "from Redis, 0 if Redis did not answer within redis_timeout_s.",
                        registry=registry)

    def keys(self) -> list[str]:
        """QUEUE_SCRIPT's keys (its ARGV is `[names.GROUP]`)."""
        return [names.queue(provider) for provider in self.providers]

    def record(self, rows: Any) -> None:
        """Set the gauges from QUEUE_SCRIPT's answer."""
        for provider, (entries, pending) in zip(self.providers, rows, strict=True):
            self.depth.labels(provider).set(max(int(entries) - int(pending), 0))
            self.pending.labels(provider).set(int(pending))
        self.ok.set(1)

    def failed(self) -> None:
        """Redis did not answer: keep the last values, say so."""
        self.ok.set(0)
