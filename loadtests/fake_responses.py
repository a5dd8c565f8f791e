"""The fake engine's Responses store, as vLLM 0.32 keeps one: only with
VLLM_ENABLE_RESPONSES_API_STORE=1 in the engine's environment (otherwise `store` is ignored),
in this process's memory, under the body's `request_id` (vLLM makes it the response id).

- `previous_response_id`: the stored response's conversation is the new request's context
  (its tokens count in `input_tokens`, as vLLM renders the previous messages before the new
  input); an id it does not hold answers vLLM's 404 (`param: response_id`);
- a `function_call_output` item answering a call of the previous response makes the answer
  quote that output (a tool-output turn that reached the store shows in the text);
- `GET /v1/responses/{id}` returns what was stored; `POST /v1/responses/{id}/cancel` on a
  finished response is vLLM's 400, on an unknown id its 404."""

from __future__ import annotations

import os

from aiohttp import web

from cluster.engine.responses_store import VLLM_STORE_ENV


def not_found(response_id: str) -> web.Response:
    return web.json_response({"error": {"message": f"Response with id '{response_id}' not found.",
                                        "type": "invalid_request_error", "param": "response_id", "code": 404}},
                             status=404)


class FakeResponsesStore:
    def __init__(self, enabled: bool | None = None):
        self.enabled = os.environ.get(VLLM_STORE_ENV) == "1" if enabled is None else enabled
        self._kept: dict[str, dict] = {}

    def previous(self, body: dict) -> dict | web.Response | None:
        """The response ``body`` continues (None when it continues none), or vLLM's 404."""
        prev = body.get("previous_response_id")
        if prev is None:
            return None
        return self._kept.get(prev) or not_found(str(prev))

    def keep(self, body: dict, response: dict) -> None:
        if self.enabled and body.get("store", True) is not False:
            self._kept[response["id"]] = response

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/responses/{response_id}", self.retrieve)
        app.router.add_post("/v1/responses/{response_id}/cancel", self.cancel)

    async def retrieve(self, request: web.Request) -> web.Response:
        rid = request.match_info["response_id"]
        kept = self._kept.get(rid)
        return web.json_response(kept) if kept is not None else not_found(rid)

    async def cancel(self, request: web.Request) -> web.Response:
        rid = request.match_info["response_id"]
        if rid not in self._kept:
            return not_found(rid)
        return web.json_response({"error": {"message": "Cannot cancel a synchronous response.",
                                            "type": "invalid_request_error", "param": "response_id", "code": 400}},
                                 status=400)


def context_tokens(previous: dict | None) -> int:
    """The tokens a follow-up's context adds: the previous conversation, input and output."""
    return int(previous["usage"]["total_tokens"]) if previous else 0


def tool_outputs(body: dict, previous: dict | None) -> str:
    """The outputs of the input's `function_call_output` items that answer the previous
    response's function calls, as the answer quotes them."""
    calls = {i.get("call_id") for i in (previous or {}).get("output", []) if i.get("type") == "function_call"}
    items = body.get("input") if isinstance(body.get("input"), list) else []
    return "".join(f" {i.get('output')}" for i in items
                   if isinstance(i, dict) and i.get("type") == "function_call_output" and i.get("call_id") in calls)
