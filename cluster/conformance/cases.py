"""The conformance calls, one per feature owc must serve exactly as bare vLLM: chat (plain,
streamed, reasoning, tools, structured outputs), the Responses API (plain, streamed, tools,
json_schema, reasoning effort; stored responses' follow-ups, retrieval and tool-output turns:
cluster.conformance.stored), the OpenAI parameters owc accepts and ignores, and Anthropic's
Messages API (cluster.conformance.messages). Each
case is a function of (client, model, settings) returning an observation; it runs once
against the bare engine and once through the gateway, and the two must be equal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster.conformance import calls, messages, stored
from cluster.conformance.calls import Observation, observe
from cluster.gateway.admission.params import CHAT, RESPONSES, accepted_on

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
           "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"], "additionalProperties": False}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                      "parameters": TIME, "strict": True}},
]
RESPONSE_TOOLS = [{"type": "function", **t["function"]} for t in CHAT_TOOLS]
ANSWER = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
          "additionalProperties": False}
ASK = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]
INVALID_EFFORT = "extreme"


@dataclass(frozen=True)
class Settings:
    max_tokens: int = 48


@dataclass(frozen=True)
class Case:
    name: str
    compares: str  # what the observations hold, for the table
    run: Callable[[Any, str, Settings], Observation]


def _chat(client: Any, model: str, s: Settings, *, stream: bool = False, **kw: Any) -> Observation:
    args = {"model": model, "messages": kw.pop("messages", ASK), "max_tokens": s.max_tokens, "temperature": 0, **kw}
    return observe(lambda: calls.chat_stream(client, **args) if stream else calls.chat(client, **args))


def _resp_args(model: str, s: Settings) -> dict[str, Any]:
    return {"model": model, "input": ASK[0]["content"], "max_output_tokens": s.max_tokens, "temperature": 0}


def _resp(client: Any, model: str, s: Settings, *, stream: bool = False, **kw: Any) -> Observation:
    args = {**_resp_args(model, s), **kw}
    return observe(lambda: calls.responses_stream(client, **args) if stream else calls.responses(client, **args))


def _each(**variants: Callable[[], Observation]) -> Observation:
    """Several calls as one observation (e.g. every valid reasoning effort)."""
    return {name: call() for name, call in variants.items()}


def _named(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name}}


def _ignored(route: str) -> dict[str, Any]:
    """Every parameter owc accepts and ignores on ``route``, with an example value."""
    top: dict[str, Any] = {}
    for name, a in accepted_on(route).items():
        parent, _, child = name.partition(".")
        if child:
            top.setdefault(parent, {})[child] = a.example
        else:
            top[parent] = a.example
    return top


def _json_schema(name: str) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": ANSWER, "strict": True}}


MESSAGE_TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
                  "input_schema": t["function"]["parameters"], "strict": True} for t in CHAT_TOOLS]


def _msg(client: Any, model: str, s: Settings, call: Callable, **kw: Any) -> Observation:
    """A Messages API call with the `anthropic` SDK (``call``: create or stream)."""
    return messages.observe(client, call(model=model, max_tokens=s.max_tokens, messages=kw.pop("messages", ASK), **kw))


def _tool_turns(client: Any, model: str, s: Settings) -> Observation:
    """A forced tool call, then the conversation with its tool_result turn."""
    call = _msg(client, model, s, messages.create, tools=MESSAGE_TOOLS, tool_choice={"type": "tool", "name": "get_weather"})
    args = (call.get("tool_calls") or [["get_weather", {"city": "Paris"}]])[0][1]
    turns = [*ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                      "input": args}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny, 21 C"}]}]
    return {"call": call, "result": _msg(client, model, s, messages.create, tools=MESSAGE_TOOLS, messages=turns)}


def _text_schema(name: str) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "name": name, "schema": ANSWER, "strict": True}}


CASES: list[Case] = [
    Case("chat", "status, text, finish, usage", lambda c, m, s: _chat(c, m, s)),
    Case("chat stream", "delta kinds, text", lambda c, m, s: _chat(c, m, s, stream=True)),
    Case("chat reasoning separate", "reasoning vs content, streamed and not", lambda c, m, s: _each(
        plain=lambda: _chat(c, m, s, reasoning_effort="low"),
        stream=lambda: _chat(c, m, s, stream=True, reasoning_effort="low"))),
    Case("chat include_reasoning false", "no reasoning, text", lambda c, m, s: _chat(
        c, m, s, extra_body={"include_reasoning": False})),
    Case("chat reasoning_effort valid", "low, medium, high: status, text", lambda c, m, s: _each(
        **{e: (lambda e=e: _chat(c, m, s, reasoning_effort=e)) for e in ("low", "medium", "high")})),
    Case("chat reasoning_effort invalid", f"'{INVALID_EFFORT}' and 'none': status", lambda c, m, s: _each(
        invalid=lambda: _chat(c, m, s, extra_body={"reasoning_effort": INVALID_EFFORT}),
        none=lambda: _chat(c, m, s, reasoning_effort="none"))),
    Case("chat tool_choice auto", "tool calls (parsed arguments), text", lambda c, m, s: _each(
        plain=lambda: _chat(c, m, s, tools=CHAT_TOOLS, tool_choice="auto"),
        stream=lambda: _chat(c, m, s, stream=True, tools=CHAT_TOOLS, tool_choice="auto"))),
    Case("chat tool_choice required", "tool calls (parsed arguments)", lambda c, m, s: _each(
        plain=lambda: _chat(c, m, s, tools=CHAT_TOOLS, tool_choice="required"),
        stream=lambda: _chat(c, m, s, stream=True, tools=CHAT_TOOLS, tool_choice="required"))),
    Case("chat tool_choice named", "tool calls (parsed arguments)", lambda c, m, s: _each(
        plain=lambda: _chat(c, m, s, tools=CHAT_TOOLS, tool_choice=_named("get_weather")),
        stream=lambda: _chat(c, m, s, stream=True, tools=CHAT_TOOLS, tool_choice=_named("get_weather")))),
    Case("chat tool_choice none", "text, no tool call", lambda c, m, s: _chat(c, m, s, tools=CHAT_TOOLS,
                                                                              tool_choice="none")),
    Case("chat parallel_tool_calls", "true and false: tool calls", lambda c, m, s: _each(
        true=lambda: _chat(c, m, s, tools=CHAT_TOOLS, tool_choice="required", parallel_tool_calls=True),
        false=lambda: _chat(c, m, s, tools=CHAT_TOOLS, tool_choice="required", parallel_tool_calls=False))),
    Case("chat json_schema", "parsed JSON", lambda c, m, s: {
        **(o := _chat(c, m, s, response_format=_json_schema("answer"))), "json": calls.parsed(o.get("text"))}),
    Case("chat json_object", "text", lambda c, m, s: _chat(
        c, m, s, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Answer in JSON: what is the capital of France?"}])),
    Case("chat structured_outputs (vLLM)", "text from a choice", lambda c, m, s: _chat(
        c, m, s, extra_body={"structured_outputs": {"choice": ["yes", "no"]}})),
    Case("chat ignored parameters", ", ".join(accepted_on(CHAT)), lambda c, m, s: _chat(
        c, m, s, stream=True, extra_body=_ignored(CHAT))),
    Case("responses", "status, item types, text, usage", lambda c, m, s: _resp(c, m, s)),
    Case("responses stream", "event-type sequence, text", lambda c, m, s: _resp(c, m, s, stream=True)),
    Case("responses reasoning effort", "low, high and invalid: status, text", lambda c, m, s: _each(
        low=lambda: _resp(c, m, s, reasoning={"effort": "low"}),
        high=lambda: _resp(c, m, s, reasoning={"effort": "high"}),
        invalid=lambda: _resp(c, m, s, extra_body={"reasoning": {"effort": INVALID_EFFORT}}))),
    Case("responses include_reasoning false", "items, text", lambda c, m, s: _resp(
        c, m, s, extra_body={"include_reasoning": False})),
    Case("responses tools", "auto, required, named: function calls (parsed arguments)", lambda c, m, s: _each(
        auto=lambda: _resp(c, m, s, tools=RESPONSE_TOOLS, tool_choice="auto"),
        required=lambda: _resp(c, m, s, tools=RESPONSE_TOOLS, tool_choice="required"),
        named=lambda: _resp(c, m, s, tools=RESPONSE_TOOLS, tool_choice={"type": "function", "name": "get_weather"}))),
    Case("responses tools stream", "event-type sequence, function calls", lambda c, m, s: _resp(
        c, m, s, stream=True, tools=RESPONSE_TOOLS, tool_choice="required")),
    Case("responses json_schema", "parsed JSON", lambda c, m, s: {
        **(o := _resp(c, m, s, text=_text_schema("answer"))), "json": calls.parsed(o.get("text"))}),
    Case("responses ignored parameters", ", ".join(accepted_on(RESPONSES)), lambda c, m, s: _resp(
        c, m, s, stream=True, extra_body=_ignored(RESPONSES))),
    Case("responses follow-up (previous_response_id)", "first, follow-up and streamed follow-up: items, text, usage",
         lambda c, m, s: stored.follow_up(c, _resp_args(m, s))),
    Case("responses retrieval", "created vs retrieved (same id, text), cancel, unknown id: status",
         lambda c, m, s: stored.retrieval(c, _resp_args(m, s))),
    Case("responses tool output turn", "named call, then its function_call_output as a follow-up: items, text",
         lambda c, m, s: stored.tool_output(c, _resp_args(m, s), RESPONSE_TOOLS, "get_weather")),
    Case("messages", "status, blocks, text, thinking, stop, usage", lambda c, m, s: _msg(c, m, s, messages.create)),
    Case("messages stream", "event-type sequence, blocks, text, thinking", lambda c, m, s: _msg(
        c, m, s, messages.stream)),
    Case("messages system, multi-turn", "blocks, text, usage", lambda c, m, s: _msg(
        c, m, s, messages.create, system="You are terse.",
        messages=[*ASK, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And in Rome?"}])),
    Case("messages tool use, tool result", "tool_use input, then the answer to the tool_result", _tool_turns),
    Case("messages count_tokens", "input tokens", lambda c, m, s: messages.observe(c, messages.count_tokens(
        model=m, system="Be brief.", messages=ASK, tools=MESSAGE_TOOLS))),
    Case("messages unknown model", "status, error shape", lambda c, m, s: _msg(
        c, "no-such-model", s, messages.create)),
]
