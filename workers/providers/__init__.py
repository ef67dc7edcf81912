"""Provider adapters: one module (or package) per provider kind, and their shared parts.

    _base.py      the Adapter interface, Call/Answer, the one failure type and its rules
    _http.py      Upstream: the HTTP call every kind makes (auth hook, bodies, SSE, bytes)
    _sse.py       parsing Server-Sent Events from an upstream response
    openai.py     any OpenAI-compatible server          azure.py   Azure OpenAI
    mock.py       deterministic answers, no network
    anthropic/    Messages API: request, response, native relay
    gemini/       generateContent: request, response, embeddings, native relay

A kind knows nothing of Redis, frames, retries or other kinds; `workers.registry` maps
each configured kind to its adapter.
"""
