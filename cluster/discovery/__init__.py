"""Discovery: which engine replicas exist, their URLs and whether they are draining.

Engine replicas register with the registry (a Serve deployment) and heartbeat from their
health checks; each gateway replica polls the registry and hands the snapshot to its
gateway process through a file; the gateway process reads the file off the request path.
The same snapshot lists the engines for Prometheus (local mode). Every timing of that chain
lives in `cluster.discovery.timing`. Routing reads endpoints from here, never Ray.
"""
