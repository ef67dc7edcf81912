"""The mock's structured output: a minimal JSON value valid for a JSON schema.

Walks the schema as clients send it (OpenAI `response_format.json_schema.schema`, a tool's
`parameters`, Anthropic `input_schema`, Gemini `responseSchema` with upper-case types) and
builds the smallest value that validates: an object with its required properties, an array
with `minItems` items, the first `enum` / `const` value, a string of the declared `format`
(date-time, date, email, uri, uuid) padded to `minLength`, a number inside its bounds.
`$ref` (to `#/...` of the same document), `anyOf` / `oneOf` (the first branch that is not
null) and `allOf` (merged) are followed. Not honoured: `pattern`, `uniqueItems` with more
than one item, `not`, `if`/`then`; recursion deeper than MAX_DEPTH,
or more than MAX_NODES values, gives `null`.
"""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 32
MAX_NODES = 10_000
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "00:00:00Z",
    "email": "mock@example.com", "idn-email": "mock@example.com", "uri": "https://example.com/",
    "url": "https://example.com/", "iri": "https://example.com/", "hostname": "example.com",
    "ipv4": "192.0.2.1", "ipv6": "2001:db8::1", "duration": "PT1S",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")


class _Root(dict[str, Any]):
    """The schema document, and how many more values the walk may build (MAX_NODES in all:
    nested `minItems` must not make a request's answer unbounded)."""

    remaining: int = 0


def instance(schema: Any) -> Any:
    """A minimal value valid for `schema` (a JSON schema as decoded JSON)."""
    root = _Root(schema if isinstance(schema, dict) else {})
    root.remaining = MAX_NODES
    return _value(schema, root, 0)


def _value(schema: Any, root: _Root, depth: int) -> Any:
    root.remaining -= 1
    if not isinstance(schema, dict) or depth > MAX_DEPTH or root.remaining < 0:
        return None  # `true` / `{}` accept anything, null included
    if isinstance(ref := schema.get("$ref"), str):
        return _value(_resolve(ref, root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(enum := schema.get("enum"), list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        if isinstance(branches := schema.get(key), list) and branches:
            chosen = next((b for b in branches if _type_of(b, root) != "null"), branches[0])
            return _value(chosen, root, depth + 1)
    if isinstance(parts := schema.get("allOf"), list) and parts:
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return _value(_merge([rest, *(_deref(p, root) for p in parts)]), root, depth + 1)
    match _type_of(schema, root):
        case "object":
            return _object(schema, root, depth)
        case "array":
            return _array(schema, root, depth)
        case "string":
            return _string(schema)
        case "integer":
            return int(_number(schema, integer=True))
        case "number":
            return _number(schema, integer=False)
        case "boolean":
            return True
        case _:
            return None


def _type_of(schema: Any, root: _Root) -> str:
    """The schema's type in lower case (Gemini writes OBJECT), inferred when absent."""
    if not isinstance(schema, dict):
        return ""
    if isinstance(ref := schema.get("$ref"), str):
        return _type_of(_resolve(ref, root), root)
    declared = schema.get("type")
    if isinstance(declared, list):  # ["string", "null"]: the first that is not null
        declared = next((t for t in declared if str(t).lower() != "null"), "null")
    if isinstance(declared, str) and declared.lower() in _TYPES:
        return declared.lower()
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return ""


def _resolve(ref: str, root: _Root) -> Any:
    """A `#/a/b` pointer into the same document (anything else: no constraint)."""
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for token in filter(None, ref[1:].split("/")):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node.get(token) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _deref(schema: Any, root: _Root) -> dict[str, Any]:
    if isinstance(schema, dict) and isinstance(ref := schema.get("$ref"), str):
        return _resolve(ref, root)
    return schema if isinstance(schema, dict) else {}


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """allOf's parts as one schema: properties and required lists united."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _object(schema: dict[str, Any], root: _Root, depth: int) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = [name for name in schema.get("required") or () if isinstance(name, str)]
    wanted = schema.get("minProperties")
    if isinstance(wanted, int) and wanted > len(required):  # fill up with optional ones
        required += [name for name in properties if name not in required][:wanted - len(required)]
    return {name: _value(properties.get(name, {}), root, depth + 1) for name in required}


def _array(schema: dict[str, Any], root: _Root, depth: int) -> list[Any]:
    prefix = schema.get("prefixItems")
    out = [_value(item, root, depth + 1) for item in prefix] if isinstance(prefix, list) else []
    wanted = schema.get("minItems")
    items = schema.get("items")
    while isinstance(wanted, int) and len(out) < wanted and root.remaining > 0:
        out.append(_value(items if isinstance(items, dict) else {}, root, depth + 1))
    return out


def _string(schema: dict[str, Any]) -> str:
    text = _FORMATS.get(str(schema.get("format", "")), "mock")
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(text) < low:
        text += "x" * min(low - len(text), 100_000)
    if isinstance(high, int) and len(text) > high:
        text = text[:max(high, 0)]
    return text


def _number(schema: dict[str, Any], *, integer: bool) -> float:
    """0, or the nearest value inside the bounds (a multiple of `multipleOf` when set)."""
    step = schema.get("multipleOf")
    step = step if isinstance(step, (int, float)) and step > 0 else (1 if integer else 0)
    low, high = _bound(schema, "minimum", "exclusiveMinimum"), _bound(schema, "maximum", "exclusiveMaximum")
    value: float = 0
    if low is not None and (value < low[0] or (value == low[0] and low[1])):
        value = low[0]
        if step:
            value = math.ceil(value / step) * step
        if low[1] and value <= low[0]:
            value += step or (abs(low[0]) * 1e-6 or 1e-6)
    if high is not None and (value > high[0] or (value == high[0] and high[1])):
        value = high[0]
        if step:
            value = math.floor(value / step) * step
        if high[1] and value >= high[0]:
            value -= step or (abs(high[0]) * 1e-6 or 1e-6)
    return value


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str) -> tuple[float, bool] | None:
    """(limit, is_exclusive): draft 2020 numbers, or draft 4's boolean flag on `inclusive`."""
    flag, limit = schema.get(exclusive), schema.get(inclusive)
    if isinstance(flag, (int, float)) and not isinstance(flag, bool):
        return float(flag), True
    if isinstance(limit, (int, float)) and not isinstance(limit, bool):
        return float(limit), flag is True
    return None
