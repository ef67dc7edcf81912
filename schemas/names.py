"""Every Redis key, stream and channel name, in one place.

All names share the `{sb}:` prefix so a shared Redis can hold other data beside them.
`{sb}` is a Redis Cluster hash tag: only it is hashed, so every name lands in one hash
slot, and every script and MULTI (which touch several names, some of them computed
inside Lua from prefixes passed in from here) runs on one shard of a cluster.
"""

from __future__ import annotations

import time

PREFIX = "{sb}:"
GROUP = "workers"  # the consumer group on every provider stream
CANCEL_CHANNEL = PREFIX + "cancel"  # request ids whose client went away
KEY_IDS = PREFIX + "keys"  # set of every key id
KEYS_CHANGED = PREFIX + "keys:changed"  # pub/sub: key cache entries every ingress must drop
# Hash {key id: unix time it was last used}, written by each ingress every few seconds
# (one HSET for all the keys it saw), never on a request's path. Apart from the key hash
# so a late write can never re-create the hash of a rotated-away secret.
KEYS_LAST_USED = PREFIX + "keys:used"

# Reservations (see `schemas/reservations.py`). A reservation is the list of counters
# admission incremented for one request, kept as the hash `reservation(request_id)`
# {counter key: amount}. Whoever deletes that hash (the worker's finish, the ingress's
# withdraw, the sweep of expired ones) decrements the counters: exactly once. The sorted
# set `RESERVATIONS_DUE` holds every record key scored by the unix time after which it is
# swept as abandoned. Counters are plain integers deleted when they fall back to zero:
#   held_tokens(org, month)    plan tokens reserved by the org's requests in flight
#   held_queue(provider, org)  the org's jobs in a provider's stream (its fair share)
#   held_concurrent(scope, id) a scope's requests in flight (max_concurrent)
#   held_cost(scope, id, month) micro-dollars reserved by a scope's requests in flight
# Rolling windows (schemas/windows.py) are hashes {unix second: amount} under
# `WINDOW_PREFIX`; a reservation records a window's estimate as `<window key>|<second>`.
RESERVATIONS_DUE = PREFIX + "resv:due"
WINDOW_PREFIX = PREFIX + "win:"


def queue(provider: str) -> str:
    """The stream that holds a provider's jobs."""
    return f"{PREFIX}q:{provider}"


def queue_bytes(provider: str) -> str:
    """A provider stream's memory as last counted, plus the jobs admitted since (kept a
    second: see the admission script)."""
    return f"{PREFIX}qbytes:{provider}"


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
    """Hash of an organization's settings: `plan`, `limits` (JSON, see schemas/limits.py)."""
    return f"{PREFIX}org:{org_id}"


def project(org_id: str, project_id: str) -> str:
    """Hash of a project's settings (`name`, `limits`, `created`) inside an org."""
    return f"{PREFIX}project:{org_id}:{project_id}"


def projects(org_id: str) -> str:
    """Set of an org's project ids."""
    return f"{PREFIX}projects:{org_id}"


def usage(org_id: str, month: str) -> str:
    """Hash of an org's metered usage for one calendar month (`YYYY-MM`, UTC)."""
    return f"{PREFIX}usage:{org_id}:{month}"


def usage_project(org_id: str, project_id: str, month: str) -> str:
    """Hash of a project's metered usage for one month (the fields of `usage`)."""
    return f"{PREFIX}usage:p:{org_id}:{project_id}:{month}"


def usage_key(key_id: str, month: str) -> str:
    """Hash of one access key's metered usage for one month (the fields of `usage`)."""
    return f"{PREFIX}usage:k:{key_id}:{month}"


def usage_day(org_id: str, day: str) -> str:
    """Hash of an org's usage for one UTC day (`YYYY-MM-DD`), broken down by dimension.

    Field `<metric>:<dimensions>`: the metric (`requests`, `prompt_tokens`,
    `completion_tokens`, `cost_micro_usd`, `priced_requests`, `errors`) and the JSON array
    of the request's dimensions (`schemas/usage.py` DIMENSIONS: project, key id, model slug,
    provider, identity, thread). Expires `usage.retention_days` after the day ends.
    """
    return f"{PREFIX}usage:d:{org_id}:{day}"


