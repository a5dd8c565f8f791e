"""Request caps: global defaults, per-tenant overrides, a 400 naming the parameter."""

from __future__ import annotations

import pytest

from cluster.config.schema import Limits, TenantConfig
from cluster.gateway.admission.caps import Caps, CapTable, check_caps, prompt_count
from cluster.gateway.errors import OpenAIError

CAPS = Caps(max_n=4, max_best_of=3, max_prompts=2, max_output_tokens=100)


@pytest.mark.parametrize(("data", "param"), [
    ({"n": 5}, "n"),
    ({"best_of": 4}, "best_of"),
    ({"max_tokens": 101}, "max_tokens"),
    ({"max_completion_tokens": 101}, "max_completion_tokens"),
    ({"max_output_tokens": 101}, "max_output_tokens"),
    ({"prompt": ["a", "b", "c"]}, "prompt"),
    ({"prompt": [[1, 2], [3], [4]]}, "prompt"),
    ({"n": 4, "max_tokens": 100, "prompt": ["a", "b"], "best_of": 3}, None),
    ({"prompt": [1, 2, 3, 4, 5]}, None),  # one tokenised prompt
    ({"prompt": "one"}, None),
    ({}, None),
])
def test_caps_table(data, param):
    if param is None:
        check_caps(data, CAPS)
        return
    with pytest.raises(OpenAIError) as e:
        check_caps(data, CAPS)
    assert (e.value.status, e.value.param, e.value.code) == (400, param, "invalid_value")


@pytest.mark.parametrize(("prompt", "count"), [("x", 1), ([1, 2], 1), (["a", "b"], 2), ([[1], [2], [3]], 3), ([], 1)])
def test_prompt_count(prompt, count):
    assert prompt_count(prompt) == count


def test_tenant_overrides_win_and_others_get_the_defaults():
    limits = Limits(max_n=8, max_output_tokens=1000)
    table = CapTable(limits, {"small": TenantConfig(max_n=2), "big": TenantConfig(max_output_tokens=5000)})
    table.check("anyone", {"n": 8, "max_tokens": 1000})
    with pytest.raises(OpenAIError):
        table.check("small", {"n": 3})
    table.check("small", {"max_tokens": 1000})
    table.check("big", {"max_tokens": 5000})
    with pytest.raises(OpenAIError):
        table.check("anyone", {"max_tokens": 1001})
