"""Fast tests of pure pieces: SSE parsing, config errors, frame ordering, mock splitting."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ingress.replies import ReplyHub
from schemas.config import ConfigError, parse_config
from schemas.envelopes import Chunk, Done, Error, Frame, Head, frame_encoder
from schemas.errors import GatewayError
from workers.providers._sse import iter_events
from workers.providers.mock import _pieces


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_sse_events_split_across_reads_and_line_endings() -> None:
    stream = _chunks(b"data: {\"a\"", b":1}\r\n\r\n: comment\n\nevent: ping\ndata: x\n",
                     b"data: y\n\n", b"data:[DONE]\r\r", b"data: partial")
    events = [e async for e in iter_events(stream)]
    assert [(e.event, e.data) for e in events] == [
        ("message", b'{"a":1}'), ("ping", b"x\ny"), ("message", b"[DONE]")]


def test_config_errors_name_the_field_and_source() -> None:
    with pytest.raises(ConfigError, match=r"cfg.toml.*providers\.a\.max_queue"):
        parse_config({"providers": {"a": {"kind": "mock", "max_queue": 0}}}, "cfg.toml")
    with pytest.raises(ConfigError, match="models"):
        parse_config({"models": [{"slug": "x", "routes": [{"provider": "p", "model": "m"}]},
                                 {"slug": "x", "routes": [{"provider": "p", "model": "m"}]}]}, "c")
    with pytest.raises(ConfigError, match="unknown_thing"):
        parse_config({"unknown_thing": 1}, "c")


def test_redis_url_from_environment_wins() -> None:
    config = parse_config({"redis_url": "redis://a:1/0"}, "c", {"REDIS_URL": "redis://b:2/0"})
    assert config.redis_url == "redis://b:2/0"


def test_mock_pieces_join_back() -> None:
    text = "one two three four five"
    for count in (1, 2, 3, 5, 9):
        pieces = _pieces(text, count)
        assert "".join(pieces) == text and len(pieces) == min(count, 5)


def test_error_renders_in_the_documented_shape() -> None:
    error = GatewayError(429, "queue_full", "busy", details={"provider": "p"}, retry_after=1)
    assert error.encode() == (b'{"error":{"message":"busy","type":"rate_limit_error",'
                              b'"code":"queue_full","param":null,"details":{"provider":"p"}}}')
    assert GatewayError(502, "upstream_error", "x").type == "server_error"


def _hub() -> ReplyHub:
    hub = ReplyHub(redis=None, ingress_id="test")  # type: ignore[arg-type]
    hub.ready = True
    return hub


def _send(hub: ReplyHub, *frames: Frame) -> None:
    for frame in frames:
        hub._dispatch(frame_encoder.encode(frame))


def _chunk(seq: int, attempt: int = 0, text: bytes = b"x") -> Chunk:
    return Chunk(request_id="r", attempt=attempt, seq=seq, payloads=[text])


async def test_frames_in_order_pass() -> None:
    hub = _hub()
    replies = hub.register("r")
    _send(hub, Head(request_id="r", attempt=0, seq=0, provider="p"), _chunk(1), _chunk(2),
          Done(request_id="r", attempt=0, seq=3, provider="p"))
    kinds = [type(await replies.next()).__name__ for _ in range(4)]
    assert kinds == ["Head", "Chunk", "Chunk", "Done"]


async def test_a_gap_or_a_duplicate_is_an_error_not_silence() -> None:
    for broken in ([_chunk(2)], [_chunk(1), _chunk(1)]):
        hub = _hub()
        replies = hub.register("r")
        _send(hub, Head(request_id="r", attempt=0, seq=0, provider="p"), *broken)
        await replies.next()
        if len(broken) == 2:
            await replies.next()
        with pytest.raises(GatewayError) as caught:
            await replies.next()
        assert caught.value.code == "stream_gap"


async def test_stale_attempts_are_ignored_and_restarts_after_output_fail() -> None:
    hub = _hub()
    replies = hub.register("r")
    _send(hub, _chunk(3, attempt=0),  # tail of an attempt that never began for this client
          Head(request_id="r", attempt=1, seq=0, provider="p"), _chunk(1, attempt=1),
          _chunk(4, attempt=0),  # a late frame of an older attempt
          Head(request_id="r", attempt=2, seq=0, provider="p"))
    assert isinstance(await replies.next(), Head)
    assert isinstance(await replies.next(), Chunk)
    with pytest.raises(GatewayError) as caught:
        await replies.next()
    assert caught.value.code == "stream_restarted"


async def test_error_frames_obey_the_attempt_and_order_rules() -> None:
    # Before output began, an error from any attempt ends the request (the worker gave up);
    # frames for other requests are dropped.
    hub = _hub()
    replies = hub.register("r")
    _send(hub, Chunk(request_id="someone-else", attempt=0, seq=0, payloads=[b"x"]),
          Error(request_id="r", attempt=0, seq=0, status=502, body=b"{}"))
    frame = await replies.next()
    assert isinstance(frame, Error) and frame.status == 502
    replies.close()
    assert hub.statistics()["waiting"] == 0
    # Once the stream follows attempt 1, a late error of attempt 0 (from a worker presumed
    # dead) is ignored: the healthy stream goes on, and its own error is numbered in order.
    hub = _hub()
    replies = hub.register("r")
    _send(hub, Head(request_id="r", attempt=1, seq=0, provider="p"),
          Error(request_id="r", attempt=0, seq=0, status=502, body=b"{}"),
          _chunk(1, attempt=1),
          Error(request_id="r", attempt=1, seq=2, status=503, body=b"{}"))
    assert isinstance(await replies.next(), Head)
    assert isinstance(await replies.next(), Chunk)
    frame = await replies.next()
    assert isinstance(frame, Error) and frame.status == 503
    # An error numbered before frames already received is out of order: the stream fails
    # as broken. One numbered after a gap (the publish before it timed out) ends it as it says.
    hub = _hub()
    replies = hub.register("r")
    _send(hub, Head(request_id="r", attempt=0, seq=0, provider="p"), _chunk(1), _chunk(2),
          Error(request_id="r", attempt=0, seq=1, status=502, body=b"{}"))
    for _ in range(3):
        await replies.next()
    with pytest.raises(GatewayError) as caught:
        await replies.next()
    assert caught.value.code == "stream_gap"
    hub = _hub()
    replies = hub.register("r")
    _send(hub, Head(request_id="r", attempt=0, seq=0, provider="p"),
          Error(request_id="r", attempt=0, seq=5, status=503, body=b"{}"))
    await replies.next()
    frame = await replies.next()
    assert isinstance(frame, Error) and frame.status == 503


def test_open_routing_families_and_pins() -> None:
    from ingress.catalog import Catalog

    config = parse_config({
        "open_routing": True,
        "providers": {"claude": {"kind": "anthropic"}, "google": {"kind": "gemini"},
                      "oai": {"kind": "openai"}, "vllm": {"kind": "openai"}},
        "models": [{"slug": "gpt-4o", "routes": [{"provider": "vllm", "model": "llama"}]}]}, "c")
    catalog = Catalog(config)

    def routes(slug: str, **kw: object) -> list[tuple[str, str]]:
        return [(r.provider, r.model) for r in catalog.routes(slug, **kw)]  # type: ignore[arg-type]

    assert routes("claude-sonnet-4-6") == [("claude", "claude-sonnet-4-6")]
    assert routes("gemini-2.5-flash") == [("google", "gemini-2.5-flash")]
    assert routes("o3-mini") == [("oai", "o3-mini"), ("vllm", "o3-mini")]
    assert routes("gpt-4o") == [("vllm", "llama")]  # the catalog keeps priority
    assert routes("claude/claude-opus-4") == [("claude", "claude-opus-4")]
    assert routes("o3-mini", pin="vllm") == [("vllm", "o3-mini")]
    assert routes("claude-sonnet-4-6", endpoint="anthropic_messages") == [("claude", "claude-sonnet-4-6")]
    for slug, pin, code in (("claude-sonnet-4-6", "google", "vendor_cannot_serve"),
                            ("mistral-large", None, "model_not_found"),
                            ("nobody/model", None, "model_not_found")):
        with pytest.raises(GatewayError) as caught:
            catalog.routes(slug, pin=pin)
        assert caught.value.code == code and caught.value.status == 400
    with pytest.raises(GatewayError) as caught:
        catalog.routes("gpt-4o", endpoint="anthropic_messages")
    assert caught.value.code == "no_provider"


def test_error_bodies_in_native_shapes() -> None:
    import json

    from schemas.anthropic import error_dialect as as_anthropic
    from schemas.gemini import error_dialect as as_gemini

    body = GatewayError(429, "queue_full", "busy", param="model",
                        details={"provider": "p"}).encode()
    assert json.loads(as_anthropic(body, 429)) == {"type": "error", "error": {
        "type": "rate_limit_error", "message": "busy", "code": "queue_full", "param": "model",
        "details": {"provider": "p"}}}
    google = json.loads(as_gemini(body, 429))["error"]
    assert (google["code"], google["status"], google["message"]) == (429, "RESOURCE_EXHAUSTED", "busy")
    assert google["details"][0]["reason"] == "queue_full"
    assert google["details"][0]["metadata"] == {"provider": "p", "param": "model"}
    assert google["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"


async def test_a_client_that_falls_too_far_behind_gets_an_explicit_error() -> None:
    from ingress.replies import BUFFER

    hub = _hub()
    replies = hub.register("r")
    _send(hub, Head(request_id="r", attempt=0, seq=0, provider="p"),
          *[_chunk(i) for i in range(1, BUFFER + 5)])
    received = [await replies.next() for _ in range(BUFFER)]  # what fit in the buffer
    assert len(received) == BUFFER
    with pytest.raises(GatewayError) as caught:
        await replies.next()
    assert caught.value.code == "client_too_slow"
    replies.close()
    assert hub.statistics()["waiting"] == 0 and not hub._overflowed


def test_sse_framing_names_events_and_splits_lines() -> None:
    from ingress.relay import sse_event

    assert sse_event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse_event(b"x", "ping") == b"event: ping\ndata: x\n\n"
    assert sse_event(b"one\ntwo", "e") == b"event: e\ndata: one\ndata: two\n\n"