def request_log(org_id: str) -> str:
    """Stream of an org's request log records (field `r`: a JSON `RequestRecord`, metadata
    only), ids by the time Redis took them; trimmed to `usage.request_log_days`."""
    return f"{PREFIX}log:{org_id}"


def withdrawn(request_id: str) -> str:
    """Marks a request whose client left, for copies of its job elsewhere (failover)."""
    return f"{PREFIX}gone:{request_id}"


def reservation(request_id: str) -> str:
    """Hash {counter key: amount} of what admission reserved for one request."""
    return f"{PREFIX}resv:{request_id}"


def held_tokens(org_id: str, month: str) -> str:
    """Counter of plan tokens reserved by an org's requests in flight (`YYYY-MM`)."""
    return f"{PREFIX}held:tokens:{org_id}:{month}"


def held_queue(provider: str, org_id: str) -> str:
    """Counter of an org's jobs admitted to a provider's stream and not yet ended."""
    return f"{PREFIX}held:q:{provider}:{org_id}"


def held_concurrent(scope: str, owner: str) -> str:
    """Counter of a scope's requests in flight (`scope` org/project/key, `owner` its id)."""
    return f"{PREFIX}held:conc:{scope}:{owner}"


def held_cost(scope: str, owner: str, month: str) -> str:
    """Counter of micro-dollars reserved by a scope's requests in flight (`YYYY-MM`)."""
    return f"{PREFIX}held:cost:{scope}:{owner}:{month}"


def window(limit: str, scope: str, owner: str) -> str:
    """A scope's rolling 60 s window for `limit` ("rpm" or "tpm"): hash {second: amount}."""
    return f"{WINDOW_PREFIX}{limit}:{scope}:{owner}"


def alive(consumer: str) -> str:
    """Exists while a worker process (one consumer name) heartbeats; expires when it dies."""
    return f"{PREFIX}alive:{consumer}"


def worker(consumer: str) -> str:
    """A worker process's own channel: its cancel listener subscribes to it beside the
    cancel channel, so `PUBSUB SHARDNUMSUB` tells whether that subscription is still alive."""
    return f"{PREFIX}worker:{consumer}"


def outcome(request_id: str) -> str:
    """A job's outcome frame whose PUBLISH reached nobody, kept briefly for read-back."""
    return f"{PREFIX}outcome:{request_id}"


def health(provider: str) -> str:
    """Hash of a provider's failure streak: `fails` (in a row), `tripped` (cooled down since
    its last success). Written by workers; gone when the provider is healthy."""
    return f"{PREFIX}health:{provider}"


def cooldown(provider: str) -> str:
    """Present (with a TTL) while a provider is on cool-down: routing skips it."""
    return f"{PREFIX}cool:{provider}"


def probe(provider: str) -> str:
    """The one probe token (SET NX, with a TTL) after a provider's cool-down ended."""
    return f"{PREFIX}probe:{provider}"


def began(request_id: str) -> str:
    """Set when a streamed request's output began (its Head was published): a worker that
    reclaims the job ends it with an error instead of calling upstream again."""
    return f"{PREFIX}began:{request_id}"


def body(request_id: str) -> str:
    """A whole answer too big for one reply frame, stored for the ingress to read once."""
    return f"{PREFIX}body:{request_id}"


def response(response_id: str) -> str:
    """Hash: a stored Responses API response (`org`, `response` JSON, `input` JSON items,
    `created`), expiring `responses.retention_days` after it was written."""
    return f"{PREFIX}resp:{response_id}"


def agent(org_id: str, name: str) -> str:
    """String: an org's agent defined over the admin API (JSON `schemas.agents.Agent`)."""
    return f"{PREFIX}agent:{org_id}:{name}"


def agents(org_id: str) -> str:
    """Set: the names of an org's agents defined over the admin API."""
    return f"{PREFIX}agents:{org_id}"


