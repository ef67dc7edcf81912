"""A batch input file, line by line: each request checked as the live endpoint checks it.

One JSON object per line (`schemas.batch.BatchRequestLine`): `custom_id` (1-512
characters, unique in the file), `method` "POST", `url` one of the served batch endpoints,
the same for every line, and a `body` the live endpoint would accept: the very decoder and
bounds of `POST /v1/chat/completions`, `/v1/embeddings`, `/v1/completions` and
`/v1/responses` (a body that would be a 4xx there is a bad line here), not streamed.
A line's body is bounded like a live body (`limits.max_body_bytes`: `request_too_large`).
Blank lines are skipped (a trailing newline, CRLF endings), but a file may hold at most
twice `batch.max_lines` lines in all; `line` numbers count every line of the file from 1.

Used twice: at upload (`POST /v1/files`, a bad file is a 400 listing the problems) and at
batch create (the same lines become jobs). The check is CPU work for each of up to
`batch.max_lines` lines: it runs in chunks, each in its own task, so the event loop
serves other requests between chunks and each chunk's Redis reads (a Responses line's
agent, its `previous_response_id`) get a request's Redis budget of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import trio

from ingress import respond
from ingress.bounds import Bounds
from ingress.completions import completion_submission
from ingress.gateway import Gateway, Submission
from ingress.keys import Identity
from ingress.responses import resolve
from schemas.batch import LINE_PREFIX, BatchError, BatchRequestLine
from schemas.errors import GatewayError

MAX_PROBLEMS = 100  # problems one answer (or a failed batch's `errors`) lists at most
MAX_CUSTOM_ID = 512
CHUNK_LINES = 256  # lines checked between two yields to the event loop
LINE_SLACK = 4096  # what a line may add to its body (custom_id, method, url)
URLS = ("/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/responses")
_line = msgspec.json.Decoder(BatchRequestLine)


@dataclass(slots=True)
class Line:
    """A valid request of the file."""

    number: int  # in the file, from 1
    index: int  # among the file's requests, from 0 (a job's `batch_line`)
    request_id: str  # the job's (and the output line's `id`)
    custom_id: str
    url: str
    submission: Submission


# What becomes of a valid line (a batch's job); a problem when it cannot run after all.
OnLine = Callable[[Line], BatchError | None]


@dataclass(slots=True)
class Checked:
    """What a file holds: how many valid lines, its problems (the first MAX_PROBLEMS),
    and whether more problems were left out."""

    count: int = 0
    problems: list[BatchError] = field(default_factory=list)
    truncated: bool = False

    def problem(self, error: BatchError) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(error)
        else:
            self.truncated = True

    @property
    def full(self) -> bool:
        return self.truncated


def _submitter(gateway: Gateway, caller: Identity, url: str
               ) -> Callable[[bytes, str], Submission | Awaitable[Submission]]:
    """The live endpoint's validation for `url`: body bytes (and a request id) to Submission."""
    match url:
        case "/v1/chat/completions":
            return lambda body, _: gateway.chat(body)
        case "/v1/embeddings":
            return lambda body, _: gateway.embeddings(body)
        case "/v1/completions":
            return lambda body, _: completion_submission(body)
        case _:
            return lambda body, request_id: resolve(caller, body, request_id)


def _line_error(number: int, error: GatewayError, prefix: str = "") -> BatchError:
    param = f"{prefix}{error.param}" if error.param else (prefix.rstrip(".") or None)
    return BatchError(code=error.code, message=error.message, param=param, line=number)


async def check_file(data: bytes, caller: Identity, *, max_lines: int,
                     on_line: OnLine | None = None) -> Checked:
    """Every line of `data` checked, each valid one handed to `on_line` with a fresh
    request id (a batch's jobs; nothing is kept of them here). Without `on_line` (an
    upload's check) the lines are only counted."""
    gateway = respond.gateway()
    limits = gateway.config.limits
    # A line nests its body one level deeper than the live endpoint sees it.
    line_bounds = Bounds(msgspec.structs.replace(limits, max_json_depth=limits.max_json_depth + 1))
    checked = Checked()
    if data.count(b"\n") > 2 * max_lines:  # (blank lines included: bounds the split)
        return _too_many(max_lines)
    rows = data.split(b"\n")
    seen: set[str] = set()
    first_url: list[str] = []
    for start in range(0, len(rows), CHUNK_LINES):
        async with trio.open_nursery() as nursery:  # a task (and a Redis budget) per chunk
            nursery.start_soon(_check_chunk, _Context(gateway, line_bounds, caller, on_line),
                               rows, start, checked, seen, first_url)
        if checked.count > max_lines:
            return _too_many(max_lines)
        if checked.full:
            break
    if not checked.count and not checked.problems:
        checked.problem(BatchError(code="empty_file", message="the file holds no request",
                                   param=None, line=None))
    return checked


