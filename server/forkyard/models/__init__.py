"""Chat-model providers behind one small interface, used by the chat and the agent loop.

`create_chat_model(settings.models[name], os.environ)` gives a `ChatModel`; its `stream`
yields `TextDelta`s then one `Completion`; every failure is a `ModelError` whose message
is fit to show the user.
"""

from forkyard.models.config import ModelConfig
from forkyard.models.errors import ModelError, ModelErrorKind
from forkyard.models.factory import PLACEHOLDER_API_KEY, create_chat_model
from forkyard.models.types import (
    ChatMessage,
    ChatModel,
    Completion,
    Role,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolSpec,
    Usage,
    complete,
    estimate_message_tokens,
    estimate_tokens,
)

__all__ = [
    "PLACEHOLDER_API_KEY",
    "AnthropicChatModel",
    "ChatMessage",
    "ChatModel",
    "Completion",
    "ModelConfig",
    "ModelError",
    "ModelErrorKind",
    "OpenAIChatModel",
    "Role",
    "StopReason",
    "StreamEvent",
    "TextDelta",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "complete",
    "create_chat_model",
    "estimate_message_tokens",
    "estimate_tokens",
]


def __getattr__(name: str) -> object:
    """The provider classes load their SDK, which is slow: import them on first use."""
    if name == "AnthropicChatModel":
        from forkyard.models.anthropic_provider import AnthropicChatModel

        return AnthropicChatModel
    if name == "OpenAIChatModel":
        from forkyard.models.openai_provider import OpenAIChatModel

        return OpenAIChatModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
