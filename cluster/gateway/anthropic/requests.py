"""The Messages API's request bodies as admission checks them before an engine sees them:
what the gateway itself reads (model, stream, max_tokens, the prompt's parts) is typed; the
rest is the engine's to check, as it is for a direct client (vLLM 0.32's
``AnthropicMessagesRequest`` ignores fields it does not know, and so does this). vLLM's own
request models, dumped, are the fuzz suite's schema (tests/specs/vllm-anthropic-requests.json)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, model_validator

from cluster.gateway.context import COUNT_TOKENS, MESSAGES
from cluster.gateway.errors import OpenAIError

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
    messages: list[Message] = Field(min_length=1)  # Anthropic's 400 too: an empty conversation is no request
    system: StrictStr | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _turns_have_content(self) -> _Prompt:
        """Anthropic's 400s: every turn has content but a final assistant one (a prefill), and
        no text block is empty (vLLM answered them)."""
        last = len(self.messages) - 1
        for i, m in enumerate(self.messages):
            if not m.content and not (i == last and m.role == "assistant"):
                raise ValueError(f"messages.{i}: all messages must have non-empty content except for the "
                                 "optional final assistant message")
            if isinstance(m.content, list) and any(b.get("type") == "text" and not b.get("text") for b in m.content):
                raise ValueError(f"messages.{i}: text content blocks must be non-empty")
        return self

    @model_validator(mode="after")
    def _tool_choice_names_a_tool(self) -> _Prompt:
        """Anthropic's 400: `any` or `tool` without tools, or `tool` naming one not given (vLLM
        took them and answered as if no tool were asked for)."""
        kind = (self.tool_choice or {}).get("type")
        if kind in ("any", "tool") and not self.tools:
            raise ValueError(f"tool_choice.type '{kind}' needs tools")
        name = (self.tool_choice or {}).get("name")
        if kind == "tool" and name not in {t.name for t in self.tools or ()}:
            raise ValueError(f"tool_choice.name: tool {name!r} is not among the tools given")
        return self


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


MIN_BUDGET = 1024  # Anthropic's (and vLLM's) least thinking.budget_tokens


def adaptive_thinking(data: dict[str, Any], route: str) -> bool:
    """Rewrite, in place, ``thinking: {"type": "enabled", "budget_tokens": N}`` as
    ``{"type": "adaptive"}`` (its ``display`` kept) for an engine that cannot enforce a thinking
    budget; True when rewritten. vLLM 0.32 turns the budget into ``thinking_token_budget`` and
    refuses it with a 400 unless the engine has a ``reasoning_config`` — which gpt-oss's
    reasoning parser (``openai_gptoss``, no reasoning start/end strings) never gets by itself —
    so every agent that asks for extended thinking (what Claude Code sends) would fail. Anthropic
    treats the budget as a ceiling the model need not reach: the model still reasons, within
    ``max_tokens``. The budget is checked first, as Anthropic checks it (at least 1024, below
    ``max_tokens``), so a bad one is still the 400 it was."""
    thinking = data.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return False
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_BUDGET:
        raise OpenAIError(400, f"thinking.budget_tokens: must be an integer of at least {MIN_BUDGET}",
                          param="thinking.budget_tokens")
    max_tokens = data.get("max_tokens")
    if route == MESSAGES and isinstance(max_tokens, int) and budget >= max_tokens:
        raise OpenAIError(400, "max_tokens must be greater than thinking.budget_tokens",
                          param="thinking.budget_tokens")
    data["thinking"] = {"type": "adaptive", **({"display": thinking["display"]} if "display" in thinking else {})}
    return True
