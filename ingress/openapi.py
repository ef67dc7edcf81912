"""The OpenAPI document, generated from the Structs that validate and shape the wire."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import msgspec

from ingress.admin import AGENT_TYPES, agent_paths  # the agent endpoints (helper dev)
from ingress.files import PURPOSES
from ingress.reports import REPORT_TYPES, report_paths
from schemas.admin import (
    KeyCreate,
    KeyCreated,
    KeyList,
    KeyPatch,
    KeyView,
    OrgUpdate,
    OrgView,
    ProjectCreate,
    ProjectList,
    ProjectPatch,
    ProjectView,
)
from schemas.batch import Batch, BatchList, CreateBatch, FileDeleted, FileList, FileObject
from schemas.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    EmbeddingList,
    EmbeddingRequest,
    ModelCard,
    ModelList,
    ModelProviderList,
    RouterModelList,
)
from schemas.completions import CompletionRequest, TextCompletion
from schemas.errors import ErrorBody
from schemas.kinds import NATIVES
from schemas.media import AUDIO_FORMATS, ImageRequest

_REF = "#/components/schemas/{name}"
# What an endpoint that takes a body can answer besides 200: 408 when the body is too slow,
# 413 over limits.max_body_bytes, 400 for bad JSON and the other input bounds.
_BODY_ERRORS = (400, 401, 408, 413, 422, 429, 502, 503, 504)


def _json(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=name)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "error", "content": _json("ErrorBody")} for s in statuses}


ADMIN_TYPES = (KeyCreate, KeyCreated, KeyPatch, KeyView, KeyList, OrgUpdate, OrgView,
               ProjectCreate, ProjectPatch, ProjectView, ProjectList)


def _admin_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    """`/v1/admin/...`: keys, orgs, projects. 401 without a key, 403 for members and for
    another org, 404 for an id the caller cannot see."""

    def op(summary: str, answer: str, status: int = 200, body: str | None = None,
           params: tuple[str, ...] = (), query: tuple[str, ...] = (),
           errors: tuple[int, ...] = ()) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary, "security": secured,
            "responses": {str(status): {"description": "ok", "content": _json(answer)},
                          **_errors(401, 403, 503, *errors)}}
        if body is not None:
            operation["requestBody"] = {"required": True, "content": _json(body)}
            operation["responses"].update(_errors(400, 422))
        parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                      for n in params]
        parameters += [{"name": n, "in": "query", "required": False,
                        "schema": {"type": "string"}} for n in query]
        if parameters:
            operation["parameters"] = parameters
        return operation

    key = ("id",)
    return {
        "/v1/admin/keys": {
            "post": op("Create a key (the secret is shown once)", "KeyCreated", 201, "KeyCreate",
                       errors=(404,)),
            "get": op("List keys", "KeyList", query=("org", "project"), errors=(400, 422))},
        "/v1/admin/keys/{id}": {
            "get": op("A key's record", "KeyView", params=key, errors=(404,)),
            "patch": op("Set a key's name and limits", "KeyView", body="KeyPatch", params=key,
                        errors=(404,)),
            "delete": op("Revoke a key (its record stays readable)", "KeyView", params=key,
                         errors=(404,))},
        "/v1/admin/keys/{id}/rotate": {
            "post": op("A new secret for a key, same id and settings", "KeyCreated", params=key,
                       errors=(404, 409))},
        "/v1/admin/orgs/{org}": {
            "get": op("An org's plan and limits", "OrgView", params=("org",), errors=(422,)),
            "put": op("Set an org's plan and limits (operator)", "OrgView", body="OrgUpdate",
                      params=("org",))},
        "/v1/admin/projects": {
            "post": op("Create a project", "ProjectView", 201, "ProjectCreate", errors=(409,)),
            "get": op("List an org's projects", "ProjectList", query=("org",),
                      errors=(400, 422))},
        "/v1/admin/projects/{name}": {
            "patch": op("Set a project's limits", "ProjectView", body="ProjectPatch",
                        params=("name",), errors=(404,))},
    }


def _surface_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    """Legacy completions, model retrieval, images and audio (issue 11)."""
    completions = {"post": {
        "summary": "Create a legacy completion (relayed by openai/azure kinds, through the "
                   "chat call elsewhere)", "security": secured,
        "requestBody": {"required": True, "content": _json("CompletionRequest")},
        "responses": {"200": {"description": "A text_completion, or with stream=true an event "
                              "stream of them ending in `data: [DONE]`",
                              "content": {**_json("TextCompletion"), "text/event-stream": {
                                  "schema": {"$ref": _REF.format(name="TextCompletion")}}}},
                      **_errors(*_BODY_ERRORS)}}}
    model = {"get": {
        "summary": "One catalog model in OpenAI's model shape", "security": secured,
        "parameters": [{"name": "model_id", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "ok", "content": _json("ModelCard")},
                      **_errors(400, 401, 404, 503)}}}
    images = {"post": {
        "summary": "Generate images (openai/azure kinds relayed, mock answers)",
        "security": secured,
        "requestBody": {"required": True, "content": _json("ImageRequest")},
        "responses": {"200": {"description": "OpenAI's images response (`created`, `data`)"},
                      **_errors(*_BODY_ERRORS)}}}
    form = {"type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
        "language": {"type": "string"}, "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": list(AUDIO_FORMATS)},
        "temperature": {"type": "number"}}}

    def audio(summary: str) -> dict[str, Any]:
        return {"post": {
            "summary": summary, "security": secured,
            "requestBody": {"required": True,
                            "content": {"multipart/form-data": {"schema": form}}},
            "responses": {"200": {"description": "The transcript: JSON (`text`, `usage`), or "
                                  "text/plain for response_format text, srt or vtt"},
                          **_errors(*_BODY_ERRORS, 415)}}}

    paths = {"/v1/completions": completions, "/v1/models/{model_id}": model,
             "/v1/images/generations": images,
             "/v1/audio/transcriptions": audio("Transcribe an audio upload"),
             "/v1/audio/translations": audio("Translate an audio upload into English")}
    return paths


BATCH_TYPES = (FileObject, FileList, FileDeleted, CreateBatch, Batch, BatchList)


def _batch_paths(secured: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The Files API (for batches) and the Batch API (ingress/files.py, ingress/batches.py).
    401 without a key, 403 for an operator key, 404 for another org's file or batch."""

    def op(summary: str, answer: dict[str, Any], *errors: int, body: dict[str, Any] | None = None,
           path: tuple[str, ...] = (), query: dict[str, dict[str, Any]] | None = None
           ) -> dict[str, Any]:
        operation: dict[str, Any] = {
            "summary": summary, "security": secured,
            "responses": {"200": {"description": "ok", "content": answer},
                          **_errors(401, 403, 429, 503, *errors)}}
        if body is not None:
            operation["requestBody"] = {"required": True, "content": body}
        parameters = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                      for n in path]
        parameters += [{"name": n, "in": "query", "required": False, "schema": schema}
                       for n, schema in (query or {}).items()]
        if parameters:
            operation["parameters"] = parameters
        return operation

    upload = {"multipart/form-data": {"schema": {
        "type": "object", "required": ["purpose", "file"], "properties": {
            "purpose": {"type": "string", "enum": list(PURPOSES)},
            "file": {"type": "string", "format": "binary"},
            "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
            "expires_after[seconds]": {"type": "integer", "minimum": 3600,
                                       "maximum": 2592000}}}}}
    page = {"after": {"type": "string"}}
    file_id, batch_id = ("file_id",), ("batch_id",)
    octets = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "/v1/files": {
            "post": op("Upload a batch input file (JSONL, checked line by line)",
                       _json("FileObject"), 400, 408, 413, 415, body=upload),
            "get": op("The org's files", _json("FileList"), 400, query={
                **page, "purpose": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "maximum": 10000},
                "order": {"type": "string", "enum": ["asc", "desc"]}})},
        "/v1/files/{file_id}": {
            "get": op("A file", _json("FileObject"), 404, path=file_id),
            "delete": op("Delete a file", _json("FileDeleted"), 404, path=file_id)},
        "/v1/files/{file_id}/content": {
            "get": op("A file's bytes", octets, 404, path=file_id)},
        "/v1/batches": {
            "post": op("Create a batch from an uploaded file (`validating`, or `failed` with "
                       "the lines that cannot run)", _json("Batch"), 400, 404, 408, 413, 422,
                       body=_json("CreateBatch")),
            "get": op("The org's batches, newest first", _json("BatchList"), 400, query={
                **page, "limit": {"type": "integer", "minimum": 1, "maximum": 100}})},
        "/v1/batches/{batch_id}": {
            "get": op("A batch", _json("Batch"), 404, path=batch_id)},
        "/v1/batches/{batch_id}/cancel": {
            "post": op("Cancel a batch (`cancelling`; 409 once it ended)", _json("Batch"),
                       400, 404, 408, 409, 413, 422, path=batch_id)},
    }


