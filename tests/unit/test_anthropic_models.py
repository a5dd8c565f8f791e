"""Anthropic's Models API page (cluster.gateway.anthropic.models): Anthropic's model shape,
and the page cut by limit, after_id and before_id; bad cursors are 400s."""

from __future__ import annotations

import pytest

from cluster.gateway.anthropic.models import is_anthropic, model, page
from cluster.gateway.errors import OpenAIError

CARDS = [{"id": n, "object": "model", "created": 1764979200, "owned_by": "owc"} for n in ("a", "b", "c", "d")]


def test_a_model_in_anthropics_shape():
    assert model(CARDS[0]) == {"type": "model", "id": "a", "display_name": "a", "created_at": "2025-12-06T00:00:00Z"}


@pytest.mark.parametrize("query, ids, more", [
    ({}, ["a", "b", "c", "d"], False),
    ({"limit": "2"}, ["a", "b"], True),
    ({"limit": "2", "after_id": "b"}, ["c", "d"], False),
    ({"limit": "1", "after_id": "b"}, ["c"], True),
    ({"after_id": "d"}, [], False),
    ({"limit": "2", "before_id": "d"}, ["b", "c"], True),
    ({"limit": "5", "before_id": "c"}, ["a", "b"], False),
    ({"before_id": "a"}, [], False),
])
def test_pages(query, ids, more):
    p = page(CARDS, query)
    assert [m["id"] for m in p["data"]] == ids and p["has_more"] is more
    assert (p["first_id"], p["last_id"]) == ((ids[0], ids[-1]) if ids else (None, None))


@pytest.mark.parametrize("query, param", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "x"}, "limit"), ({"limit": "-1"}, "limit"), ({"limit": "²"}, "limit"),
    ({"after_id": "zz"}, "after_id"), ({"before_id": "zz"}, "before_id"),
    ({"after_id": "a", "before_id": "c"}, "after_id"),
])
def test_bad_queries_are_400s(query, param):
    with pytest.raises(OpenAIError) as e:
        page(CARDS, query)
    assert e.value.status == 400 and e.value.param == param


@pytest.mark.parametrize("method, path, headers, yes", [
    ("GET", "/v1/models", [(b"anthropic-version", b"2023-06-01")], True),
    ("GET", "/v1/models/m", [(b"Anthropic-Version", b"2023-06-01")], True),
    ("GET", "/v1/models", [], False),  # an OpenAI client
    ("GET", "/v1/modelsx", [(b"anthropic-version", b"2023-06-01")], False),
    ("POST", "/v1/models", [(b"anthropic-version", b"2023-06-01")], False),
])
def test_which_requests_are_anthropics(method, path, headers, yes):
    assert is_anthropic({"method": method, "path": path, "headers": headers}) is yes
