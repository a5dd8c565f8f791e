"""A rollout's state and operator commands in a Kubernetes ConfigMap (the chart's
`<release>-rollouts`), with the same methods as cluster.discovery.rollouts.RolloutFiles.

On Kubernetes the analysis runs in `owc controller` (the Lease holder) and the gateway
processes run in Ray pods: no shared directory. The ConfigMap, read and written through the
API server with the resourceVersion read (optimistic concurrency, as the Lease and the
RayService patches), is where a new leader finds the step in progress and when its window
began, and where every gateway process reads the weight and drops an operator's command.
Keys (ConfigMap keys allow ``[-._a-zA-Z0-9]`` only): ``state.<model>`` (the state
document; other characters of the name as ``_XX`` hex), ``cmd.<id>`` and ``ans.<id>``.

``api``: a kubernetes.client.CoreV1Api (or anything with its three ConfigMap calls).
``max_age_s``: how long one read of the ConfigMap answers ``read``/``mtime`` (a gateway
process re-reads the weight every 0.5 s: one GET serves both calls); 0 for the analysis.
"""

from __future__ import annotations

import json
import logging
import string
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)
ENV = "OWC_ROLLOUT_CONFIGMAP"  # <namespace>/<name>: gateway processes on Kubernetes use it
_SAFE = set(string.ascii_letters + string.digits + "-.")
ANSWER_KEEP_S = 60.0  # an answer nobody took (the command was withdrawn) goes after this
RETRIES = 8


def key_of(model: str) -> str:
    return "state." + "".join(c if c in _SAFE else "".join(f"_{b:02X}" for b in c.encode()) for c in model)


def _status(e: Exception) -> int | None:
    return getattr(e, "status", None)


class Unavailable(OSError):
    """The API server did not answer or refused (as a directory that cannot be written:
    the admin API answers 503)."""


class ConfigMapRollouts:
    def __init__(self, api: Any, namespace: str, name: str, *, max_age_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self._api, self._ns, self.name = api, namespace, name
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, str]] | None = None

    def _get(self) -> tuple[dict[str, str], str | None]:
        """The ConfigMap's data and resourceVersion ({} and None when it does not exist)."""
        try:
            cm = self._api.read_namespaced_config_map(self.name, self._ns)
        except Exception as e:
            if _status(e) == 404:
                return {}, None
            raise Unavailable(f"ConfigMap {self._ns}/{self.name} not read: {e}") from e
        meta = cm.metadata if not isinstance(cm, dict) else None
        data = (cm.data if meta is not None else cm.get("data")) or {}
        rv = meta.resource_version if meta is not None else cm["metadata"]["resourceVersion"]
        return dict(data), rv

    def _data(self) -> dict[str, str]:
        with self._lock:
            now = self._clock()
            if self._cached is None or now - self._cached[0] >= self._max_age_s:
                try:
                    self._cached = (now, self._get()[0])
                except Unavailable:
                    if self._cached is None or self._max_age_s <= 0:
                        raise
                    return self._cached[1]  # a gateway routes by the last weight it read meanwhile
            return self._cached[1]

    def _update(self, change: Callable[[dict[str, str]], None]) -> None:
        """Read, change, write with the resourceVersion read; retried on a conflict."""
        for _ in range(RETRIES):
            data, rv = self._get()
            change(data)
            body = {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
                    "metadata": {"name": self.name, "namespace": self._ns, **({"resourceVersion": rv} if rv else {})}}
            try:
                if rv is None:
                    self._api.create_namespaced_config_map(self._ns, body)
                else:
                    self._api.replace_namespaced_config_map(self.name, self._ns, body)
            except Exception as e:
                if _status(e) == 409:  # another writer came first: read again
                    continue
                raise Unavailable(f"ConfigMap {self._ns}/{self.name} not written: {e}") from e
            with self._lock:
                self._cached = None
            return
        raise Unavailable(f"ConfigMap {self._ns}/{self.name}: {RETRIES} write conflicts in a row")

    def read(self, model: str) -> dict[str, Any] | None:
        return _doc(self._data().get(key_of(model)))

    def mtime(self, model: str) -> int | None:
        """A token that changes whenever the model's document does (None: none written)."""
        raw = self._data().get(key_of(model))
        return None if raw is None else zlib.crc32(raw.encode())

    def write(self, model: str, doc: dict[str, Any]) -> None:
        raw = json.dumps(doc)
        self._update(lambda data: data.__setitem__(key_of(model), raw))

    def submit(self, model: str, action: str, who: str | None = None) -> str:
        cid = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        cmd = json.dumps({"id": cid, "model": model, "action": action, "who": who})
        self._update(lambda data: data.__setitem__(f"cmd.{cid}", cmd))
        return cid

    def pending(self) -> list[dict[str, Any]]:
        data = self._get()[0]
        out = [_doc(data[k]) for k in sorted(data) if k.startswith("cmd.")]
        return [d for d in out if d is not None and isinstance(d.get("id"), str)]

    def answer(self, cid: str, result: dict[str, Any]) -> None:
        """The analysis's answer; the command goes, and so do answers older than ANSWER_KEEP_S."""
        raw, oldest = json.dumps(result), time.time_ns() - int(ANSWER_KEEP_S * 1e9)

        def change(data: dict[str, str]) -> None:
            for k in [k for k in data if k.startswith("ans.") and k[4:24].isdigit() and int(k[4:24]) < oldest]:
                del data[k]
            data.pop(f"cmd.{cid}", None)
            data[f"ans.{cid}"] = raw
        self._update(change)

    def take_answer(self, cid: str) -> dict[str, Any] | None:
        """The answer, once (None: not yet, or the API did not answer this time: asked again)."""
        try:
            raw = self._get()[0].get(f"ans.{cid}")
            if raw is not None:
                self._update(lambda data: data.pop(f"ans.{cid}", None))
        except Unavailable as e:
            log.warning("rollout answer %s not read: %s", cid, e)
            return None
        return _doc(raw)

    def withdraw(self, cid: str) -> None:
        try:
            self._update(lambda data: data.pop(f"cmd.{cid}", None))
        except Unavailable as e:  # left there, it may still apply (docs/rollouts.md)
            log.warning("rollout command %s not withdrawn: %s", cid, e)

    def announce(self, metrics_url: str) -> None:
        """Nothing: on Kubernetes the analysis reads the gateways' metrics from Prometheus."""
        return None

    def gateways(self) -> dict:
        return {}


def in_cluster(ref: str, *, max_age_s: float = 0.25) -> ConfigMapRollouts:
    """A gateway process's view of ``<namespace>/<name>`` with its pod's service account."""
    from kubernetes import client
    from kubernetes import config as kconfig

    namespace, _, name = ref.partition("/")
    if not namespace or not name:
        raise ValueError(f"${ENV} must be <namespace>/<name>, not {ref!r}")
    kconfig.load_incluster_config()
    return ConfigMapRollouts(client.CoreV1Api(), namespace, name, max_age_s=max_age_s)


def _doc(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
