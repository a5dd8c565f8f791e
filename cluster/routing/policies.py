"""Named routing policies: each is a set of plugins by name (filters, weighted scorers, a
picker). A model's `routing:` config picks one by name and may override any part.
Pure data: the config schema imports it where neither Ray nor vLLM is installed."""

from __future__ import annotations

from cluster.routing.plugins import names

FILTERS = names("filter")
SCORERS = names("scorer")
PICKERS = names("picker")

_BASE_FILTERS = ("healthy", "not_draining", "adapter_loaded", "queue_bound")

# Weights are chosen so that an affinity's home outranks every lower tier combined:
# session (4) > prefix (2) > load (<= 0.5 + 0.25). LoRA affinity scores only requests that
# name an adapter (scorers.lora_affinity, tiers 1 / 0.9 / 0.45 / 0 x 16): evicting an idle
# adapter, or waiting behind adapters in use, outranks session and prefix homes (gaps >= 7.2
# > 4 + 2 + 0.75); between a replica holding the adapter and one with an empty slot (gap 1.6)
# it outranks load only, so session and prefix homes hold where a slot is empty.
POLICIES: dict[str, dict] = {
    "affinity": {
        "filters": _BASE_FILTERS,
        "scorers": {"lora_affinity": 16.0, "session_affinity": 4.0, "prefix_affinity": 2.0,
                    "least_load": 0.5, "kv_cache": 0.25},
        "picker": "max_score",
    },
    "prefix_affinity": {
        "filters": _BASE_FILTERS,
        "scorers": {"prefix_affinity": 2.0, "least_load": 0.5},
        "picker": "max_score",
    },
    "session_affinity": {
        "filters": _BASE_FILTERS,
        "scorers": {"session_affinity": 2.0, "least_load": 0.5},
        "picker": "max_score",
    },
    "lora_affinity": {
        "filters": _BASE_FILTERS,
        "scorers": {"lora_affinity": 6.0, "least_load": 0.5},  # holding it > an empty slot (0.6) > load
        "picker": "max_score",
    },
    "least_load": {
        "filters": _BASE_FILTERS,
        "scorers": {"least_load": 1.0, "kv_cache": 0.5},
        "picker": "p2c",
    },
    "round_robin": {
        "filters": _BASE_FILTERS,
        "scorers": {},
        "picker": "round_robin",
    },
}
