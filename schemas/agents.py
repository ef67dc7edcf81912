"""Agents and `{{variables}}`: the shapes the Responses API's extensions share.

An agent is a named set of Responses settings (`model: "agent/<name>"` invokes it),
defined in the config (`[agents.<name>]`) or, per org, over the admin API. Variables fill
`{{name}}` placeholders of `input` and `instructions`; a secret one never reaches a log
line, the request log or a stored response.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from schemas.errors import GatewayError

AGENT_PREFIX = "agent/"
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"  # an agent's or a variable's name
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\s*\}\}")


class Variable(Struct, forbid_unknown_fields=True):
    """One `{{name}}` value; `secret` keeps it out of logs and stored responses."""

    value: Annotated[str, Meta(max_length=100_000)]
    secret: bool = False


class Agent(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A named set of Responses settings merged into every call that names it.

    `tools` are Responses tools (function tools, or a built-in tool such as
    `{"type": "current_date"}`) kept as the client would send them; `variables` are
    defaults the call's own `variables` override.
    """

    model: Annotated[str, Meta(min_length=1, max_length=256)]  # a catalog slug
    instructions: Annotated[str, Meta(max_length=100_000)] = ""
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    variables: dict[str, Variable] = msgspec.field(default_factory=dict)
    max_tool_calls: Annotated[int, Meta(ge=0, le=100)] = 10


def substitute(text: str, variables: dict[str, Variable], param: str) -> str:
    """`text` with each `{{name}}` replaced by its variable's value.

    A placeholder whose variable is missing is a 400 naming it (and `param`, the field
    it was found in)."""
    missing = sorted({name for name in PLACEHOLDER.findall(text) if name not in variables})
    if missing:
        raise GatewayError(400, "missing_variable",
                           f"`{param}` uses {', '.join('{{' + m + '}}' for m in missing)} "
                           "but no such variable was given", param=param,
                           details={"variables": missing})
    return PLACEHOLDER.sub(lambda match: variables[match.group(1)].value, text)


def redact_secrets(text: str, variables: dict[str, Variable]) -> str:
    """`text` with every secret variable's value put back as its `{{name}}` placeholder."""
    for name, variable in variables.items():
        if variable.secret and variable.value:
            text = text.replace(variable.value, "{{" + name + "}}")
    return text
