"""Per-replica engine stats for routing: parsed from vLLM's own Prometheus /metrics (and
its /v1/models for registered LoRA adapters), kept with the time they were taken, together
with each replica's health as the gateway last saw it. Pure: the scraping loop lives in
the gateway (cluster.gateway.upstream.stats_poller) and feeds this store.

LoRA adapters in use come from ``vllm:lora_requests_info``: vLLM (0.32,
vllm/v1/metrics/loggers.py) sets the series labelled with the current ``max_lora``,
``running_lora_adapters`` and ``waiting_lora_adapters`` (comma-separated) to the current
time at every engine step, and never removes a series: every combination ever seen stays,
and the one with the latest value is the current one (labels empty: nothing runs). Its
lists name the adapters of the requests the engine has started; requests still queued
behind another adapter's batch (``max_loras`` full) are not in them yet."""

from __future__ import annotations

import dataclasses

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from cluster.routing.types import ReplicaStats

LORA_INFO = "vllm:lora_requests_info"
RUNNING = "vllm:num_requests_running"  # present in every vLLM exposition: the mark of its scheduler gauges
_WANTED = {
    "vllm:num_requests_waiting": "waiting",
    RUNNING: "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
}


def _names(label: str | None) -> frozenset[str]:
    return frozenset(n for n in (label or "").split(",") if n)


@dataclass(frozen=True)
class LoraInfo:
    active: frozenset[str] = frozenset()  # the latest series' running and waiting adapters
    max_loras: int | None = None  # None: no series yet
    resident: frozenset[str] = frozenset()  # the max_loras adapters used last: in the batch slots


def lora_info(samples: Iterable) -> LoraInfo:
    """What ``vllm:lora_requests_info``'s samples say: the latest one's adapters (in use now)
    and max_loras; and the ``max_loras`` adapters used most recently (each adapter's time is
    the latest of the series that name it), which are the ones in the engine's batch slots:
    vLLM keeps an adapter in its slot until a newer one evicts the least recently used."""
    samples = list(samples)
    if not samples:
        return LoraInfo()
    current = max(samples, key=lambda s: s.value)
    try:
        max_loras: int | None = int(current.labels.get("max_lora", ""))
    except ValueError:
        max_loras = None
    last: dict[str, float] = {}
    for smp in samples:
        for name in _names(smp.labels.get("running_lora_adapters")) | _names(smp.labels.get("waiting_lora_adapters")):
            last[name] = max(last.get(name, smp.value), smp.value)
    recent = sorted(last, key=lambda n: last[n], reverse=True)[: max_loras or 1]
    active = _names(current.labels.get("running_lora_adapters")) | _names(current.labels.get("waiting_lora_adapters"))
    return LoraInfo(active=active, max_loras=max_loras, resident=frozenset(recent) | active)


_KEPT = WANTED_FAMILIES = frozenset({*_WANTED, LORA_INFO})
_KEPT_PREFIXES = tuple(_KEPT)


def wanted_lines(text: str) -> str:
    """Only the families parse_vllm_metrics reads (their samples and # TYPE/# HELP lines):
    vLLM's /metrics is mostly histograms, and parsing all of it 4 times a second was most of
    an idle gateway's CPU."""
    kept = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) > 2 and parts[2] in _KEPT:
                kept.append(line)
        elif line.startswith(_KEPT_PREFIXES) and line.split("{", 1)[0].split(" ", 1)[0] in _KEPT:
            kept.append(line)
    kept.append("")
    return "\n".join(kept)


_TYPE_LINES = tuple(f"\n# TYPE {name} ".encode() for name in _KEPT)


def wanted_families(data: bytes) -> str:
    """``wanted_lines`` of an exposition as bytes, by a search for each kept family's ``# TYPE``
    line and its samples up to the next family's comment lines (the exposition format keeps a
    family's samples together after its TYPE line), without splitting the ~50 kB of the other
    families into lines: a quarter of wanted_lines' CPU. Text without those TYPE lines goes
    through wanted_lines."""
    parts = []
    for marker in _TYPE_LINES:
        at = data.find(marker)
        if at >= 0:
            end = data.find(b"\n#", at + len(marker))
            parts.append(data[at + 1:end + 1] if end >= 0 else data[at + 1:] + b"\n")
    if not parts:
        return wanted_lines(data.decode("utf-8", "replace"))
    return b"".join(parts).decode("utf-8", "replace")


