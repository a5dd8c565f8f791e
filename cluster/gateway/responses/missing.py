"""The 404s of stored responses, each saying why where a setting would change it.

Every one keeps vLLM's own first sentence, status, type, param and code (an SDK or a test
that reads them sees what bare vLLM answers), except for a follow-up (`previous_response_id`),
which gets OpenAI's 400 ``previous_response_not_found`` (``previous_not_found``); what follows
names the setting that matters:

- ``unknown``: the gateway cannot verify the id for this tenant (another tenant's, forged,
  not minted by owc, e.g. `store: false`). Nothing is added (an unknown id tells nothing of
  whose it is) unless the gateway's id key is random: then ids from another gateway process
  or from before a restart land here, and OWC_RESPONSES_ID_KEY is the fix;
- ``expired``: older than the model's `responses_store.ttl_s`;
- ``owner_gone``: the replica that stored it is draining or gone (its memory held it);
- ``engine_missing``: the owner answered 404 itself: its store is off (the engine's
  VLLM_ENABLE_RESPONSES_API_STORE, or `models.<m>.responses_store.enabled` for engines owc
  starts) or the response was evicted (`max_entries`, `ttl_s`).
"""

from __future__ import annotations

from cluster.engine.responses_store import VLLM_STORE_ENV as STORE_ENV
from cluster.gateway.errors import OpenAIError
from cluster.gateway.responses.ids import KEY_ENV, MAX_ID_CHARS


def vllm_message(response_id: object) -> str:
    shown = response_id if isinstance(response_id, str) and len(response_id) <= MAX_ID_CHARS else "(too long)"
    return f"Response with id '{shown}' not found."


def not_found(response_id: object, hint: str = "") -> OpenAIError:
    """vLLM's answer for an id it does not hold (as the gateway relays it), with ``hint`` after it."""
    message = vllm_message(response_id) + (" " + hint if hint else "")
    return OpenAIError(404, message, param="response_id", code="not_found")


def previous_not_found(err: OpenAIError, response_id: object) -> OpenAIError:
    """One of the 404s above answering a follow-up (POST /v1/responses naming ``response_id`` as its
    `previous_response_id`) as OpenAI answers it: 400 `previous_response_not_found`, param
    `previous_response_id`, "Previous response with id '…' not found." and the same hint. A 404 there
    reads as "model not found" to a router in front: LiteLLM's puts the deployment in cooldown and
    sends every request of the group elsewhere (or nowhere) for a stale conversation id."""
    vllm = vllm_message(response_id)
    hint = err.message[len(vllm):] if err.message.startswith(vllm) else ""
    return OpenAIError(400, "Previous r" + vllm[1:] + hint,
                       param="previous_response_id", code="previous_response_not_found")


def is_vllms(err: OpenAIError, response_id: object) -> bool:
    """``err`` is the engine's own 404 for ``response_id`` (as cluster.gateway.errors.from_upstream relays it)."""
    return err.status == 404 and err.param == "response_id" and err.message == vllm_message(response_id)


def unknown(response_id: object, *, random_key: bool) -> OpenAIError:
    if not random_key:
        return not_found(response_id)
    return not_found(response_id, f"This gateway process has a random id key (neither {KEY_ENV} nor an engine "
                                  "key is set): it knows only the ids it minted since it started. Set "
                                  f"{KEY_ENV}, the same on every gateway process, to keep ids valid across "
                                  "processes and restarts.")


def expired(response_id: object, model: str, ttl_s: float) -> OpenAIError:
    return not_found(response_id, f"It is older than models.{model}.responses_store.ttl_s ({ttl_s:g} s).")


def owner_gone(response_id: object) -> OpenAIError:
    return not_found(response_id, "The engine replica that stored it is draining or gone; stored responses live "
                                  "in that replica's memory.")


def engine_missing(response_id: object, model: str, *, store_enabled: bool) -> OpenAIError:
    if store_enabled:
        return not_found(response_id, "The engine replica that stored it no longer holds it: evicted (models."
                                      f"{model}.responses_store.max_entries, ttl_s) or restarted.")
    return not_found(response_id, f"The engine replica that made it does not hold it: it restarted, or it keeps no "
                                  f"responses: start it with {STORE_ENV}=1 (for engines owc starts, set "
                                  f"models.{model}.responses_store.enabled: true).")
