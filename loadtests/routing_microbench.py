"""The routing decision alone, in one process with nothing else running: what the pipeline
costs per request apart from the machine's scheduling. `python -m loadtests.routing_microbench`"""

from __future__ import annotations

import argparse
import time

from prometheus_client import CollectorRegistry

from cluster.config.schema import RoutingConfig
from cluster.gateway.observability.metrics import GatewayMetrics
from cluster.discovery.endpoints import Endpoint
from cluster.routing.policies import POLICIES
from cluster.routing.router import Routing
from cluster.routing.stats import StatsStore
from cluster.routing.types import ReplicaStats, RequestInfo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="loadtests.routing_microbench", description=__doc__.split("\n")[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--decisions", type=int, default=20000)
    a = p.parse_args(argv)
    metrics = GatewayMetrics(CollectorRegistry())
    eps = [Endpoint("m", f"m-{i}", f"http://127.0.0.1:{9000 + i}") for i in range(a.replicas)]
    for policy in POLICIES:
        store = StatsStore(stale_after_s=60)
        routing = Routing.build({"m": RoutingConfig(policy=policy).spec()}, stats=store)
        for e in eps:
            store.update(e.replica_id, ReplicaStats(running=3, waiting=1, kv_usage=0.4), time.monotonic())
        took = []
        for i in range(a.decisions):
            req = RequestInfo("m", prefix_key=(f"document {i % 16} " * 80).encode()[:1024], session_key=f"s{i % 50}")
            timings: list[tuple[str, float]] = []
            t0 = time.perf_counter()
            routing.choose(eps, req, timings=timings)
            took.append(time.perf_counter() - t0)
            for plugin, seconds in timings:  # as the gateway does, after the request
                metrics.observe_plugin(plugin, seconds)
        took.sort()
        n = len(took)
        print(f"{policy:>17}: p50 {took[n // 2] * 1e6:6.1f} µs  p99 {took[int(n * 0.99)] * 1e6:6.1f} µs  "
              f"max {took[-1] * 1e6:7.1f} µs  ({a.replicas} replicas, {n} decisions)")


if __name__ == "__main__":
    main()