# ── the Files and Batch APIs (docs/architecture.md, "Batches") ─────────────────────
# Every batch that is not finished (validating, in_progress, cancelling, finalizing):
# the worker side's list of batches to feed and finalize.
BATCHES_ACTIVE = PREFIX + "batches:active"
BATCHES_ALL = PREFIX + "batches"  # sorted set of every org's batch ids, by created_at


def file(file_id: str) -> str:
    """Hash of an uploaded or produced file: `org`, `meta` (JSON `schemas.batch.FileObject`);
    expires with the file."""
    return f"{PREFIX}file:{file_id}"


def file_data(file_id: str) -> str:
    """String: a file's bytes."""
    return f"{PREFIX}file:{file_id}:data"


def file_staging(file_id: str, writer: str) -> str:
    """String: a produced file's bytes while one writer (`writer`) still appends them;
    renamed to `file_data` when complete (workers/batches/finalizer.py)."""
    return f"{PREFIX}file:{file_id}:staging:{writer}"


def files(org_id: str) -> str:
    """Sorted set of an org's file ids by created_at (members of expired files are dropped
    when the list is read)."""
    return f"{PREFIX}files:{org_id}"


def batch(batch_id: str) -> str:
    """Hash of one batch (`schemas.batch.BatchState` lists its fields)."""
    return f"{PREFIX}batch:{batch_id}"


def batches(org_id: str) -> str:
    """Sorted set of an org's batch ids by created_at (`:org:` keeps any org id apart
    from `BATCHES_ACTIVE`)."""
    return f"{PREFIX}batches:org:{org_id}"


def batch_lines(batch_id: str, provider: str) -> str:
    """List of a batch's line jobs (msgpack `Job`) whose first route is `provider`, not yet
    fed to the provider's batch stream, in file order."""
    return f"{PREFIX}batch:{batch_id}:lines:{provider}"


def batch_providers(batch_id: str) -> str:
    """Set of the providers a batch has line lists for."""
    return f"{PREFIX}batch:{batch_id}:providers"


def batch_output(batch_id: str) -> str:
    """Hash {line index: output file line (JSON, no newline)}: each line written once."""
    return f"{PREFIX}batch:{batch_id}:out"


def batch_errors(batch_id: str) -> str:
    """Hash {line index: error file line (JSON, no newline)}: each line written once."""
    return f"{PREFIX}batch:{batch_id}:err"


def batch_lease(batch_id: str) -> str:
    """Present (with a TTL) while one worker finalizes the batch (workers/batches)."""
    return f"{PREFIX}batch:{batch_id}:lease"


def batch_queue(provider: str) -> str:
    """The stream of a provider's batch line jobs (consumer group `GROUP`), read only with
    capacity interactive traffic leaves."""
    return f"{PREFIX}bq:{provider}"


def batch_retry(provider: str) -> str:
    """Sorted set of batch line jobs (msgpack) waiting to be retried, by due unix time (s)."""
    return f"{PREFIX}bretry:{provider}"


def pace_window(limit: str, provider: str) -> str:
    """A provider's own rolling 60 s window for `limit` ("rpm" or "tpm"), shared by every
    worker process (workers/pace.py)."""
    return f"{PREFIX}pace:{limit}:{provider}"


def pace_pause(provider: str) -> str:
    """Present (with a TTL) while a provider's batch traffic is paused after its 429."""
    return f"{PREFIX}pace:pause:{provider}"


# ── the console (ingress/console/session.py) ──────────────────────────────────────
def console_session(token_hash: str) -> str:
    """Hash of one console sign-in (`key_id`, `csrf`, `created`), by the SHA-256 of its
    cookie's token; expires with the session."""
    return f"{PREFIX}console:session:{token_hash}"


def day(now: float | None = None) -> str:
    """The calendar day (UTC) usage is broken down by, as `YYYY-MM-DD`."""
    return time.strftime("%Y-%m-%d", time.gmtime(now))


def month(now: float | None = None) -> str:
    """The calendar month (UTC) usage is metered into, as `YYYY-MM`."""
    return time.strftime("%Y-%m", time.gmtime(now))
