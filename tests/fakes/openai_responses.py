"""FakeOpenAI's `POST /v1/responses`: OpenAI's Responses API, plain and streamed.

It echoes the last user text of `input`, as the chat fake does; a streamed answer sends
the typed events (`Behavior.chunks` pieces, `break_after` drops the connection).
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.fakes.server import DropConnection, send_json, start_sse


def _echo(request: dict[str, Any]) -> str:
    items = request.get("input")
    if isinstance(items, str):
        return items
    for item in reversed(items or []):
        if item.get("role", "user") == "user" and item.get("type", "message") == "message":
            content = item.get("content")
            if isinstance(content, str):
                return content
            return "".join(part.get("text", "") for part in content or [])
    return "hello"


def _response(request: dict[str, Any], status: str, text: str | None) -> dict[str, Any]:
    output = [] if text is None else [{
        "type": "message", "id": "msg_upstream", "status": "completed", "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]}]
    return {"id": "resp_upstream_1", "object": "response", "created_at": int(time.time()),
            "model": request.get("model"), "status": status, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "store": request.get("store", True),
            "usage": None if text is None else {
                "input_tokens": 4, "output_tokens": len(text.split()), "total_tokens": 4 + len(text.split()),
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0}}}


async def answer_responses(request: dict[str, Any], behavior: Any, send: Any) -> None:
    """Answer one Responses request as OpenAI would."""
    text = _echo(request)
    if not request.get("stream"):
        await send_json(send, 200, _response(request, "completed", text))
        return
    await start_sse(send)
    seq = 0

    async def event(kind: str, **fields: Any) -> None:
        nonlocal seq
        data = json.dumps({"type": kind, "sequence_number": seq, **fields})
        seq += 1
        await send({"type": "http.response.body", "body": f"event: {kind}\ndata: {data}\n\n".encode(),
                    "more_body": True})

    pieces = behavior.chunks if behavior.chunks is not None else [text]
    await event("response.created", response=_response(request, "in_progress", None))
    item = {"type": "message", "id": "msg_upstream", "status": "in_progress", "role": "assistant",
            "content": []}
    await event("response.output_item.added", output_index=0, item=item)
    for i, piece in enumerate(pieces):
        if behavior.break_after is not None and i == behavior.break_after:
            raise DropConnection
        await event("response.output_text.delta", item_id="msg_upstream", output_index=0,
                    content_index=0, delta=piece, logprobs=[])
    await event("response.completed", response=_response(request, "completed", "".join(pieces)))
    await send({"type": "http.response.body", "body": b"", "more_body": False})
