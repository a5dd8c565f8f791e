"""Request bodies checked before they reach an engine: JSON, field presence and types,
parameters neither OpenAI nor vLLM know. Semantic checks that need the tokenizer
(prompt + max_tokens against the context) stay with the engine, whose 400 the gateway
passes on in the OpenAI shape."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, model_validator

from cluster.gateway.errors import OpenAIError
from cluster.gateway.admission.params import ALL, CHAT, COMPLETIONS, RESPONSES, without_accepted
from cluster.gateway.admission.schemas import check_schemas

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
PosInt = Annotated[int, Field(ge=1, strict=True)]
Num = Annotated[float, Field(allow_inf_nan=False)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Base):
    include_usage: StrictBool | None = None
    continuous_usage_stats: StrictBool | None = None


class ContentPart(BaseModel):
    # Part kinds vary (text, images, audio, files): the engine checks the others' fields.
    model_config = ConfigDict(extra="allow")
    type: StrictStr

    @model_validator(mode="after")
    def _text_is_text(self) -> ContentPart:
        if self.type == "text" and not isinstance(getattr(self, "text", None), str):
            raise ValueError("a text content part needs a string 'text'")
        return self


class Message(BaseModel):
    # Message fields vary (tool calls, names, reasoning): the engine checks them.
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None


# vLLM 0.32's values (the OpenAI SDK's ReasoningEffort): which of them a model takes is the
# engine's answer (harmony, gpt-oss's format, takes low/medium/high and 400s the others).
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class _Common(_Base):
    """What every generation route takes: OpenAI's sampling and vLLM's extensions."""

    ROUTE: ClassVar[str]
    model: StrictStr = Field(min_length=1)
    stream: StrictBool | None = False
    temperature: Annotated[Num, Field(ge=0, le=2)] | None = None
    top_p: Annotated[Num, Field(gt=0, le=1)] | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: int | None = None
    presence_penalty: Annotated[Num, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[Num, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Num] | None = None
    # vLLM's sampling extensions, passed through.
    top_k: int | None = None
    min_p: Num | None = None
    repetition_penalty: Num | None = None
    ignore_eos: StrictBool | None = None
    skip_special_tokens: StrictBool | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: StrictBool | None = None
    priority: int | None = None
    structured_outputs: dict[str, Any] | None = None
    cache_salt: StrictStr | None = None


class _Sampling(_Common):
    stream_options: StreamOptions | None = None
    max_tokens: PosInt | None = None
    n: Annotated[int, Field(ge=1, le=128, strict=True)] | None = None
    min_tokens: NonNegInt | None = None
    spaces_between_special_tokens: StrictBool | None = None
    truncate_prompt_tokens: int | None = None
    response_format: dict[str, Any] | None = None
    return_tokens_as_token_ids: StrictBool | None = None


class ChatCompletionRequest(_Sampling):
    ROUTE: ClassVar[str] = CHAT
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: PosInt | None = None
    logprobs: StrictBool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning_effort: ReasoningEffort | None = None
    include_reasoning: StrictBool | None = None  # vLLM's: false leaves the reasoning out of the answer
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: StrictBool | None = None
    continue_final_message: StrictBool | None = None
    echo: StrictBool | None = None


class CompletionRequest(_Sampling):
    ROUTE: ClassVar[str] = COMPLETIONS
    prompt: StrictStr | list[StrictStr] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: StrictBool | None = None
    suffix: StrictStr | None = None
    best_of: PosInt | None = None


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="allow")  # summary, generate_summary: the engine checks them
    effort: ReasoningEffort | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")  # verbosity: vLLM accepts and ignores it
    format: dict[str, Any] | None = None  # text, json_object, json_schema: the engine checks them


class ResponsesRequest(_Common):
    """OpenAI's Responses create parameters as vLLM 0.32 takes them (its ResponsesRequest);
    `request_id` is not one: vLLM makes it the response id, which must stay its own."""

    ROUTE: ClassVar[str] = RESPONSES
    input: StrictStr | list[dict[str, Any]]
    instructions: StrictStr | None = None
    max_output_tokens: PosInt | None = None
    max_tool_calls: PosInt | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    reasoning: Reasoning | None = None
    include_reasoning: StrictBool | None = None
    text: TextConfig | None = None
    include: list[StrictStr] | None = None
    previous_response_id: StrictStr | None = None
    prompt: dict[str, Any] | None = None
    store: StrictBool | None = None
    background: StrictBool | None = None
    truncation: StrictStr | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    chat_template_kwargs: dict[str, Any] | None = None


# Parameters of the OpenAI API that owc's engines do not serve: a clear 400, not silence.
UNSUPPORTED = {
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
    "conversation": "server-side conversations are not supported: send the input, or previous_response_id",
    "context_management": "server-side context compaction is not supported",
}


def parse_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise OpenAIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    return data


def validate(data: dict[str, Any], schema: type[BaseModel]) -> BaseModel:
    """The request checked against ``schema``, less the parameters owc accepts and ignores
    (cluster.gateway.admission.params), which are no 400."""
    for key, why in UNSUPPORTED.items() if schema.ROUTE in ALL else ():  # the OpenAI routes' parameters
        if data.get(key) is not None:
            raise OpenAIError(400, f"unsupported parameter '{key}': {why}", param=key, code="unsupported_parameter")
    try:
        # Clients send explicit nulls for parameters they do not use: those are no requests.
        checked = without_accepted(data, schema.ROUTE)
        req = schema.model_validate({k: v for k, v in checked.items() if k not in UNSUPPORTED or schema.ROUTE not in ALL})
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise OpenAIError(
                400, f"Unrecognized request argument supplied: {param}", param=param, code="unsupported_parameter"
            ) from None
        if first["type"] == "missing":
            raise OpenAIError(400, f"missing required parameter '{param}'", param=param, code="missing_required_parameter") from None
        raise OpenAIError(400, f"invalid value for '{param}': {first['msg']}", param=param, code="invalid_value") from None
    check_schemas(data, schema.ROUTE)  # a structured output's or a tool's JSON Schema (cluster.gateway.admission.schemas)
    _check_tool_choice(data.get("tool_choice"))
    return req


# tool_choice kinds vLLM takes and ignores (nothing enforces them): a 400, not a silently freer choice.
_TOOL_CHOICE_REFUSED = {
    "allowed_tools": "send only the allowed tools in 'tools', with tool_choice 'auto' or 'required'",
    **{t: "hosted tools are not supported" for t in (
        "file_search", "web_search", "web_search_preview", "computer_use_preview", "code_interpreter",
        "image_generation", "mcp")},
}


def _check_tool_choice(choice: Any) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    if isinstance(kind, str) and kind in _TOOL_CHOICE_REFUSED:
        raise OpenAIError(400, f"unsupported value for 'tool_choice': type '{kind}' is not supported: "
                          f"{_TOOL_CHOICE_REFUSED[kind]}", param="tool_choice", code="unsupported_value")
