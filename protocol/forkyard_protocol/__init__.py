"""The Forkyard wire contract: pydantic models of PROTOCOL.md, the method table, and the
JSON Schema generated from them. Imports nothing else of the project."""

from .messages import *  # noqa: F403
from .messages import NOTIFICATIONS, REQUESTS, describe_validation_error
from .models import *  # noqa: F403
from .models import ACTIVE_STATES, FINAL_STATES, PROTOCOL_VERSION, WireModel

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "NOTIFICATIONS",
    "PROTOCOL_VERSION",
    "REQUESTS",
    "WireModel",
    "describe_validation_error",
]
