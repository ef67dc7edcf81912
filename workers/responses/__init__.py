"""The Responses API served by translation to each kind's chat call (`Responses`)."""

from workers.responses.run import Responses

__all__ = ["Responses"]
