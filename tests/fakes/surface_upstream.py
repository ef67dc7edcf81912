"""A fake OpenAI-shaped upstream for the endpoints beyond chat: legacy `completions`
(plain and streamed, OpenAI's `text_completion` shape), `images/generations` and
`audio/transcriptions` / `audio/translations` (multipart uploads, decoded and recorded in
`forms`). Paths are matched by their end, so it serves OpenAI's `/v1/...` and Azure's
`/openai/deployments/{deployment}/...?api-version=...` alike (`base_path` per instance;
"" is Azure's, whose completions stream opens with the prompt's filter annotations).

Completions answer `"completed: " + prompt` per prompt and choice; images one tiny
`b64_json` with gpt-image usage; audio `"heard {filename} ({bytes} bytes)"` as JSON with
token usage, or as text for `response_format` text/srt/vtt.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ingress.media import decode_form
from schemas.media import Form
from tests.fakes.server import Received, ScriptedUpstream, send_json, start_sse

IMAGE_USAGE = {"input_tokens": 7, "output_tokens": 200, "total_tokens": 207,
               "input_tokens_details": {"text_tokens": 7, "image_tokens": 0}}


class FakeSurface(ScriptedUpstream[dict[str, Any]]):
    """Queued behaviours are dicts: {"status": 4xx/5xx, "error": body} to fail."""

    def __init__(self, base_path: str = "/v1") -> None:
        super().__init__(dict)
        self.base_path = base_path
        self.forms: list[Form] = []

    async def answer(self, received: Received, receive: Any, send: Any) -> None:
        behavior = self.next_behavior()
        if behavior.get("status"):
            await send_json(send, behavior["status"], behavior.get("error") or {
                "error": {"message": "trouble", "type": "server_error", "code": None}})
            return
        path = received.path
        if path.endswith("/images/generations"):
            await send_json(send, 200, {"created": int(time.time()), "data": [{"b64_json": "aGk="}],
                                        "usage": IMAGE_USAGE})
        elif path.endswith(("/audio/transcriptions", "/audio/translations")):
            await self._audio(received, send)
        elif path.endswith("/completions") and not path.endswith("/chat/completions"):
            await self._completion(received.body, send)
        else:
            await send_json(send, 404, {"error": {"message": "no such path", "code": "404"}})

    async def _audio(self, received: Received, send: Any) -> None:
        form = decode_form(received.raw, received.headers.get("content-type", ""))
        self.forms.append(form)
        upload = form.file()
        text = f"heard {upload.filename if upload else '?'} ({len(upload.data) if upload else 0} bytes)"
        if (form.value("response_format") or "json") in ("text", "srt", "vtt"):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": text.encode()})
            return
        await send_json(send, 200, {"text": text, "usage": {
            "type": "tokens", "input_tokens": 11, "output_tokens": 4, "total_tokens": 15}})

    async def _completion(self, request: dict[str, Any], send: Any) -> None:
        prompts = request["prompt"] if isinstance(request["prompt"], list) else [request["prompt"]]
        n = request.get("n") or 1
        texts = [f"completed: {p}" for p in prompts for _ in range(n)]
        usage = {"prompt_tokens": 3 * len(prompts), "completion_tokens": 2 * len(texts),
                 "total_tokens": 3 * len(prompts) + 2 * len(texts)}
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": request.get("model")}
        if not request.get("stream"):
            await send_json(send, 200, {**base, "choices": [
                {"text": t, "index": i, "logprobs": None, "finish_reason": "stop"}
                for i, t in enumerate(texts)], "usage": usage})
            return
        await start_sse(send)
        events: list[dict[str, Any]] = []
        if not self.base_path:  # Azure opens with the prompt's annotations (empty choices)
            events.append({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                           "prompt_filter_results": [{"prompt_index": 0,
                                                      "content_filter_results": {}}]})
        events += [{**base, "choices": [{"text": t, "index": i, "logprobs": None,
                                        "finish_reason": None}]} for i, t in enumerate(texts)]
        events += [{**base, "choices": [{"text": "", "index": i, "logprobs": None,
                                         "finish_reason": "stop"}]} for i in range(len(texts))]
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": usage})
        for event in [*map(json.dumps, events), "[DONE]"]:
            await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