@cache
def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 for the gateway's endpoints."""
    types = [ChatRequest, ChatCompletion, ChatCompletionChunk, ModelList, RouterModelList,
             ModelProviderList, ErrorBody, EmbeddingRequest, EmbeddingList, CompletionRequest,
             TextCompletion, ImageRequest, ModelCard,
             *(api.request for api in NATIVES), *REPORT_TYPES, *ADMIN_TYPES, *AGENT_TYPES,
             *BATCH_TYPES]
    _, components = msgspec.json.schema_components(types, ref_template=_REF)
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    chat = {
        "post": {
            "summary": "Create a chat completion (plain JSON or Server-Sent Events)",
            "security": secured,
            "requestBody": {"required": True, "content": _json("ChatRequest")},
            "responses": {
                "200": {"description": "A chat.completion, or with stream=true an event "
                        "stream of chat.completion.chunk objects ending in `data: [DONE]`",
                        "content": {**_json("ChatCompletion"), "text/event-stream": {
                            "schema": {"$ref": _REF.format(name="ChatCompletionChunk")}}}},
                **_errors(*_BODY_ERRORS),
            },
        }
    }

    def listing(name: str, summary: str) -> dict[str, Any]:
        return {"get": {"summary": summary, "security": secured, "responses": {
            "200": {"description": "ok", "content": _json(name)}, **_errors(401, 503)}}}

    embeddings = {"post": {
        "summary": "Create embeddings", "security": secured,
        "requestBody": {"required": True, "content": _json("EmbeddingRequest")},
        "responses": {"200": {"description": "an embedding list", "content": _json("EmbeddingList")},
                      **_errors(*_BODY_ERRORS)}}}

    def native(request: str, summary: str) -> dict[str, Any]:
        # Relayed untranslated: only the fields the gateway checks are described.
        return {"post": {"summary": summary, "security": secured,
                         "requestBody": {"required": True, "content": _json(request)},
                         "responses": {"200": {"description": "the provider's own answer"},
                                       **_errors(*_BODY_ERRORS)}}}

    natives = {}
    for api in NATIVES:
        natives[api.path] = native(api.request.__name__, api.summary)
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in re.findall(r"{(\w+)}", api.path)]
        if parameters:
            natives[api.path]["post"]["parameters"] = parameters
            # A path naming no served method (`models/x:countTokens`) is a 404.
            natives[api.path]["post"]["responses"].update(_errors(404))
    health = {"get": {"responses": {"200": {"description": "ok"}, **_errors(503)}}}
    providers = listing("ModelProviderList", "The providers that serve a model")
    providers["get"]["responses"].update(_errors(400, 404))  # a slug too long; not in the catalog
    providers["get"]["parameters"] = [
        {"name": "model_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    models = listing("ModelList", "The catalog in OpenAI's list shape")
    surface = {"/v1/chat/completions": chat, "/v1/embeddings": embeddings, "/v1/models": models,
               **_surface_paths(secured)}
    # The hosted router we replace serves its whole OpenAI surface under /v3/router too.
    router = {"/v3/router/" + path.removeprefix("/v1/"): item for path, item in surface.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Switchboard", "version": "0.1.0"},
        "paths": {
            **surface,
            **router,
            **natives,
            "/v1/router/models": listing("RouterModelList", "The catalog with names"),
            "/v1/router/models/{model_id}/providers": providers,
            "/healthz": health,
            "/readyz": health,
            **report_paths(_REF, _errors(400, 401, 403, 422, 503)),
            **_admin_paths(secured),
            **agent_paths(_REF, secured),
            **_batch_paths(secured),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            # The Anthropic and Gemini SDKs send the same key in x-api-key / x-goog-api-key.
        },
    }
