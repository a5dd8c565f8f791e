"""The Messages API's request schema for the fuzz suite (tests/unit/test_fuzz.py). There is no
vendored Anthropic OpenAPI description; vLLM's own request models are the reference owc is
equal to, so their JSON schema, wrapped as a two-operation OpenAPI document, is vendored in
tests/specs/ — and this test keeps it equal to what the installed vLLM's models give.

Regenerate after a vLLM upgrade: `python -m tests.unit.test_anthropic_spec`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[1] / "specs" / "vllm-anthropic-messages.json"


def vllm_anthropic_openapi() -> dict:
    """OpenAPI 3.1 for POST /messages and /messages/count_tokens, the bodies being vLLM's
    AnthropicMessagesRequest and AnthropicCountTokensRequest (pydantic's JSON schema)."""
    import vllm
    from pydantic.json_schema import models_json_schema
    from vllm.entrypoints.anthropic.protocol import AnthropicCountTokensRequest, AnthropicMessagesRequest

    models = [(AnthropicMessagesRequest, "validation"), (AnthropicCountTokensRequest, "validation")]
    refs, top = models_json_schema(models, ref_template="#/components/schemas/{model}")

    def op(model, summary: str) -> dict:
        return {"post": {"summary": summary, "requestBody": {"required": True, "content": {
            "application/json": {"schema": refs[(model, "validation")]}}},
            "responses": {"200": {"description": "OK"}}}}

    return {
        "openapi": "3.1.0",
        "info": {"title": f"vLLM {vllm.__version__} Anthropic Messages API (request models)", "version": vllm.__version__},
        "paths": {"/messages": op(AnthropicMessagesRequest, "Create a message"),
                  "/messages/count_tokens": op(AnthropicCountTokensRequest, "Count tokens")},
        "components": {"schemas": top["$defs"]},
    }


def test_the_vendored_spec_is_what_vllms_request_models_give():
    pytest.importorskip("vllm.entrypoints.anthropic.protocol")
    assert json.loads(SPEC.read_text()) == json.loads(json.dumps(vllm_anthropic_openapi()))


if __name__ == "__main__":
    SPEC.write_text(json.dumps(vllm_anthropic_openapi(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SPEC}")
