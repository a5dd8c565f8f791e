"""Prefix-routing keys of the other request shapes: a Responses request's `instructions` and
`input` rendered as turns like chat's messages (the same conversation gets the same key on
either API); its items other than messages by type and text fields."""

from __future__ import annotations

from cluster.routing.keys import canonical_prompt, prefix_key

DOC = "You review pull requests. " * 20


def test_a_responses_request_is_keyed_by_its_instructions_and_input_like_chat():
    chat = {"messages": [{"role": "system", "content": DOC}, {"role": "user", "content": "review #1"}]}
    resp = {"instructions": DOC, "input": [{"role": "user", "content": [{"type": "input_text", "text": "review #1"}]}]}
    assert canonical_prompt(resp, 4096) == canonical_prompt(chat, 4096)
    assert canonical_prompt({"instructions": DOC, "input": "review #1"}, 4096) == canonical_prompt(chat, 4096)
    a, b = ({"instructions": DOC, "input": q} for q in ("review #1", "review #2"))
    assert prefix_key(a, 256) == prefix_key(b, 256) and len(prefix_key(a, 256)) == 256
    assert prefix_key(a, 4096) != prefix_key(b, 4096)


def test_function_call_items_and_outputs_are_in_the_key():
    turns = [{"role": "user", "content": "weather?"},
             {"type": "function_call", "name": "get_weather", "arguments": '{"city": "Paris"}', "call_id": "c1"},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]
    key = canonical_prompt({"input": turns}, 4096)
    assert key == '\x1euser\x1dweather?\x1efunction_call\x1dget_weather{"city": "Paris"}\x1efunction_call_output\x1dsunny'
    assert canonical_prompt({"input": None}, 100) == "" and canonical_prompt({"input": [1, "x"]}, 100) == ""
