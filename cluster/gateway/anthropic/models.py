"""Anthropic's Models API over the gateway's models: the answer an Anthropic client gets
from ``GET /v1/models`` and ``GET /v1/models/{id}`` (it sends ``anthropic-version``).

A model is ``{"type": "model", "id", "display_name", "created_at"}`` (RFC 3339); a list is
a page of them, ``{"data", "has_more", "first_id", "last_id"}``, cut by ``limit`` (1-1000,
default 20) after ``after_id`` or before ``before_id``. No HTTP library here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from cluster.gateway.errors import OpenAIError

HEADER = b"anthropic-version"  # sent by Anthropic's SDKs on every request
PREFIX = "/v1/models"


def is_anthropic(scope: dict) -> bool:
    """A GET of the models routes from an Anthropic client."""
    return (scope["method"] == "GET" and (scope["path"] == PREFIX or scope["path"].startswith(PREFIX + "/"))
            and any(k.lower() == HEADER for k, _ in scope["headers"]))


def model(card: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI model card (cluster.gateway.routes) in Anthropic's shape."""
    created = datetime.fromtimestamp(card["created"], tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": card["id"], "display_name": card["id"], "created_at": created}


def page(cards: Sequence[Mapping[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of the list, as Anthropic's API cuts it; a bad ``limit`` or an unknown id is a 400."""
    raw = query.get("limit", "20")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 1000:
        raise OpenAIError(400, f"limit: must be an integer from 1 to 1000, got {raw!r}", param="limit")
    limit = int(raw)
    ids = [c["id"] for c in cards]
    after, before = query.get("after_id"), query.get("before_id")
    if after is not None and before is not None:
        raise OpenAIError(400, "after_id and before_id cannot be given together", param="after_id")
    for name, value in (("after_id", after), ("before_id", before)):
        if value is not None and value not in ids:
            raise OpenAIError(400, f"{name}: no model {value!r}", param=name)
    if before is not None:  # the `limit` models just before it
        end = ids.index(before)
        start = max(0, end - limit)
        more = start > 0
    else:
        start = ids.index(after) + 1 if after is not None else 0
        end = min(len(ids), start + limit)
        more = end < len(ids)
    data = [model(c) for c in cards[start:end]]
    return {"data": data, "has_more": more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}
