"""Tenancy across gateway replicas: per-tenant rate limits (requests and tokens),
concurrency leases, daily/monthly token quotas and usage records, in a shared store (Redis)
or in process. Never imports the gateway: the gateway adapts it (cluster.gateway.admission.tenancy)."""
