"""Token-path candidate: Ray's own `ray.serve.llm` OpenAI app (requests and tokens travel
through Serve's HTTP proxy and DeploymentHandle streaming between actors), on the same
model and engine settings as the other candidates. Benchmarked by
`python -m loadtests.overhead --with-serve-llm` (needs the `bench` extra: pyarrow, pandas,
jsonref).

    python -m loadtests.serve_llm_candidate --port 8300 [--config FILE]

Runs until SIGTERM/SIGINT, then shuts Serve and its private Ray down.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time

from cluster.config.loader import load_config
from cluster.engine.args import engine_env, engine_overrides
from cluster.engine.demo_model import resolve_source
from cluster.runner import RAY_ENV


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--config")
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    name, m = next(iter(cfg.models.items()))

    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    stop = {"flag": False}

    def handler(signum, frame):
        stop["flag"] = True

    os.environ.update(RAY_ENV)
    ray.init(address="local", num_cpus=8, include_dashboard=False, object_store_memory=256 << 20,
             _temp_dir=tempfile.mkdtemp(prefix="owc-sllm-"), log_to_driver=False,
             runtime_env={"env_vars": dict(RAY_ENV)})
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": a.port})
        kwargs = {"max_model_len": m.max_model_len, "dtype": m.dtype, **engine_overrides(m)}
        llm = LLMConfig(
            model_loading_config={"model_id": name, "model_source": resolve_source(m.source, cfg.model_cache_dir)},
            accelerator_config={"kind": "cpu"},
            engine_kwargs=kwargs,
            runtime_env={"env_vars": engine_env(m)},
            deployment_config={"num_replicas": 1},
        )
        serve.run(build_openai_app({"llm_configs": [llm]}), name="serve-llm", route_prefix="/")
        print(f"ready on http://127.0.0.1:{a.port}", file=sys.stderr, flush=True)
        while not stop["flag"]:
            time.sleep(0.2)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
