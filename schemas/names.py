"""Every Redis key, stream and channel name, in one place.

All names share the `sb:` prefix so a shared Redis can hold other data beside them.
"""

from __future__ import annotations

import time

PREFIX = "sb:"
GROUP = "workers"  # the consumer group on every provider stream
CANCEL_CHANNEL = PREFIX + "cancel"  # request ids whose client went away
KEY_IDS = PREFIX + "keys"  # set of every key id


def queue(provider: str) -> str:
    """The stream that holds a provider's jobs."""
    return f"{PREFIX}q:{provider}"


def reply(ingress_id: str) -> str:
    """The pub/sub channel on which an ingress process receives frames."""
    return f"{PREFIX}reply:{ingress_id}"


def key_by_hash(secret_hash: str) -> str:
    """Hash of one access key's record, found by the SHA-256 of its secret."""
    return f"{PREFIX}key:{secret_hash}"


def key_by_id(key_id: str) -> str:
    """String holding the secret hash for a key id (for list and revoke)."""
    return f"{PREFIX}keyid:{key_id}"


def org(org_id: str) -> str:
    """Hash of an organization's settings (its plan)."""
    return f"{PREFIX}org:{org_id}"


def usage(org_id: str, month: str) -> str:
    """Hash of an org's metered usage for one calendar month (`YYYY-MM`, UTC)."""
    return f"{PREFIX}usage:{org_id}:{month}"


def withdrawn(request_id: str) -> str:
    """Marks a request whose client left, for copies of its job elsewhere (failover)."""
    return f"{PREFIX}gone:{request_id}"


def began(request_id: str) -> str:
    """Set when a streamed request's output began (its Head was published): a worker that
    reclaims the job ends it with an error instead of calling upstream again."""
    return f"{PREFIX}began:{request_id}"


def body(request_id: str) -> str:
    """A whole answer too big for one reply frame, stored for the ingress to read once."""
    return f"{PREFIX}body:{request_id}"


def month(now: float | None = None) -> str:
    """The calendar month (UTC) usage is metered into, as `YYYY-MM`."""
    return time.strftime("%Y-%m", time.gmtime(now))
