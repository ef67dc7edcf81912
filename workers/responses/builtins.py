"""The built-in tools the gateway runs itself (`{"type": "current_date"}`).

The model sees each as a function tool of the same name; when it calls one, the gateway
runs it, feeds the result back and calls the model again (workers/responses/run.py).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Builtin:
    """A tool the gateway answers: its function definition and what it returns."""

    definition: dict[str, Any]
    run: Callable[[str], str]  # the call's arguments (JSON text) -> the result text


def _current_date(arguments: str) -> str:
    # Seconds are enough for a model, and the ISO 8601 form is what every model reads.
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat()


BUILTINS: dict[str, Builtin] = {
    "current_date": Builtin(
        {"name": "current_date",
         "description": "The current date and time in UTC, in ISO 8601 form.",
         "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
        _current_date),
}
