"""The rollout conformance gate's comparison (cluster/conformance/surface.py): the API surface,
never the generated text."""

import pytest

from cluster.conformance import Row
from cluster.conformance.surface import failed_rows, surface

def _o(**fields):
    return {"status": 200, **fields}


CHAT = {"status": 200, "text": "Bonjour", "reasoning": None, "finish": "length", "usage": {"in": 5, "out": 16},
        "tool_calls": None}


@pytest.mark.parametrize(("stable", "candidate", "differs"), [
    (CHAT, {**CHAT, "text": "Hello there", "finish": "stop", "usage": {"in": 5, "out": 3}}, False),  # other words
    (CHAT, {**CHAT, "status": 400}, True),
    (CHAT, {**CHAT, "text": ""}, True),  # no content at all
    (CHAT, {**CHAT, "usage": None}, True),  # a field gone
    (_o(deltas=["role", "content", "finish", "usage"]), _o(deltas=["role", "content", "finish", "usage"]), False),
    (_o(deltas=["role", "content", "finish"]), _o(deltas=["role", "content", "tool_calls", "finish"]), True),
    (_o(events=["created", "delta", "delta", "done"]), _o(events=["created", "delta", "done"]), False),  # runs collapse
    (_o(events=["created", "delta", "done"]), _o(events=["created", "done", "delta"]), True),  # order
    (_o(tool_calls=[["get_weather", {"city": "Paris"}]]), _o(tool_calls=[["get_weather", {"city": "Lyon"}]]), False),
    (_o(tool_calls=[["get_weather", {"city": "Paris"}]]), _o(tool_calls=[["get_weather", {"unparsed": "{cit"}]]), True),
    (_o(tool_calls=[["get_weather", {"city": "Paris"}]]), _o(tool_calls=None), True),  # no tool-call parser
    (_o(json={"a": 1}), _o(json={"a": 2, "b": 3}), False),  # structured output that parses, other values
    (_o(json={"a": 1}), _o(json={"unparsed": "not json"}), True),
    ({"low": CHAT, "high": CHAT}, {"low": {**CHAT, "text": "x"}, "high": {**CHAT, "status": 500}}, True),
])
def test_surface_compares_the_api_not_the_words(stable, candidate, differs):
    assert (surface(stable) != surface(candidate)) == differs
    rows = [Row("case", "-", stable, candidate)]
    assert failed_rows(rows) == (["case"] if differs else [])