@dataclass(slots=True, frozen=True)
class _Context:
    gateway: Gateway
    line_bounds: Bounds
    caller: Identity
    on_line: OnLine | None


def _too_many(max_lines: int) -> Checked:
    return Checked(problems=[BatchError(
        code="too_many_tasks", message=f"the file holds more than {max_lines} requests "
        f"(batch.max_lines = {max_lines})", param=None, line=None)])


async def _check_chunk(context: _Context, rows: list[bytes], start: int, checked: Checked,
                       seen: set[str], first_url: list[str]) -> None:
    for offset, row in enumerate(rows[start:start + CHUNK_LINES]):
        number = start + offset + 1
        if checked.full:
            return
        if not row.strip():
            continue
        problem = await _check_line(context, row, number, checked, seen, first_url)
        if problem is not None:
            checked.problem(problem)


async def _check_line(context: _Context, row: bytes, number: int, checked: Checked,
                      seen: set[str], first_url: list[str]) -> BatchError | None:
    """One line: None when it is valid (then it is in `checked.lines`), else its problem."""
    gateway = context.gateway
    most = gateway.config.limits.max_body_bytes
    if len(row) > most + LINE_SLACK:  # the live endpoint's 413
        return BatchError(code="request_too_large", message=f"the line's body exceeds {most} "
                          f"bytes (limits.max_body_bytes = {most})", param="body", line=number)
    try:
        context.line_bounds.body(row)  # before any decoder recurses into it
        row.decode("utf-8")
        request = _line.decode(row)
    except GatewayError as exc:
        return _line_error(number, exc)
    except msgspec.ValidationError as exc:
        message = str(exc)
        _, _, where = message.partition(" - at `")
        path = where.rstrip("`").removeprefix("$").removeprefix(".") or None
        if "missing required field" in message:
            path = message.rsplit("`", 2)[-2] if message.count("`") >= 2 else path
        return BatchError(code="invalid_request", message=f"invalid line: {message}",
                          param=path, line=number)
    except (UnicodeDecodeError, msgspec.DecodeError):
        return BatchError(code="invalid_json_line", message="This line is not parseable as "
                          "valid JSON.", param=None, line=number)
    if not 1 <= len(request.custom_id) <= MAX_CUSTOM_ID:
        return BatchError(code="invalid_request", message=f"`custom_id` is 1 to "
                          f"{MAX_CUSTOM_ID} characters", param="custom_id", line=number)
    if request.custom_id in seen:
        return BatchError(code="duplicate_custom_id", message=f"The custom_id "
                          f"{request.custom_id!r} is not unique in this file.",
                          param="custom_id", line=number)
    seen.add(request.custom_id)
    if request.method != "POST":
        return BatchError(code="invalid_request", message="`method` must be \"POST\"",
                          param="method", line=number)
    if request.url not in URLS:
        return BatchError(code="invalid_url", message=f"`url` {request.url[:200]!r} is not a "
                          f"batch endpoint; served: {', '.join(URLS)}", param="url", line=number)
    if not first_url:
        first_url.append(request.url)
    elif request.url != first_url[0]:
        return BatchError(code="url_mismatch", message=f"every line of a batch file calls the "
                          f"same endpoint: this one calls {request.url}, the first "
                          f"{first_url[0]}", param="url", line=number)
    body = bytes(request.body)
    if len(body) > most:
        return BatchError(code="request_too_large", message=f"the line's body exceeds {most} "
                          f"bytes (limits.max_body_bytes = {most})", param="body", line=number)
    request_id = LINE_PREFIX + uuid.uuid4().hex if context.on_line else "batch_req_check"
    try:
        made = _submitter(gateway, context.caller, request.url)(body, request_id)
        submission = made if isinstance(made, Submission) else await made
        gateway.bounds.model(submission.model, "model")
    except GatewayError as exc:
        return _line_error(number, exc, "body.")
    if submission.stream:
        return BatchError(code="invalid_request", message="batch requests are not streamed; "
                          "leave `stream` unset", param="body.stream", line=number)
    line = Line(number, checked.count, request_id, request.custom_id, request.url, submission)
    checked.count += 1
    return context.on_line(line) if context.on_line else None
