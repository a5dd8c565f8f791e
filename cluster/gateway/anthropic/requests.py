"""The Messages API's request bodies as admission checks them before an engine sees them:
what the gateway itself reads (model, stream, max_tokens, the prompt's parts) is typed; the
rest is the engine's to check, as it is for a direct client (vLLM 0.32's
``AnthropicMessagesRequest`` ignores fields it does not know, and so does this). vLLM's own
request models, dumped, are the fuzz suite's schema (tests/specs/vllm-anthropic-requests.json)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from cluster.gateway.context import COUNT_TOKENS, MESSAGES

PosInt = Annotated[int, Field(ge=1, strict=True)]
Num = Annotated[float, Field(allow_inf_nan=False)]


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # block kinds vary (text, image, tool_use, tool_result, thinking)
    role: Literal["user", "assistant", "system"]  # vLLM takes a `system` turn too
    content: StrictStr | list[dict[str, Any]]


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: StrictStr
    input_schema: dict[str, Any]


class _Prompt(BaseModel):
    """What both routes take: the model, the turns, the shared prompt (system, tools)."""

    model_config = ConfigDict(extra="allow")
    ROUTE: ClassVar[str]
    model: StrictStr = Field(min_length=1)
    messages: list[Message]
    system: StrictStr | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(_Prompt):
    ROUTE: ClassVar[str] = MESSAGES
    max_tokens: PosInt
    stream: StrictBool | None = False
    temperature: Num | None = None
    top_p: Num | None = None
    top_k: int | None = None
    stop_sequences: list[StrictStr] | None = None
    metadata: dict[str, Any] | None = None


class CountTokensRequest(_Prompt):
    ROUTE: ClassVar[str] = COUNT_TOKENS

    @property
    def stream(self) -> bool:  # a count is one JSON answer
        return False