def parse_vllm_metrics(text: str | bytes, adapters: Iterable[str] = ()) -> ReplicaStats:
    """Sum each wanted gauge over its series (one per engine core / model name); the LoRA
    adapters in use from ``vllm:lora_requests_info`` (see the module's docstring)."""
    values = {field: 0.0 for field in _WANTED.values()}
    lora = LoraInfo()
    seen = False
    kept = wanted_families(text) if isinstance(text, bytes) else wanted_lines(text)
    for family in text_string_to_metric_families(kept):
        if family.name == LORA_INFO:
            lora = lora_info(s for s in family.samples if s.name == LORA_INFO)
            continue
        field = _WANTED.get(family.name)
        if field is None:
            continue
        seen = True
        for sample in family.samples:
            if sample.name == family.name:
                values[field] += sample.value
    if not seen:
        raise ValueError("no vLLM scheduler gauges in the metrics text")
    return ReplicaStats(waiting=values["waiting"], running=values["running"], kv_usage=values["kv_usage"],
                        adapters=frozenset(adapters), active_adapters=lora.active, max_loras=lora.max_loras,
                        resident_adapters=lora.resident)


def lora_adapters(models_body: dict) -> frozenset[str]:
    """Adapter names from an engine's /v1/models: the cards that have a parent model."""
    return frozenset(
        card["id"] for card in models_body.get("data", [])
        if isinstance(card, dict) and card.get("parent") and card.get("parent") != card.get("id")
    )


@dataclass
class _Entry:
    stats: ReplicaStats | None = None
    at: float = float("-inf")
    healthy: bool = True
    failed_at: float | None = None


class StatsStore:
    """Latest stats and health per replica id. A replica is unhealthy from a failed scrape
    or a failed request until its next successful scrape, or ``retry_after_s`` after the
    failure when no scrape has come since (so a replica is never out for good on one
    gateway's word)."""

    def __init__(self, *, stale_after_s: float, retry_after_s: float = 10.0):
        self._stale_after_s = stale_after_s
        self._retry_after_s = retry_after_s
        self._entries: dict[str, _Entry] = {}

    def update(self, replica_id: str, stats: ReplicaStats, now: float) -> None:
        e = self._entries.setdefault(replica_id, _Entry())
        e.stats, e.at, e.healthy, e.failed_at = stats, now, True, None

    def adapter_changed(self, replica_id: str, adapter: str, loaded: bool) -> None:
        """The gateway loaded (or unloaded) an adapter on a replica: routing knows at once,
        before the next /v1/models read (the stats keep their age)."""
        e = self._entries.get(replica_id)
        if e is not None and e.stats is not None:
            have = e.stats.adapters | {adapter} if loaded else e.stats.adapters - {adapter}
            e.stats = dataclasses.replace(e.stats, adapters=frozenset(have))

    def failed(self, replica_id: str, now: float) -> None:
        e = self._entries.setdefault(replica_id, _Entry())
        e.healthy, e.failed_at = False, now

    def stats(self, replica_id: str, now: float) -> ReplicaStats | None:
        e = self._entries.get(replica_id)
        if e is None or e.stats is None or now - e.at > self._stale_after_s:
            return None
        return e.stats

    def latest(self, replica_id: str) -> ReplicaStats | None:
        """The last stats scraped from the replica, whatever their age."""
        e = self._entries.get(replica_id)
        return e.stats if e is not None else None

    def healthy(self, replica_id: str, now: float) -> bool:
        e = self._entries.get(replica_id)
        if e is None or e.healthy:
            return True
        if e.failed_at is not None and now - e.failed_at >= self._retry_after_s:
            return True  # put back on probation: the next failure takes it out again
        return False

    def forget(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for rid in [r for r in self._entries if r not in keep]:
            del self._entries[rid]
