"""Two gateway processes over one Redis and one store directory, as `owc serve` runs them (its
default two processes; the Redis it starts for fair sharing holds the batch records too): a file
uploaded through one is listed, read and deleted through the other, and a batch created through
one is seen and cancelled through the other. Records survive a gateway process's restart."""

from __future__ import annotations

import openai
import orjson
import pytest
import yaml

from cluster.process import free_port
from cluster.tenancy.local_redis import LocalRedis
from tests.conftest import fake_engine_argv, gateway_argv, server

LINES = b"".join(orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                               "body": {"model": "m1", "prompt": "hi"}}) + b"\n" for i in range(3))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("batchshared")
    url = f"redis://127.0.0.1:{free_port()}/0"
    try:
        redis = LocalRedis.ensure(url)
    except RuntimeError as e:
        pytest.skip(str(e))
    cfg = {"models": {"m1": {"source": "external"}},
           "gateway": {"api_keys_env": None, "access_log": {"enabled": False},
                       "fair_sharing": {"store_url": url}},  # as owc serve sets it
           "batch": {"store_dir": str(d / "store"), "run": False}}  # records only: the runner is test_batch_execution's
    (d / "owc.yaml").write_text(yaml.safe_dump(cfg))
    try:
        with server(fake_engine_argv("m1")) as engine:
            yield engine, gateway_argv(f"m1={engine.url}", config=str(d / "owc.yaml")), d / "store"
    finally:
        redis.stop()


def sdk(proc) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0)


def test_every_gateway_process_sees_the_same_files_and_batches(setup):
    _, argv, store = setup
    with server(argv) as a, server(argv) as b:
        f = sdk(a).files.create(file=("in.jsonl", LINES), purpose="batch")
        assert [x.id for x in sdk(b).files.list()] == [f.id]
        assert sdk(b).files.content(f.id).content == LINES
        batch = sdk(b).batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")
        assert sdk(a).batches.retrieve(batch.id).status == "validating"
        assert sdk(a).batches.cancel(batch.id).status == "cancelled"
        assert sdk(b).batches.retrieve(batch.id).status == "cancelled"
    with server(argv) as c:  # a process started later: the same records
        assert [x.id for x in sdk(c).batches.list()] == [batch.id]
        assert sdk(c).files.delete(f.id).deleted
        assert not (store / "files" / f.id).exists()
