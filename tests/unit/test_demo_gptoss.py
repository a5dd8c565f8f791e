"""The tiny gpt-oss demo model without an engine: its tokenizer is o200k/harmony (ids match
openai_harmony's, specials at their ids), its chat template renders what harmony renders, and
its config and shaped weights are what vLLM's gpt-oss loader and the harmony frame need."""

from __future__ import annotations

import datetime
import json

import pytest

pytest.importorskip("openai_harmony")
pytest.importorskip("transformers")

from openai_harmony import (  # noqa: E402
    Author, Conversation, DeveloperContent, Message, Role, SystemContent, ToolDescription,
)

from cluster.engine import demo_gptoss  # noqa: E402
from cluster.engine.demo_gptoss_tokenizer import VOCAB_SIZE, build_tokenizer, harmony_encoding  # noqa: E402
from cluster.engine.demo_model import DEMO_MODELS, demo_name  # noqa: E402

HARMONY_SPECIALS = {"<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002, "<|constrain|>": 200003,
                    "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007, "<|message|>": 200008,
                    "<|call|>": 200012, "<|reserved_201087|>": 201087}
TEXTS = ["Hello world! Bonjour, ça va ? 12345\n\n  def f(x): return x**2", "日本語のテキスト 😀 émoji",
         '{"location": "Paris", "days": [1, 2]}', "<|start|>assistant<|channel|>final to=functions.get_weather "
         "<|constrain|>json<|message|>{}<|call|>"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def test_registered_as_a_demo_source():
    assert "tiny-gpt-oss" in DEMO_MODELS and demo_name("demo:tiny-gpt-oss") == "tiny-gpt-oss"


def test_tokenizer_covers_the_harmony_id_space(tokenizer):
    enc = harmony_encoding()
    assert len(tokenizer) == VOCAB_SIZE
    for token, i in HARMONY_SPECIALS.items():
        assert tokenizer.convert_tokens_to_ids(token) == i and enc.encode(token, allowed_special="all") == [i]
        assert tokenizer.decode([i]) == token
    for text in TEXTS:
        ids = enc.encode(text, allowed_special="all")
        assert tokenizer.encode(text, add_special_tokens=False) == ids
        assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token == "<|return|>" and tokenizer.pad_token == "<|endoftext|>"


def test_chat_template_renders_like_harmony(tokenizer):
    enc = harmony_encoding()
    params = {"type": "object", "properties": {"location": {"type": "string", "description": "City"},
                                               "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["location"]}
    today = datetime.date.today().strftime("%Y-%m-%d")
    system = Message.from_role_and_content(Role.SYSTEM, SystemContent.new().with_conversation_start_date(today))
    dev = DeveloperContent.new().with_instructions("Be brief.").with_function_tools(
        [ToolDescription.new("get_weather", "Get the weather", parameters=params)])
    expected = enc.decode(enc.render_conversation_for_completion(Conversation.from_messages([
        system, Message.from_role_and_content(Role.DEVELOPER, dev), Message.from_role_and_content(Role.USER, "Hi"),
        Message.from_role_and_content(Role.ASSISTANT, '{"location":"Paris"}').with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"),
        Message.from_author_and_content(Author.new(Role.TOOL, "functions.get_weather"), "sunny")
        .with_channel("commentary").with_recipient("assistant"),
        Message.from_role_and_content(Role.ASSISTANT, "It is sunny.").with_channel("final"),
        Message.from_role_and_content(Role.USER, "Thanks"),
    ]), Role.ASSISTANT))
    messages = [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'}}]},
        {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "Thanks"},
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather", "parameters": params}}]
    got = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert got == expected


def test_config_is_a_tiny_gpt_oss(tokenizer):
    cfg = demo_gptoss.gptoss_config(tokenizer)
    assert (cfg.model_type, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok) == (
        "gpt_oss", 128, 2, 4, 2)
    assert cfg.vocab_size == VOCAB_SIZE >= 201088 and cfg.layer_types == ["sliding_attention", "full_attention"]
    assert cfg.eos_token_id == 200002


def test_frame_tables_walk_the_harmony_frame():
    """Following the bigram table (with the analysis bit set once the reasoning is written)
    from `assistant` spells the whole frame."""
    tables = demo_gptoss.frame_tables()
    best: dict[int, list[tuple[float, int]]] = {}
    switch = dict(tables["switch"])
    for prev, nxt, score in tables["bigram"]:
        best.setdefault(prev, []).append((score, nxt))
    enc, token, seen, out = harmony_encoding(), demo_gptoss._one("assistant"), False, []
    while token not in (200002, 200012) and len(out) < 40:
        token = max(best[token], key=lambda c: c[0] + (switch.get(c[1], 0) if seen else 0))[1]
        seen = seen or token == tables["reasoning"][0]
        out.append(token)
    assert enc.decode(out) == (f"<|channel|>analysis<|message|>{demo_gptoss.REASONING}<|end|><|start|>assistant"
                               f"<|channel|>final<|message|>{demo_gptoss.ANSWER}<|return|>")


def test_preference_order_closes_json_first():
    """Under a grammar the constant direction decides: stop tokens, then `"` (so strings close),
    then the JSON closers; whitespace ranks below them."""
    order = demo_gptoss._PREFERENCE
    assert order[:4] == ["<|return|>", "<|call|>", '"', "}"]
    assert order.index(" ") > max(order.index(t) for t in ("}", "]", ",", ":", "0", "true", "null"))
    assert order.index("<|constrain|>") < order.index("json") and order.index(" ") < order.index(" json")
    assert json.loads(json.dumps(order)) == order
