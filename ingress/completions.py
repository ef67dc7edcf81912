"""`POST /v1/completions` (and `/v3/router/completions`): OpenAI's legacy completions.

Validated here (prompt a string or a list of strings, token ids only where relayed),
then submitted like chat: the same keys, limits, queue and metering. Kinds with a
`/completions` of their own (`openai`, `azure`) relay it; every other kind answers
through its chat call (workers/providers/_completions.py).
"""

from __future__ import annotations

from quart import Blueprint, Response

from ingress.bodies import decode_body
from ingress.gateway import Submission
from ingress.respond import gateway, relay
from schemas.completions import DEFAULT_MAX_TOKENS, completion_decoder
from schemas.errors import GatewayError
from schemas.tracking import identity_id, strip_tracking

completions = Blueprint("completions", __name__)


def completion_submission(body: bytes) -> Submission:
    """A validated completions request, ready to become a job."""
    request = decode_body(completion_decoder, body)
    prompt = request.prompt
    if not isinstance(prompt, str):
        kinds = {type(x) for x in prompt}
        if len(kinds) > 1:
            raise GatewayError(422, "validation_error", "invalid request: `prompt` is a string, "
                               "a list of strings, a list of token ids or a list of lists of "
                               "them, never a mix", param="prompt",
                               details={"field": "$.prompt", "reason": "mixed prompt list"})
        if not isinstance(prompt[0], int):
            gateway().bounds.count("prompt", prompt, "max_inputs")
    tracked = request.identity is not None or request.thread is not None
    max_tokens = DEFAULT_MAX_TOKENS if request.max_tokens is None else request.max_tokens
    return Submission("completions", request.model, strip_tracking(body, tracked),
                      request.stream, request.include_usage, max_output_tokens=max_tokens,
                      choices=(request.n or 1) * request.prompts,
                      identity=identity_id(request.identity, request.user),
                      thread=request.thread.id if request.thread else "")


@completions.post("/v1/completions")
@completions.post("/v3/router/completions")
async def create_completion() -> Response:
    """A `text_completion`, or with `stream: true` an event stream of them ending in [DONE]."""
    return await relay(completion_submission)
