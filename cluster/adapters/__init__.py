"""LoRA adapters: training (train, data) and the durable run-time registry (store). Loading
them on engine replicas is the gateway's (cluster.gateway.upstream.adapter_loader, adapter_routes)."""
